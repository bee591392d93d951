"""`python -m selm.bench decode`: the lean decoding loop (selm.decode) against transformers' `generate`
on the toy scale's own generation workload, side by side in one process.

The workload is a loop evaluation with coverage: greedy answers to the held-out prompts, then 8 samples
at T = 1 per prompt (HFBackend, batches of 64 sequences, one torch thread as in the experiment
workers). After one untimed warm-up of each path, each round runs both paths on the same model and
prompts, alternating which goes first;
the answers must be identical (the benchmark fails otherwise), and the figures are seconds and
generated tokens per second of each path, plus their ratio per round. Seconds and ratios are stored
unrounded, so each round's speed-up is exactly its two stored times' quotient. torch's thread count
is restored when the benchmark ends.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from selm import decode
from selm.bench.machine import describe, portable_path
from selm.io import read_jsonl, write_json_atomic
from selm.provenance import provenance


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, default=Path("models/tiny-sft"),
                        help="a tiny checkpoint (`make repro` trains models/tiny-sft)")
    parser.add_argument("--prompts-file", type=Path, default=Path("data/world/test_prefs.jsonl"))
    parser.add_argument("--prompts", type=int, default=300)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--out", type=Path, default=Path("results/bench/decode.json"))


def _workload(backend, prompts: list[str], samples: int, max_new_tokens: int) -> tuple[list, float, int]:
    start, tokens, answers = time.perf_counter(), 0, []
    for n, do_sample, seed in ((1, False, 0), (samples, True, 1)):
        answers.append(backend.generate(prompts, n=n, do_sample=do_sample, temperature=1.0, top_p=1.0,
                                        max_new_tokens=max_new_tokens, seed=seed))
        tokens += backend.last_stats["tokens"]
    return answers, time.perf_counter() - start, tokens


def _on_path(path: str, backend, prompts: list[str], samples: int, max_new_tokens: int) -> tuple[list, float, int]:
    """_workload through the lean loop ("lean") or through transformers' generate ("generate": the
    backend is told that selm.decode supports nothing, as for a model it does not cover)."""
    supports = decode.supports
    if path == "generate":
        decode.supports = lambda *a, **k: False
    try:
        return _workload(backend, prompts, samples, max_new_tokens)
    finally:
        decode.supports = supports


def bench_decode(args: argparse.Namespace, command: str) -> dict:
    for path, what in ((args.model / "config.json", "--model"), (args.prompts_file, "--prompts-file")):
        if not path.is_file():
            raise FileNotFoundError(f"{what}: {path} does not exist (`make repro` builds the toy world and bases)")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rounds, prompts = _rounds(args)
        prov = provenance(command=command)  # its torch_threads: the benchmark's one
    finally:
        torch.set_num_threads(threads)
    result = {"model": portable_path(args.model), "prompts": len(prompts), "samples": args.samples,
              "max_new_tokens": args.max_new_tokens, "threads": prov["torch_threads"], "answers_identical": True,
              "rounds": rounds, "speedup": [r["speedup"] for r in rounds], "machine": describe(),
              "git_commit": prov["git_commit"], "command": command, "provenance": prov}
    write_json_atomic(args.out, result)
    return result


def _rounds(args: argparse.Namespace) -> tuple[list[dict], list[str]]:
    """The warm-up and the timed rounds (on one torch thread)."""
    from selm.generation import HFBackend

    prompts = [r["prompt"] for r in read_jsonl(args.prompts_file)][: args.prompts]
    backend = HFBackend(str(args.model), progress=False, device="cpu")
    if not decode.supports(backend.model):
        raise ValueError(f"{args.model}: selm.decode does not support this model, so there is nothing to compare")
    rounds = []
    for path in ("lean", "generate"):  # warm-up: first-call costs (allocator, kernels) out of the figures
        _on_path(path, backend, prompts[:64], args.samples, args.max_new_tokens)
    for r in range(args.rounds):
        figures = {path: _on_path(path, backend, prompts, args.samples, args.max_new_tokens)
                   for path in (("lean", "generate") if r % 2 == 0 else ("generate", "lean"))}
        if figures["lean"][0] != figures["generate"][0]:
            raise AssertionError(f"round {r}: the lean loop's answers differ from generate's")
        rounds.append({path: {"seconds": s, "tokens": n, "tokens_per_s": round(n / s, 1)}
                       for path, (_, s, n) in figures.items()})
        rounds[-1]["speedup"] = rounds[-1]["generate"]["seconds"] / rounds[-1]["lean"]["seconds"]
        print(f"round {r}: lean {rounds[-1]['lean']['seconds']:.2f} s, generate {rounds[-1]['generate']['seconds']:.2f} s,"
              f" {rounds[-1]['speedup']:.2f}x, answers identical", flush=True)
    return rounds, prompts


def run(args: argparse.Namespace, command: str) -> dict:
    result = bench_decode(args, command)
    print(f"-> {args.out}")
    return result
