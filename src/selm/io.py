"""File hand-offs between stages: JSONL validated on read, every output written atomically.

Every arrow of the pipeline is a file. A reader names the file, line and key of the first bad
record; a writer goes through a temporary file in the same folder and `os.replace`, so a crash
never leaves a half-written file under the final name. Outputs shared between processes are
filled under an exclusive lock and hard-linked where they are needed (`exclusive`, `link_copy`).
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


# A record longer than this is refused (a runaway line, or a whole file without line breaks); the
# longest UltraFeedback record is ~0.1 MB.
MAX_RECORD_BYTES = 16 * 2**20


def _strict_object(pairs: list[tuple[str, Any]]) -> dict:
    keys = [k for k, _ in pairs]
    dup = next((k for k in keys if keys.count(k) > 1), None)
    if dup is not None:
        raise ValueError(f"duplicate key '{dup}'")
    return dict(pairs)


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def loads_strict(text: str) -> Any:
    """json.loads that refuses what Python's json lets through: NaN / Infinity and duplicate keys."""
    return json.loads(text, object_pairs_hook=_strict_object, parse_constant=_no_constant)


def _decode_line(raw: bytes, where: str, max_bytes: int) -> str:
    if len(raw) > max_bytes:
        raise DataError(f"{where}: record longer than {max_bytes} bytes (a missing line break?)")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{where}: not UTF-8 (byte {e.start + 1} of the line)") from None


def iter_jsonl(path: str | os.PathLike, schema: Schema | None = None, *,
               max_bytes: int = MAX_RECORD_BYTES) -> Iterator[dict]:
    """Yield the records of a JSONL file, validating each; blank lines are skipped.

    Read as common tools write it: a UTF-8 byte-order mark at the start and Windows line ends are
    accepted, any non-ASCII UTF-8 text is kept as is. Refused with file:line named: bytes that are not
    UTF-8, a line longer than `max_bytes`, malformed JSON, NaN / Infinity, duplicate keys."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    with path.open("rb") as f:
        for lineno, raw in enumerate(iter(lambda: f.readline(max_bytes + 1), b""), start=1):
            where = f"{path}:{lineno}"
            line = _decode_line(raw, where, max_bytes)
            if lineno == 1:
                line = line.removeprefix("\ufeff")
            if not line.strip():
                continue
            try:
                record = loads_strict(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{where}: malformed JSON ({e.msg} at column {e.colno})") from None
            except ValueError as e:
                raise DataError(f"{where}: {e}") from None
            yield validate_record(record, schema, where) if schema is not None else record


def read_jsonl(path: str | os.PathLike, schema: Schema | None = None, *, allow_empty: bool = False,
               max_bytes: int = MAX_RECORD_BYTES) -> list[dict]:
    records = list(iter_jsonl(path, schema, max_bytes=max_bytes))
    if not records and not allow_empty:
        raise DataError(f"{path}: no records (an empty file cannot feed a stage)")
    return records


def read_json(path: str | os.PathLike) -> Any:
    """One JSON document (a BOM is accepted); bad bytes or JSON are refused naming file:line."""
    path = Path(path)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not UTF-8") from None
    try:
        return loads_strict(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
    except ValueError as e:
        raise DataError(f"{path}: {e}") from None


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



@contextlib.contextmanager
def exclusive(lock_path: str | os.PathLike) -> Iterator[None]:
    """An exclusive advisory lock (flock) on `lock_path` held for the block; the kernel drops it if
    the holder dies, so a crashed holder never leaves the others waiting."""
    import fcntl

    lock_path = Path(lock_path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def link_copy(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """`dst` becomes a copy of file or folder `src` made of hard links (a plain copy across file
    systems), built beside `dst` and renamed into place, so it appears whole or not at all."""
    src, dst = Path(src), Path(dst)
    tmp = dst.with_name(f".{dst.name}.linking")
    if tmp.is_dir():
        shutil.rmtree(tmp)
    elif tmp.exists():
        tmp.unlink()

    def link(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    if src.is_dir():
        shutil.copytree(src, tmp, copy_function=link)
    else:
        link(str(src), str(tmp))
    if dst.is_dir():
        shutil.rmtree(dst)
    os.replace(tmp, dst)
