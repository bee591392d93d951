"""A real OpenAI-compatible chat-completions server on 127.0.0.1 for judge tests.

It answers POST .../chat/completions from a scripted queue of replies (or, once the queue is empty,
from a `default` function of the request body), records every request it got (path, headers under lower-case
names, JSON body), and counts requests in flight so tests can check a concurrency limit. It is bounded: use it
as a context manager; it shuts down (and joins its thread) on exit.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Reply:
    status: int = 200
    body: dict = field(default_factory=dict)
    delay: float = 0.0  # seconds to wait before answering (timeouts)


def _token(token: str, logprob: float) -> dict:
    return {"token": token, "bytes": list(token.encode()), "logprob": logprob}


def completion(text: str, top_logprobs: dict[str, float] | None = None, model: str = "judge") -> dict:
    """A chat.completion body; with `top_logprobs` (token -> logprob) it carries logprobs for one token."""
    choice = {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}
    if top_logprobs is not None:
        best = max(top_logprobs.values()) if top_logprobs else -1.0
        tops = [_token(t, lp) for t, lp in sorted(top_logprobs.items(), key=lambda kv: -kv[1])]
        choice["logprobs"] = {"content": [dict(_token(text, best), top_logprobs=tops)]}
    return {"id": "chatcmpl-test", "object": "chat.completion", "created": 0, "model": model,
            "choices": [choice], "usage": {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11}}


def logprob_reply(top_logprobs: dict[str, float], text: str | None = None) -> Reply:
    text = text if text is not None else max(top_logprobs, key=top_logprobs.get)
    return Reply(body=completion(text, top_logprobs))


def text_reply(text: str) -> Reply:
    return Reply(body=completion(text))


def error_reply(status: int, message: str = "injected error") -> Reply:
    return Reply(status=status, body={"error": {"message": message, "type": "test", "code": str(status)}})


class JudgeServer:
    def __init__(self, default: Callable[[dict], Reply] | None = None):
        self.default = default
        self.requests: list[dict] = []
        self.max_in_flight = 0
        self.handler_errors: list[str] = []
        self._script: deque[Reply] = deque()
        self._lock = threading.Lock()
        self._in_flight = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def push(self, *replies: Reply) -> None:
        with self._lock:
            self._script.extend(replies)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def _next(self, body: dict) -> Reply:
        with self._lock:
            if self._script:
                return self._script.popleft()
        if self.default is None:
            return error_reply(400, "the test server's script is exhausted")
        return self.default(body)

    def __enter__(self) -> "JudgeServer":
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's naming)
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                with server._lock:
                    server.requests.append({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body})
                    server._in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server._in_flight)
                try:
                    reply = server._next(body) if self.path.endswith("/chat/completions") else error_reply(404)
                    time.sleep(reply.delay)
                    data = json.dumps(reply.body).encode()
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                finally:
                    with server._lock:
                        server._in_flight -= 1

            def log_message(self, format, *args):  # keep test output clean; requests are recorded
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):
                # A client that timed out closes its socket; record it rather than print a traceback.
                import traceback

                server.handler_errors.append(traceback.format_exc(limit=1))

        self._server = Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def bodies(self) -> list[dict]:
        return [r["body"] for r in self.requests]
