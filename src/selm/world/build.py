"""Build the toy world's files: SFT demonstrations, preference corpus, evaluation sets, manifest.

Prompts are allocated to splits in a fixed order (evaluation sets first, then test_prefs, then
train_prefs) from one shared pool, so every split is disjoint from the others and resizing a later
split never changes an earlier one.  SFT demonstrations never use a prompt of any of those splits
(they may repeat prompts among themselves).  Each split draws from its own random stream, derived
from (seed, split name), so the build is deterministic and splits are independent of each other.

CLI: ``python -m selm.world.build --out DIR --seed N``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Iterable, Mapping

from selm.io import write_bytes_atomic

from .evalsets import alpaca_eval_rows, lmeval_gen_rows, lmeval_mc_rows, mt_bench_rows
from .families import FAMILIES, sample_records, true_reward
from .policies import ANNOTATOR_MIX, demonstrations, policy_stats, resolve_mix
from .prefs import preference_pairs, preference_stats

WORLD_FORMAT = "selm-toy-world/1"


def _jsonl_bytes(rows: Iterable[dict]) -> bytes:
    return "".join(json.dumps(row) + "\n" for row in rows).encode("utf-8")


def _subseed(seed: int, name: str) -> int:
    digest = hashlib.blake2b(f"{seed}/{name}".encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def _mean_reward(rows: list[dict]) -> float:
    if not rows:
        return 0.0
    total = sum(true_reward(r, r["completion"]) for r in rows)
    return round(total / len(rows), 4)


def build_world(
    out_dir: str | os.PathLike,
    seed: int = 0,
    n_sft: int = 20000,
    n_train_prefs: int = 6000,
    n_test_prefs: int = 500,
    n_eval: int = 805,
    n_mt_bench: int = 80,
    n_lmeval: int = 500,
    families: Iterable[str] | None = None,
    weak_mix: str | Mapping[str, float] = "weak",
    strong_mix: str | Mapping[str, float] = "strong",
    reference_mix: str | Mapping[str, float] = "strong",
    annotator_mix: str | Mapping[str, float] | None = None,
    label_noise: float = 1.0,
) -> dict:
    """Write every world file into ``out_dir`` and return the manifest (also written as world.json).

    ``n_eval`` is the AlpacaEval size (805 like the real set), ``n_mt_bench`` the number of two-turn
    questions (80 like MT-Bench), ``n_lmeval`` the size of each lm-eval task.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fams = sorted(families) if families is not None else sorted(FAMILIES)
    unknown = [name for name in fams if name not in FAMILIES]
    if unknown:
        raise KeyError(f"unknown families {unknown}; known families: {sorted(FAMILIES)}")
    annotators = resolve_mix(annotator_mix if annotator_mix is not None else ANNOTATOR_MIX)

    def rng(name: str) -> random.Random:
        return random.Random(_subseed(seed, name))

    used: set[str] = set()

    def take(name: str, n: int) -> list[dict]:
        records = sample_records(n, rng(name), families=fams, exclude=used)
        used.update(r["prompt"] for r in records)
        return records

    files: dict[str, list[dict]] = {}
    files["alpaca_eval.jsonl"] = alpaca_eval_rows(take("alpaca_eval", n_eval), rng("alpaca_ref"), reference_mix)
    files["mt_bench.jsonl"] = mt_bench_rows(take("mt_bench", n_mt_bench), rng("mt_bench_followup"))
    files["lmeval_mc.jsonl"] = lmeval_mc_rows(take("lmeval_mc", n_lmeval), rng("lmeval_mc_choices"))
    files["lmeval_gen.jsonl"] = lmeval_gen_rows(take("lmeval_gen", n_lmeval))
    for split, n in (("test_prefs", n_test_prefs), ("train_prefs", n_train_prefs)):
        rows = preference_pairs(n, rng(split), annotators, label_noise, fams, exclude=used)
        used.update(r["prompt"] for r in rows)
        files[f"{split}.jsonl"] = rows
    for name, mix in (("sft_weak", weak_mix), ("sft_strong", strong_mix)):
        files[f"{name}.jsonl"] = demonstrations(n_sft, mix, _subseed(seed, name), fams, exclude=used)

    hashes = {}
    for name, rows in files.items():
        data = _jsonl_bytes(rows)
        hashes[name] = hashlib.sha256(data).hexdigest()
        write_bytes_atomic(out / name, data)

    manifest = {
        "format": WORLD_FORMAT,
        "seed": seed,
        "sizes": {name: len(rows) for name, rows in files.items()},
        "families": {n: {"kind": FAMILIES[n].kind, "habit": FAMILIES[n].habit_description} for n in fams},
        "params": {
            "weak_mix": resolve_mix(weak_mix),
            "strong_mix": resolve_mix(strong_mix),
            "reference_mix": resolve_mix(reference_mix),
            "annotator_mix": annotators,
            "label_noise": label_noise,
        },
        "stats": {
            "policy_mean_reward": policy_stats(200, _subseed(seed, "stats")),
            "sft_weak_mean_reward": _mean_reward(files["sft_weak.jsonl"]),
            "sft_strong_mean_reward": _mean_reward(files["sft_strong.jsonl"]),
            "train_prefs": preference_stats(files["train_prefs.jsonl"]),
            "test_prefs": preference_stats(files["test_prefs.jsonl"]),
        },
        "sha256": hashes,
    }
    write_bytes_atomic(out / "world.json", (json.dumps(manifest, indent=2) + "\n").encode("utf-8"))
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the SELM toy world's data files.")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-sft", type=int, default=20000)
    parser.add_argument("--n-train-prefs", type=int, default=6000)
    parser.add_argument("--n-test-prefs", type=int, default=500)
    parser.add_argument("--n-eval", type=int, default=805)
    parser.add_argument("--n-mt-bench", type=int, default=80)
    parser.add_argument("--n-lmeval", type=int, default=500)
    parser.add_argument("--label-noise", type=float, default=1.0)
    parser.add_argument("--families", nargs="+", default=None, help=f"subset of {sorted(FAMILIES)}")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    manifest = build_world(
        args.out,
        seed=args.seed,
        n_sft=args.n_sft,
        n_train_prefs=args.n_train_prefs,
        n_test_prefs=args.n_test_prefs,
        n_eval=args.n_eval,
        n_mt_bench=args.n_mt_bench,
        n_lmeval=args.n_lmeval,
        families=args.families,
        label_noise=args.label_noise,
    )
    elapsed = time.perf_counter() - start
    sizes = ", ".join(f"{k}={v}" for k, v in manifest["sizes"].items())
    print(f"built world seed={args.seed} in {args.out} ({elapsed:.1f}s): {sizes}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    from selm import console

    console.setup()  # library bars and info logs off unless SELM_VERBOSE=1
    sys.exit(main())
