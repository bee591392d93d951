"""`python -m selm.bench floor`: how much of a finished toy pipeline is training, from its own records.

Every trained iteration records its optimizer seconds and its reference pass (train_metrics.json:
`train_seconds`, `ref_seconds`), and every SFT base its training seconds (sft_metrics.json). Those
are fixed by the numerics: the same batches, shapes and kernels are what make the results
identical, so no speed-up that keeps the results can remove them. Summed over the experiments' runs
(a shared iteration 0 counted once) and divided by the workers that ran them in parallel,
they bound from below what `dvc repro` of the toy scale can take on the machine that made them.
Read it beside results/bench/repro_stages.json of the same run; `make repro` writes both.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from selm import layout
from selm.bench.machine import describe, portable_path
from selm.experiments import load_experiments
from selm.io import write_json_atomic
from selm.provenance import provenance


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--spec", type=Path, default=Path("experiments/toy.yaml"))
    parser.add_argument("--stages", type=Path, default=Path("results/bench/repro_stages.json"),
                        help="the same run's stage table (optional)")
    parser.add_argument("--out", type=Path, default=Path("results/bench/training_floor.json"))


def training_seconds(spec_file: Path) -> dict:
    """CPU seconds of training and reference passes per experiment, and of each SFT base."""
    spec = load_experiments(spec_file)
    seen, experiments = set(), {}
    for name in spec.experiments:
        total = {"iterations": 0, "train_seconds": 0.0, "ref_seconds": 0.0}
        for path in sorted((layout.RUNS / name).rglob("train_metrics.json")):
            identity = json.loads((path.parent.parent / layout.IDENTITY).read_text())
            # iteration 0 is trained once and linked into every run that shares it (its identity
            # names the shared one); DVC may have turned the links into copies, so count by identity
            key = identity.get("shared") or str(path)
            if key in seen:
                continue
            seen.add(key)
            metrics = json.loads(path.read_text())
            total["iterations"] += 1
            total["train_seconds"] += metrics["train_seconds"]
            total["ref_seconds"] += metrics.get("ref_seconds") or 0.0
        if not total["iterations"]:
            raise FileNotFoundError(f"{layout.RUNS / name}: no trained iteration (run `make repro` first)")
        experiments[name] = {k: round(v, 1) for k, v in total.items()}
    sft = {}
    for base in spec.get("bases", []):
        path = Path("models") / base / "sft_metrics.json"
        if path.is_file():
            sft[base] = round(json.loads(path.read_text())["seconds"], 1)
    return {"experiments": experiments, "sft_seconds": sft, "workers": int(spec.get("workers", 1))}


def bench_floor(args: argparse.Namespace, command: str) -> dict:
    found = training_seconds(args.spec)
    cpu = sum(e["train_seconds"] + e["ref_seconds"] for e in found["experiments"].values())
    result = {**found, "experiments_training_cpu_seconds": round(cpu, 1),
              "experiments_training_wall_floor_seconds": round(cpu / found["workers"], 1)}
    if args.stages.is_file():
        stages = json.loads(args.stages.read_text())
        result["stage_table"] = {"file": portable_path(args.stages), "git_commit": stages.get("git_commit"),
                                 "wall_seconds": stages.get("wall_seconds"),
                                 "stages": {s["stage"]: s["seconds"] for s in stages["stages"]}}
    prov = provenance(command=command)
    result.update(machine=describe(), git_commit=prov["git_commit"], command=command, provenance=prov)
    write_json_atomic(args.out, result)
    return result


def run(args: argparse.Namespace, command: str) -> dict:
    result = bench_floor(args, command)
    report(result, args.out)
    return result


def report(result: dict, out: Path) -> None:
    print(f"training and reference passes: {result['experiments_training_cpu_seconds']:.0f} CPU s over "
          f"{result['workers']} workers: >= {result['experiments_training_wall_floor_seconds']:.0f} s of wall time; "
          f"SFT {result['sft_seconds']} s")
    print(f"-> {out}")
