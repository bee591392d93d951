"""Stage wall times of `make repro`: each DVC stage records its own start and end, and a table
after `dvc repro` says how long each stage took and what it did.

Every stage command runs its main inside `stage_timer()`. Under DVC (which names the stage in
the environment variable DVC_STAGE) it appends one JSON line when it starts and one when it ends
(seconds, ok, and what it did: runs trained, evaluations run, ...) to the timing log,
`runs/stage_times.jsonl` (SELM_STAGE_LOG overrides). Each line is one append of one whole line,
then fsync, so a killed stage leaves its start line (shown as "interrupted") and at worst a torn
last line, which the reader skips. Outside DVC nothing is recorded. A stage whose module must not
import this one (the toy world's builders are part of the loop's code identity) runs under
`python -m selm.stagelog run -- CMD ...`, which records it around the command.

`python -m selm.bench stages` prints the table from this log after `dvc repro`.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_LOG = Path("runs") / "stage_times.jsonl"

# What the running process did (e.g. "iterations trained"); stage_timer records it at the end.
_counts: collections.Counter = collections.Counter()


def count(what: str, n: int = 1) -> None:
    """Add n to this process's tally of `what` (e.g. count("iterations trained"))."""
    _counts[what] += n


def take_counts() -> dict[str, int]:
    """This process's tally since the last take (and reset it): a worker returns it per run."""
    out = dict(_counts)
    _counts.clear()
    return out


def add_counts(counts: dict[str, int]) -> None:
    """Fold a worker's tally into this process's."""
    _counts.update(counts)


def log_path() -> Path:
    return Path(os.environ.get("SELM_STAGE_LOG", DEFAULT_LOG))


def append_record(path: Path, record: dict) -> None:
    """One whole line in append mode, then fsync: the line is either there or torn."""
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(record, sort_keys=True) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def stage_timer(stage: str | None = None):
    """Record the start and end of the stage DVC is running (DVC_STAGE; `stage` wins when given).
    Without a stage name (not under DVC) it records nothing."""
    name = stage or os.environ.get("DVC_STAGE")
    if not name:
        yield
        return
    path = log_path()
    _counts.clear()
    start = time.time()
    append_record(path, {"stage": name, "event": "start", "time": start, "pid": os.getpid()})
    ok = False
    try:
        yield
        ok = True
    finally:
        end = time.time()
        append_record(path, {"stage": name, "event": "end", "time": end, "pid": os.getpid(),
                             "seconds": round(end - start, 3), "ok": ok, "did": take_counts()})


def read_log(path: Path) -> list[dict]:
    """The log's records; a torn or unreadable line (a stage killed mid-append) is skipped."""
    if not path.exists():
        return []
    records = []
    for line in path.read_bytes().split(b"\n"):
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if isinstance(record, dict) and "stage" in record and "event" in record and "time" in record:
            records.append(record)
    return records


def run_command(cmd: list[str]) -> int:
    """Run a stage command whose module must not import this one (the toy world's builders are
    part of the loop's code identity, selm.provenance) and record it; its exit status is ours."""
    cmd = cmd[1:] if cmd[:1] == ["--"] else cmd
    if not cmd:
        raise SystemExit("selm.stagelog run: no command given (python -m selm.stagelog run -- CMD ...)")
    with stage_timer():
        code = subprocess.run(cmd, check=False).returncode
        if code != 0:
            raise SystemExit(code)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Record a DVC stage's start and end around a command.")
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="run a stage command (after --) and record its start and end")
    p_run.add_argument("cmd", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    return run_command(args.cmd)


if __name__ == "__main__":
    sys.exit(main())
