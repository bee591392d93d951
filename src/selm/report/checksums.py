"""The checksums of what the toy pipeline trained, with the machine and the numerical mode that made them.

    python -m selm.report.checksums --spec experiments/toy.yaml --out results/toy/checksums.json

The `checksums` stage of the root dvc.yaml writes results/toy/checksums.json after every run: the md5
of each SFT base's initial and trained weights and of one run's final checkpoint, each base's greedy r*,
the CPU model and vector extensions of the machine, the numerical mode (selm.determinism) and the
package versions. In the portable mode (the default) these are the same on every x86-64 CPU with AVX2
and FMA, so after `make repro` on another machine `git diff results/toy/checksums.json` shows only the
machine and the commit; tests/test_portability.py trains a fresh SFT base and compares it with the
recorded sums.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

from omegaconf import OmegaConf

from selm import layout
from selm.determinism import mode
from selm.io import write_json_atomic
from selm.provenance import git_commit, machine, result_versions

FORMAT = "selm-checksums/1"
WEIGHTS = "model.safetensors"
# The run whose final checkpoint is recorded: SELM on the weak base, the first seed (Table 1's cell).
RUN = ("main", "tiny-sft", 0.1)


def md5(path: Path) -> str:
    h = hashlib.md5()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def final_checkpoint(run_dir: Path) -> Path:
    """The weights of the last iteration of a finished run."""
    iterations = [(layout.parse_iteration_name(p.name), p) for p in run_dir.glob(layout.ITERATION_GLOB)]
    trained = sorted((t, p) for t, p in iterations if t is not None and (p / layout.MODEL / WEIGHTS).is_file())
    if not trained:
        raise FileNotFoundError(f"{run_dir}: no trained iteration (run `dvc repro` first)")
    return trained[-1][1] / layout.MODEL / WEIGHTS


def checksums(spec_file: Path, models: Path = Path("models")) -> dict:
    spec = OmegaConf.to_container(OmegaConf.load(spec_file))
    files, greedy = {}, {}
    for base in spec.get("bases", []):
        for folder in (models / f"{base}.init", models / base):
            files[(folder / WEIGHTS).as_posix()] = md5(folder / WEIGHTS)
        greedy[base] = json.loads((models / base / "headroom.json").read_text())["greedy"]["mean"]
    experiment, base, alpha = RUN
    seed = min(spec.get("seeds", [0]))
    run = layout.RUNS / experiment / base / layout.alpha_name(alpha) / layout.seed_name(seed)
    final = final_checkpoint(run)
    files[final.as_posix()] = md5(final)
    return {"format": FORMAT, "numerics": mode(), "machine": machine(), "md5": files, "greedy_r*": greedy,
            "versions": result_versions(), "git_commit": git_commit(Path(__file__).parent),
            "command": f"python -m selm.report.checksums --spec {spec_file.as_posix()}"}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spec", type=Path, default=Path("experiments/toy.yaml"))
    parser.add_argument("--out", type=Path, default=Path("results/toy/checksums.json"))
    args = parser.parse_args(argv)
    record = checksums(args.spec)
    write_json_atomic(args.out, record)
    print(f"{len(record['md5'])} checksums ({record['numerics']} numerics, {record['machine']['cpu_model']}) -> {args.out}")


if __name__ == "__main__":
    main()
