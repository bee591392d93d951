"""A crash-safe annotation cache: one JSONL line per judgment, appended and fsynced as it arrives.

API judgments cost money, so each one is written the moment it exists (not at the end of a run): a
crash loses at most the request in flight. On restart the file is read back and every judgment in it
is reused, so nothing is judged twice. The key hashes (judge identity, kind, inputs); the identity
names the judge, its model and its prompt version, so changing any of them misses the cache instead
of silently reusing another judge's verdicts.

A crash in the middle of an append can leave a torn last line; reading repairs that (with a
warning naming the file) by cutting the torn tail, since its judgment was never complete. A bad line
anywhere else is corruption and raises. One cache file per process: appends from several processes
are not coordinated.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from selm.io import DataError

log = logging.getLogger(__name__)


def cache_key(identity: str, kind: str, *payload: Any) -> str:
    """sha256 of the JSON of (identity, kind, payload...): stable across runs and processes."""
    blob = json.dumps([identity, kind, *payload], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class AnnotationCache:
    def __init__(self, path: str | os.PathLike, *, durable: bool = True):
        self.path = Path(path)
        self.durable = durable  # fsync each append; off only for cheap judges
        self._lock = threading.Lock()
        self._entries: dict[str, dict] = {}
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        data = self.path.read_bytes()
        lines = data.split(b"\n")
        complete, tail = lines[:-1], lines[-1]  # tail is b"" when the file ends with a newline
        for lineno, line in enumerate(complete, start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{self.path}:{lineno}: corrupt cache line ({e.msg})") from None
            if not isinstance(entry, dict) or "key" not in entry or "result" not in entry:
                raise DataError(f"{self.path}:{lineno}: cache line lacks 'key' or 'result'")
            self._entries[entry["key"]] = entry
        if tail.strip():
            log.warning(
                "%s: dropping a torn last line (%d bytes) left by an interrupted append",
                self.path, len(tail),
            )
            with self.path.open("r+b") as f:
                f.truncate(len(data) - len(tail))

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def get(self, key: str) -> dict | None:
        """The stored result dict for `key`, or None."""
        entry = self._entries.get(key)
        return None if entry is None else entry["result"]

    def put(self, key: str, identity: str, kind: str, result: dict) -> None:
        entry = {"key": key, "judge": identity, "kind": kind, "time": round(time.time(), 3), "result": result}
        line = (json.dumps(entry, ensure_ascii=False) + "\n").encode("utf-8")
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # One write of one whole line in append mode, then fsync: the line is either there or torn.
            with self.path.open("ab") as f:
                f.write(line)
                f.flush()
                if self.durable:
                    os.fsync(f.fileno())
            self._entries[key] = entry
