"""How the toy loop's cost grows with the slice size and the model size.

    python -m selm.bench growth [--sizes 113k,453k] [--slices 32,64,128]

For each tiny model size, an SFT base is trained once on the weak demonstrations (not timed in the
growth figures; its seconds are recorded), then one loop run (one alpha, one seed, the loop's
iterations of the toy scale, the cheapest evaluation: `--eval-prompts` greedy answers, no
coverage samples) is timed per slice size. Each iteration generates y_ref for every prompt of its
slice, ranks, computes the reference log-probs and trains one epoch over the slice, so the loop's
work is linear in prompts x iterations; the fit `seconds = fixed + per_prompt x slice` per model
size says how much is fixed (loading, evaluation, process set-up) and how much grows.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import torch

from selm.bench.machine import describe
from selm.io import write_json_atomic
from selm.provenance import provenance


def linear_fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """(intercept, slope) of the least-squares line through the points."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        raise ValueError("linear_fit: at least two different x values are needed")
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    return my - slope * mx, slope


def sft_base(size: str, world: Path, out: Path, epochs: float, seed: int) -> tuple[Path, float, int]:
    from selm.sft import train_sft
    from selm.tiny import build_tiny_model

    init = build_tiny_model(out / f"{size}.init", size=size, seed=seed)
    metrics = train_sft(init, world / "sft_weak.jsonl", out / size, epochs=epochs, seed=seed)
    return out / size, metrics["seconds"], metrics["parameters"]


def time_loop(model_dir: Path, world: Path, slice_size: int, args, run_dir: Path) -> float:
    from selm.config import compose_config
    from selm.loop import run_loop

    cfg = compose_config("loop", [
        f"model.path={model_dir}", f"data.train_prefs={world}/train_prefs.jsonl",
        f"data.test_prefs={world}/test_prefs.jsonl", f"data.slice_size={slice_size}",
        f"eval.n_prompts={args.eval_prompts}", "eval.coverage_samples=0", "logger=none", f"run_dir={run_dir}",
        f"paths.ref_cache_dir={run_dir}/cache", f"paths.shared_runs={run_dir}/shared", f"train.alpha={args.alpha}",
        f"train.seed={args.seed}",
    ])
    start = time.perf_counter()
    run_loop(cfg)
    return time.perf_counter() - start


def bench_growth(args, command: str) -> dict:
    sizes, slices = args.sizes.split(","), [int(s) for s in args.slices.split(",")]
    world = args.world
    if not (world / "train_prefs.jsonl").is_file():
        raise SystemExit(f"--world {world}: no train_prefs.jsonl there (build it: dvc repro world)")
    points, fits, bases = [], {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            model_dir, sft_seconds, params = sft_base(size, world, Path(tmp) / "models", args.sft_epochs, args.seed)
            bases[size] = {"parameters": params, "sft_seconds": sft_seconds, "sft_epochs": args.sft_epochs}
            for slice_size in slices:
                seconds = time_loop(model_dir, world, slice_size, args, Path(tmp) / f"run-{size}-{slice_size}")
                points.append({"model_size": size, "parameters": params, "slice_size": slice_size,
                               "loop_seconds": round(seconds, 2)})
                print(f"{size:6s} slice {slice_size:5d}: {seconds:8.1f} s", flush=True)
            fixed, per_prompt = linear_fit([p["slice_size"] for p in points if p["model_size"] == size],
                                           [p["loop_seconds"] for p in points if p["model_size"] == size])
            fits[size] = {"fixed_seconds": round(fixed, 2), "seconds_per_slice_prompt": round(per_prompt, 4)}
    prov = provenance(command=command)
    result = {
        "what": "wall seconds of one toy loop run (alpha, seed and evaluation fixed) per model size and slice size",
        "command": command, "git_commit": prov["git_commit"],
        "settings": {"sizes": sizes, "slices": slices, "alpha": args.alpha, "seed": args.seed,
                     "eval_prompts": args.eval_prompts, "iterations": "the toy scale's (offline DPO, then 1-3)",
                     "threads": torch.get_num_threads()},
        "bases": bases, "points": points, "linear_fits": fits,
        "machine": {**describe(), "load_average_end": os.getloadavg()},
        "provenance": prov,
    }
    write_json_atomic(args.out, result)
    return result


def add_arguments(parser) -> None:
    parser.add_argument("--sizes", default="113k,453k", help="tiny model sizes (selm.tiny.SIZES)")
    parser.add_argument("--slices", default="32,64,128", help="prompts per iteration's slice")
    parser.add_argument("--world", type=Path, default=Path("data/world"))
    parser.add_argument("--alpha", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--eval-prompts", type=int, default=8, help="greedy test answers per iteration")
    parser.add_argument("--sft-epochs", type=float, default=2.0)
    parser.add_argument("--out", type=Path, default=Path("results/bench/cost_growth.json"))


def run(args, command: str) -> dict:
    result = bench_growth(args, command)
    for size, fit in result["linear_fits"].items():
        print(f"{size}: {fit['fixed_seconds']:.1f} s + {fit['seconds_per_slice_prompt']:.3f} s x slice prompts")
    print(f"-> {args.out}")
    return result
