"""UltraFeedback-binarized's preference splits, exported once to the JSONL files the loop reads.

    python -m selm.ultrafeedback --out data/ultrafeedback [--source HUB_ID_OR_LOCAL_DIR] [--revision REV]

Why a stage of its own (docs/paper.md section 2): the loop slices train_prefs contiguously, one slice per
iteration and no shuffle (Zephyr 4 x 15,283 = 61,135 // 4, Llama-3 3 x 20,378 = 61,135 // 3), so
the export keeps the dataset's row order exactly; it checks every row here, once, so that a bad row
is reported by split, row index and key before any GPU hour is spent, not inside iteration 3; and it
records what it read (source, resolved revision, row counts, sha256 of each file) in a manifest.

The split list goes to `datasets.load_dataset` as a real list (one of the authors' defects was to
pass it as one string). `--source` is a hub dataset id or a local folder that `datasets` can load
(for instance a `hf download --repo-type dataset` snapshot, or parquet/JSON files named
`<split>-00000-of-00001.parquet`). Files are written atomically: a crash leaves no half file.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from selm.artifacts import check_source, resolve_revision
from selm.io import DataError, validate_record, write_json_atomic, write_jsonl_atomic
from selm.loop import PREFS_SCHEMA, last_assistant
from selm.provenance import file_sha256

DEFAULT_SOURCE = "HuggingFaceH4/ultrafeedback_binarized"
SPLITS = ("train_prefs", "test_prefs")
# Row counts of the hub dataset the paper used; the slice sizes of conf/preset/paper_*.yaml
# are these divided by the number of iterations, so a different count must stop the export.
EXPECTED_ROWS = {"train_prefs": 61_135, "test_prefs": 2_000}
# The loop's schema plus UltraFeedback's scores (kept for analyses); other columns (`messages`,
# identical to `chosen` in the prefs splits) are dropped.
ROW_SCHEMA = {**PREFS_SCHEMA, "score_chosen": ((int, float), True), "score_rejected": ((int, float), True)}
KEPT_FIELDS = tuple(ROW_SCHEMA)


def check_row(row: dict, where: str) -> dict:
    """One exported row, or a DataError naming `where` (source, split, row index) and the key."""
    validate_record(row, ROW_SCHEMA, where)
    for key in ("chosen", "rejected"):
        for j, message in enumerate(row[key]):
            if not (isinstance(message, dict) and isinstance(message.get("role"), str)
                    and isinstance(message.get("content"), str)):
                raise DataError(f"{where}: key '{key}'[{j}] must be a message {{role: str, content: str}}")
        last_assistant(row[key], f"{where}: key '{key}'")
    return {key: row[key] for key in KEPT_FIELDS}


def load_splits(source: str, splits: Sequence[str], revision: str | None = None,
                cache_dir: str | None = None) -> dict:
    """split name -> datasets.Dataset, in the dataset's own row order."""
    if isinstance(splits, str):
        raise TypeError(f"splits must be a list of split names, not the string {splits!r}")
    import datasets

    splits = list(splits)
    loaded = datasets.load_dataset(source, split=splits, revision=revision, cache_dir=cache_dir)  # list in, list out
    return dict(zip(splits, loaded))


def checked_rows(dataset, source: str, split: str) -> Iterator[dict]:
    for index, row in enumerate(dataset):
        yield check_row(row, f"{source} split {split} row {index}")


def export(out: str | os.PathLike, source: str = DEFAULT_SOURCE, *, splits: Sequence[str] = SPLITS,
           revision: str | None = None, cache_dir: str | None = None) -> dict:
    """Write out/<split>.jsonl for each split and out/manifest.json; return the manifest.
    `cache_dir`: where `datasets` keeps its Arrow cache (None: its default, ~/.cache/huggingface)."""
    import datasets

    out = Path(out)
    check_source(source, splits)
    commit = resolve_revision(source, revision)
    loaded = load_splits(source, splits, revision=commit or revision, cache_dir=cache_dir)
    manifest = {
        "source": source, "revision_requested": revision, "revision": commit,
        "datasets_version": datasets.__version__, "fields": list(KEPT_FIELDS), "splits": {},
    }
    for split, dataset in loaded.items():
        path = out / f"{split}.jsonl"
        rows = write_jsonl_atomic(path, checked_rows(dataset, source, split))
        expected = EXPECTED_ROWS.get(split) if source == DEFAULT_SOURCE else None
        if expected is not None and rows != expected:
            path.unlink()
            raise DataError(f"{source} split {split}: {rows} rows, expected {expected} (the paper's slice "
                            "sizes assume this count)")
        manifest["splits"][split] = {"file": path.name, "rows": rows, "sha256": file_sha256(path)}
    write_json_atomic(out / "manifest.json", manifest)
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m selm.ultrafeedback", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder for <split>.jsonl and manifest.json")
    parser.add_argument("--source", default=DEFAULT_SOURCE, help="hub dataset id or local folder")
    parser.add_argument("--revision", default=None, help="hub branch, tag or commit (default: main)")
    parser.add_argument("--splits", nargs="+", default=list(SPLITS), help="splits to export")
    parser.add_argument("--cache-dir", default=None, help="datasets' Arrow cache (default: its own)")
    args = parser.parse_args(argv)
    try:
        manifest = export(args.out, args.source, splits=args.splits, revision=args.revision, cache_dir=args.cache_dir)
    except (DataError, FileNotFoundError) as e:  # bad data or a missing source file: the message names it
        print(f"error: {e}", file=sys.stderr)
        return 1
    counts = ", ".join(f"{s} {m['rows']}" for s, m in manifest["splits"].items())
    print(f"{args.source} @ {manifest['revision'] or 'local/unresolved'}: {counts} -> {args.out}")
    return 0


if __name__ == "__main__":
    from selm import console

    console.setup()  # library bars and info logs off unless SELM_VERBOSE=1
    sys.exit(main())
