"""Command-line entry points. The numerical mode is applied by importing the `selm` package
(selm.determinism), before any entry point imports torch."""
