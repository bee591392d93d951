"""Command-line entry points. Importing the package applies the deterministic mode when
SELM_DETERMINISTIC=1 (selm.determinism), before any entry point imports torch."""

from selm.determinism import apply as _apply_deterministic_mode

_apply_deterministic_mode()
