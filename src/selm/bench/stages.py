"""The stage time table of `make repro`, from the timing log the stages write (selm.stagelog).

    python -m selm.bench stages --since 1764590000 --out results/bench/repro_stages.json

lists every stage of dvc.yaml in the pipeline's order with its seconds and what it did (runs,
iterations trained, evaluations run); a stage with no record since `--since` (the start of
`dvc repro`) was skipped by DVC: "cached". The JSON also names the git commit and the machine
(CPU model, vector extensions, cores).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from selm.bench import machine
from selm.stagelog import DEFAULT_LOG, log_path, read_log


def describe(did: dict[str, int]) -> str:
    return ", ".join(f"{n} {what}" for what, n in sorted(did.items()) if n) or "ran"


def stage_rows(stages: list[str], records: list[dict], since: float) -> list[dict]:
    """One row per stage: the last invocation that started at or after `since` (seconds, what it
    did), "interrupted" when it never recorded its end, "failed" when it ended with an error, and
    "cached" when it did not run (DVC found its outputs up to date)."""
    runs = {}  # stage -> (start record, end record or None)
    for r in sorted(records, key=lambda r: r["time"]):
        if r["time"] < since:
            continue
        if r["event"] == "start":
            runs[r["stage"]] = (r, None)
        elif r["event"] == "end" and r["stage"] in runs and runs[r["stage"]][0]["pid"] == r["pid"]:
            runs[r["stage"]] = (runs[r["stage"]][0], r)
    rows = []
    for stage in stages + sorted(set(runs) - set(stages)):
        if stage not in runs:
            rows.append({"stage": stage, "seconds": 0.0, "status": "cached", "did": "cached"})
            continue
        start, end = runs[stage]
        if end is None:
            rows.append({"stage": stage, "seconds": None, "status": "interrupted", "did": "no end recorded"})
        else:
            rows.append({"stage": stage, "seconds": end["seconds"], "status": "ok" if end["ok"] else "failed",
                         "did": describe(end.get("did", {}))})
    return rows


def format_table(rows: list[dict], wall: float | None = None) -> str:
    width = max([len("stage")] + [len(r["stage"]) for r in rows])
    lines = [f"{'stage':<{width}}  {'seconds':>8}  what it did", f"{'-' * width}  {'-' * 8}  {'-' * 11}"]
    for r in rows:
        seconds = "-" if r["seconds"] is None else f"{r['seconds']:.1f}"
        what = r["did"] if r["status"] in ("ok", "cached") else f"{r['status'].upper()}: {r['did']}"
        lines.append(f"{r['stage']:<{width}}  {seconds:>8}  {what}")
    total = sum(r["seconds"] or 0.0 for r in rows)
    lines.append(f"{'stages in all':<{width}}  {total:>8.1f}")
    if wall is not None:
        lines.append(f"{'dvc repro (wall)':<{width}}  {wall:>8.1f}")
    return "\n".join(lines)


def pipeline_stages(dvc_file: str) -> list[str]:
    """The stage names of `dvc_file` in DVC's order (foreach stages expanded: experiment@main, ...)."""
    done = subprocess.run([sys.executable, "-m", "dvc", "stage", "list", "--name-only", dvc_file],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"dvc stage list {dvc_file} failed: {done.stderr.strip()}")
    return [line.strip() for line in done.stdout.splitlines() if line.strip()]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--since", type=float, required=True, help="start of dvc repro (seconds since the epoch)")
    p.add_argument("--dvc-file", default="dvc.yaml")
    p.add_argument("--log", type=Path, default=None, help=f"timing log (default: {DEFAULT_LOG})")
    p.add_argument("--out", type=Path, default=None, help="JSON to write (e.g. results/bench/repro_stages.json)")


def run(args: argparse.Namespace, command: str) -> dict:
    from selm.io import write_json_atomic
    from selm.provenance import git_commit

    wall = time.time() - args.since
    rows = stage_rows(pipeline_stages(args.dvc_file), read_log(args.log or log_path()), args.since)
    print(format_table(rows, wall))
    result = {"dvc_file": args.dvc_file, "git_commit": git_commit(), "machine": machine.describe(), "command": command,
              "started": args.since, "wall_seconds": round(wall, 1), "stages": rows}
    if args.out is not None:
        write_json_atomic(args.out, result)
    return result
