"""Benchmarks that print figures and write them to results/bench/, one entry point:

    python -m selm.bench train      # set-up, steady state and end to end: SELMTrainer vs trl, per model size
    python -m selm.bench generate   # tokens/s of the HF and vLLM generation backends on SmolLM2-135M
    python -m selm.bench decode     # selm.decode's lean loop vs transformers' generate on the toy workload
    python -m selm.bench growth     # the toy loop's wall time per slice size and model size
    python -m selm.bench floor      # the training seconds of a finished toy pipeline (what no speed-up removes)
    python -m selm.bench stages     # the stage time table of the last `dvc repro` (`make repro` ends with it)

Each benchmark is a module of this package with `add_arguments(parser)` and `run(args, command)`;
`python -m selm.bench NAME --help` lists its options. Only the module named is imported, so `floor`
and `stages` start without torch. Every result file records the command (paths relative to the
working directory, selm.bench.machine.portable_command), the git commit and the machine's
description (CPU model, vector extensions, cores).
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import sys

from selm.bench.machine import portable_command

# name -> (module, what it measures)
BENCHMARKS = {
    "train": ("selm.bench.train", "set-up, steady state, end to end: SELMTrainer vs trl's DPOTrainer per model size"),
    "generate": ("selm.bench.generate", "tokens/s of the HF and vLLM generation backends (SmolLM2-135M)"),
    "decode": ("selm.bench.decode", "the lean decoding loop vs transformers' generate (toy workload)"),
    "growth": ("selm.bench.growth", "the toy loop's wall time per slice size and model size"),
    "floor": ("selm.bench.floor", "training seconds of the finished toy pipeline, from its records"),
    "stages": ("selm.bench.stages", "the stage time table of the last `dvc repro`"),
}


def usage() -> str:
    width = max(map(len, BENCHMARKS))
    rows = "\n".join(f"  {name:<{width}}  {what}" for name, (_, what) in BENCHMARKS.items())
    return f"usage: python -m selm.bench NAME [options]   (python -m selm.bench NAME --help)\n\nbenchmarks:\n{rows}"


def unknown(name: str) -> str:
    close = difflib.get_close_matches(name, BENCHMARKS, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"python -m selm.bench: unknown benchmark {name!r}{hint}; known: {', '.join(BENCHMARKS)}"


def parser_for(name: str):
    """(the benchmark's module, its argument parser)."""
    if name not in BENCHMARKS:
        raise SystemExit(unknown(name))
    module_name, what = BENCHMARKS[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"python -m selm.bench {name}", description=what)
    module.add_arguments(parser)
    return module, parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    module, parser = parser_for(argv[0])
    args = parser.parse_args(argv[1:])
    module.run(args, portable_command(["python", "-m", "selm.bench", *argv]))
    return 0
