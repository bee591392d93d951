"""Is a judge URL on this machine served? A bottom-floor check shared by the API judge (before any
work) and the local fallback judge server (`selm.judge_server`), so neither imports the other."""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

LOOPBACK = ("127.0.0.1", "localhost")


def is_listening(port: int, host: str = "127.0.0.1", timeout: float = 1.0) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        return s.connect_ex((host, port)) == 0


class JudgeServerDown(ConnectionError):
    """A judge URL on this machine has no server listening."""


def check_local_server(base_url: str) -> None:
    """A judge URL on this machine (127.0.0.1, localhost) must have a server listening before any work
    is done; remote APIs are left to the judge's retries."""
    url = urlsplit(base_url)
    if url.hostname in LOOPBACK and not is_listening(url.port or (443 if url.scheme == "https" else 80)):
        raise JudgeServerDown(f"judge.base_url={base_url}: no judge server is listening there (start one, e.g. "
                              "python -m selm.judge_server -- COMMAND, or point judge.base_url at yours)")
