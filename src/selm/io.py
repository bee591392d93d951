"""File hand-offs between stages: JSONL validated on read, every output written atomically.

Every arrow of the pipeline is a file. A reader names the file, line and key of the first bad
record; a writer goes through a temporary file in the same folder and `os.replace`, so a crash
never leaves a half-written file under the final name.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any


log = logging.getLogger(__name__)


class DataError(ValueError):
    """Bad input data; the message names the file, the line and the key."""


# A schema maps a key to (expected type(s), required). Extra keys are allowed and kept.
Schema = Mapping[str, tuple[type | tuple[type, ...], bool]]

PAIRS_SCHEMA: Schema = {
    "prompt": (str, True),
    "chosen": (str, True),
    "rejected": (str, True),
    "response": (str, False),  # y_ref, the reference policy's own answer; absent for plain DPO
    "prompt_id": (str, False),
}


def _type_name(expected: type | tuple[type, ...]) -> str:
    if isinstance(expected, tuple):
        return " or ".join(t.__name__ for t in expected)
    return expected.__name__


def validate_record(record: Any, schema: Schema, where: str) -> dict:
    """Check one decoded record against `schema`; `where` is 'file:line' for the message."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    for key, (expected, required) in schema.items():
        if key not in record:
            if required:
                raise DataError(f"{where}: missing required key '{key}'")
            continue
        value = record[key]
        # bool is an int in Python; a schema asking for int/float must not accept true/false.
        if isinstance(value, bool) and bool not in (expected if isinstance(expected, tuple) else (expected,)):
            raise DataError(f"{where}: key '{key}' must be {_type_name(expected)}, got bool")
        if not isinstance(value, expected):
            raise DataError(f"{where}: key '{key}' must be {_type_name(expected)}, got {type(value).__name__}")
        if isinstance(value, str) and required and key == "prompt" and not value.strip():
            raise DataError(f"{where}: key 'prompt' is empty")
    return record


def iter_jsonl(path: str | os.PathLike, schema: Schema | None = None) -> Iterator[dict]:
    """Yield the records of a JSONL file, validating each; blank lines are skipped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{where}: malformed JSON ({e.msg} at column {e.colno})") from None
            yield validate_record(record, schema, where) if schema is not None else record


def read_jsonl(path: str | os.PathLike, schema: Schema | None = None, *, allow_empty: bool = False) -> list[dict]:
    records = list(iter_jsonl(path, schema))
    if not records and not allow_empty:
        raise DataError(f"{path}: no records (an empty file cannot feed a stage)")
    return records


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; it replaces `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp makes 0600 files; give the result the mode a plain open() would (0666 & ~umask)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        with tmp_path.open("rb+") as f:  # on disk before the rename: a crash leaves old or new, never half
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_jsonl_atomic(path: str | os.PathLike, records: Iterable[Mapping]) -> int:
    n = 0
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            n += 1
    return n


def reuse_or_reset(folder: str | os.PathLike, identity: dict, *, record: str, keep: tuple[str, ...] = ()) -> bool:
    """Let `folder` hold only outputs made under `identity`, so that stages may skip what exists.

    If it holds anything made under another identity, or under none recorded, everything but the
    names in `keep` is removed. `identity` is then recorded in `folder/record`. Returns True on reset.
    """
    folder = Path(folder)
    path = folder / record
    made_with = json.loads(path.read_text()) if path.exists() else None
    reset = folder.is_dir() and made_with != identity and any(p.name not in keep for p in folder.iterdir())
    if reset:
        log.warning("%s was made with other settings: starting it afresh", folder)
        for item in folder.iterdir():
            if item.name not in keep:
                shutil.rmtree(item) if item.is_dir() else item.unlink()
    if not path.exists():
        write_json_atomic(path, identity)
    return reset
