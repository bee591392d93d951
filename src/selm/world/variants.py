"""Variants of the offline preference corpus for the regime map (experiments/toy.yaml).

`weak_corpus`: the same train_prefs prompts, in the same order, re-annotated by annotator policies
that never write the gold answer (bad habits and noisy edits only). Its chosen answers are rarely
fully correct, so the offline pairs alone point at mediocre answers and any high-reward answer the
loop learns from must come from the model's own y_ref: the regime where exploration should matter
most. A prompt whose re-annotation carries no preference after 50 draws is dropped (counted).

    python -m selm.world.variants --world data/world --out data/variants --seed 0
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

from selm.io import read_jsonl, write_json_atomic, write_jsonl_atomic

from .build import _subseed
from .policies import resolve_mix
from .prefs import _labelled_pair, _messages, preference_stats

CORPUS_VARIANTS = {
    "weak_corpus": {"mix": {"habit": 0.40, "noise": 0.35, "habit_noise": 0.25}, "label_noise": 1.0},
}


def reannotate(rows: list[dict], mix: dict, label_noise: float, seed: int) -> tuple[list[dict], int]:
    """New (chosen, rejected) answers for each row's prompt from `mix`; returns (rows, dropped)."""
    rng = random.Random(seed)
    mix = resolve_mix(mix)
    out, dropped = [], 0
    for row in rows:
        record = {"family": row["family"], "prompt": row["prompt"], "gold": row["gold"]}
        pair = None
        for _ in range(50):
            pair = _labelled_pair(record, mix, rng, label_noise)
            if pair is not None:
                break
        if pair is None:
            dropped += 1
            continue
        (win, chosen, score_c), (lose, rejected, score_r) = pair
        out.append({**row, "chosen": _messages(row["prompt"], chosen), "rejected": _messages(row["prompt"], rejected),
                    "messages": _messages(row["prompt"], chosen), "score_chosen": score_c,
                    "score_rejected": score_r, "policy_chosen": win, "policy_rejected": lose})
    return out, dropped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", type=Path, default=Path("data/world"))
    parser.add_argument("--out", type=Path, default=Path("data/variants"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rows = read_jsonl(args.world / "train_prefs.jsonl")
    for name, spec in CORPUS_VARIANTS.items():
        new, dropped = reannotate(rows, spec["mix"], spec["label_noise"], _subseed(args.seed, name))
        write_jsonl_atomic(args.out / name / "train_prefs.jsonl", new)
        stats = {"variant": name, **spec, "dropped": dropped, "original": preference_stats(rows),
                 "variant_stats": preference_stats(new)}
        write_json_atomic(args.out / name / "stats.json", stats)
        print(f"{name}: {len(new)} rows ({dropped} dropped); mean r* of chosen "
              f"{stats['original']['mean_r_chosen']} -> {stats['variant_stats']['mean_r_chosen']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    from selm import console

    console.setup()  # library bars and info logs off unless SELM_VERBOSE=1
    sys.exit(main())
