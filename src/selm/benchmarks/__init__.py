"""The benchmarks a checkpoint is evaluated on (selm.evaluate runs them): AlpacaEval 2.0
(`selm.benchmarks.alpaca`) and MT-Bench (`selm.benchmarks.mt_bench`), each with a judge from
`selm.judges` chosen by name, and lm-eval (`selm.benchmarks.lmeval`, local tasks in `lm_eval_tasks/`).

Submodules are imported explicitly (they pull in pandas / alpaca_eval / transformers)."""
