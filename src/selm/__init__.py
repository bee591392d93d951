"""selm: the SELM reproduction suite (see README.md). Entry points live in selm.cli and the stage modules.

Importing the package applies the numerical mode (selm.determinism: portable by default), before any
module of it imports torch or numpy."""

from selm.determinism import apply as _apply_numerical_mode

_apply_numerical_mode()
