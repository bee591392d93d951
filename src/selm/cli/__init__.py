"""Command-line entry points. Importing the package applies the deterministic mode when
SELM_DETERMINISTIC=1 (selm.determinism), before any entry point imports torch."""

from selm.determinism import apply as _apply_deterministic_mode

_apply_deterministic_mode()


def optional(kind: type):
    """An argparse type where 'None' / 'null' mean None: DVC renders a YAML null in a cmd as 'None'."""
    def parse(text: str):
        return None if text in ("None", "null") else kind(text)
    parse.__name__ = kind.__name__
    return parse
