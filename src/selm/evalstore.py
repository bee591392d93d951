"""Loop evaluations computed once and shared between runs.

A loop evaluation (a checkpoint's greedy test answers and their metrics: eval.json, its answers and
its identity record) depends on its identity alone (selm.loop.eval_identity: the checkpoint's
content fingerprint, the test prompts, the evaluation, generation and scale settings, the code and
the versions), never on the run that asks for it: every run of a base starts from the same SFT
checkpoint, and the alphas of a cell share one iteration 0. So it is computed once into a
content-addressed store, `<paths.shared_runs>/evals/<digest of the identity>/`
(layout.shared_eval_dir), and hard-linked into each run folder that asks for it, where it has the
same three files as before, byte for byte.

An entry is filled under an exclusive lock (parallel workers wait for the first, then link) and
built in a temporary folder beside it that is renamed into place only when whole, so it is complete
or absent. It also holds `stored.json`: its identity and the sha256 of each of its files. An entry
whose record is missing, whose identity differs from the one asked for, or whose files no longer
match their digests is removed and computed again, never trusted.

Each call counts "r* evaluations computed" or "r* evaluations linked" in this process's tally,
which the experiment stage takes after each run (take_counts) into its stage log; the loop does not
import selm.stagelog itself, which stays outside the loop's code identity.
"""

from __future__ import annotations

import collections
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

from selm import layout
from selm.io import DataError, exclusive, link_copy, read_json, write_json_atomic, write_jsonl_atomic
from selm.provenance import digest, file_sha256

log = logging.getLogger(__name__)

# An entry's files, in the order they are linked into a run folder: eval.json last, so a run folder
# holding eval.json holds the others.
FILES = (layout.EVAL_IDENTITY, layout.EVAL_ANSWERS, layout.LOOP_EVAL)

# compute() -> (metrics, answer rows): what selm.loop.evaluate_test_answers returns
Compute = Callable[[], tuple[dict, list[dict]]]

_counts: collections.Counter = collections.Counter()


def take_counts() -> dict[str, int]:
    """How many evaluations this process computed and linked since the last take (and reset)."""
    out = dict(_counts)
    _counts.clear()
    return out


def shared_evaluation(shared_root: str | Path, identity: dict, out_dir: Path, compute: Compute) -> dict:
    """The evaluation of `identity` linked into `out_dir` (computed with `compute` unless the store
    holds an intact entry for it); returns its metrics (eval.json)."""
    entry = layout.shared_eval_dir(shared_root, digest(identity))
    with exclusive(entry.with_name(entry.name + ".lock")):
        problem = entry_problem(entry, identity)
        if problem is None:
            _counts["r* evaluations linked"] += 1
        else:
            if entry.exists():
                log.warning("%s: %s: computing it again", entry, problem)
            _build(entry, identity, compute)
            _counts["r* evaluations computed"] += 1
        _link_into(entry, Path(out_dir))
    return read_json(Path(out_dir) / layout.LOOP_EVAL)


def entry_problem(entry: Path, identity: dict) -> str | None:
    """Why the store entry cannot be used for `identity` (None: it is intact)."""
    record = entry / layout.STORED_EVAL
    if not record.is_file():
        return f"no {layout.STORED_EVAL}"
    try:
        stored = read_json(record)
    except DataError as e:
        return f"unreadable record ({e})"
    if not isinstance(stored, dict) or stored.get("identity") != identity:
        return "recorded for another identity"
    files = stored.get("files")
    if not isinstance(files, dict) or sorted(files) != sorted(FILES):
        return f"the record does not list the files {list(FILES)}"
    for name in FILES:
        path = entry / name
        if not path.is_file():
            return f"{name} is missing"
        if file_sha256(path) != files[name]:
            return f"{name} differs from the digest recorded when it was written"
    return None


def _build(entry: Path, identity: dict, compute: Compute) -> None:
    """Compute the evaluation, write it into a folder beside `entry`, and rename that into place."""
    metrics, rows = compute()
    building = entry.with_name(f".{entry.name}.building")
    for stale in (building, entry):  # a crashed build, or an entry that failed its check
        if stale.exists():
            shutil.rmtree(stale)
    building.mkdir(parents=True)
    write_json_atomic(building / layout.EVAL_IDENTITY, identity)
    write_jsonl_atomic(building / layout.EVAL_ANSWERS, rows)
    write_json_atomic(building / layout.LOOP_EVAL, metrics)
    write_json_atomic(building / layout.STORED_EVAL, {
        "identity": identity, "files": {name: file_sha256(building / name) for name in FILES}})
    building.rename(entry)


def _link_into(entry: Path, out_dir: Path) -> None:
    """Hard-link the entry's files into `out_dir`, after removing the results made there under
    another identity (eval.json first): a crash in between leaves no eval.json beside a new record."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in (layout.LOOP_EVAL, layout.EVAL_ANSWERS):
        (out_dir / stale).unlink(missing_ok=True)
    for name in FILES:
        link_copy(entry / name, out_dir / name)
