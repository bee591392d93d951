"""Argument types shared by the entry points (not an entry point itself)."""


def optional(kind: type):
    """An argparse type where 'None' / 'null' mean None: DVC renders a YAML null in a cmd as 'None'."""
    def parse(text: str):
        return None if text in ("None", "null") else kind(text)
    parse.__name__ = kind.__name__
    return parse
