"""Evaluations of a checkpoint: AlpacaEval 2.0 (`selm.evals.alpaca`) and MT-Bench
(`selm.evals.mt_bench`), each with a judge from `selm.judges` chosen by name.

Submodules are imported explicitly (they pull in pandas / alpaca_eval / transformers)."""
