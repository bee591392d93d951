"""A real OpenAI-compatible chat-completions server on 127.0.0.1: the judge tests' server, and the
fallback judge server that the rehearsal scale's judging stages start and stop.

It answers POST .../chat/completions from a scripted queue of replies (or, once the queue is empty,
from a `default` function of the request body), records every request it got (path, headers under lower-case
names, JSON body), and counts requests in flight so tests can check a concurrency limit. It is bounded: use it
as a context manager; it shuts down (and joins its thread) on exit.

As a stage wrapper it serves `hash_judge` at the URL of the composed config's `judge.base_url`
(127.0.0.1 only) while one command runs, with the key variable `judge.api_key_env` set for it:

    python -m selm.judge_server --config-name loop_rehearsal [judge.base_url=...] -- python -m selm.cli.stage experiment ...

`hash_judge` is a judge in protocol only: it answers the AlpacaEval request with logprobs for 'm'
and 'M' and the MT-Bench request with a `[[rating]]`, both drawn from a sha256 of the request's
messages (so the same request always gets the same verdict). It exercises requests, parsers, caches
and metrics end to end; its verdicts carry no information about quality. A real local judge is any
OpenAI-compatible server at `judge.base_url` (for instance vLLM's, started by hand).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from selm.judges.reachable import LOOPBACK, JudgeServerDown, check_local_server, is_listening  # noqa: F401 (re-exported)


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
    def __init__(self, default: Callable[[dict], Reply] | None = None, port: int = 0):
        self.default = default
        self.port = port  # 0: any free port
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

        self._server = Server(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def bodies(self) -> list[dict]:
        return [r["body"] for r in self.requests]


# ---------------------------------------------------------------- the fallback judge and the stage wrapper

def _digest(body: dict) -> int:
    return int(hashlib.sha256(json.dumps(body.get("messages"), sort_keys=True).encode()).hexdigest()[:12], 16)


def hash_judge(body: dict) -> Reply:
    """A verdict that depends only on the request's messages (see the module docstring): AlpacaEval
    requests (logprobs asked) get P('m') in [0.05, 0.95]; MT-Bench requests a rating 1..10."""
    h = _digest(body)
    if body.get("logprobs"):
        p = 0.05 + 0.9 * (h % 1001) / 1000
        return logprob_reply({"m": math.log(p), "M": math.log(1 - p)})
    return text_reply(f"The answer is judged by a hash of the request. Rating: [[{1 + h % 10}]]")


def loopback_port(base_url: str) -> int:
    """The port of a judge URL on this machine; any other host is an error naming the URL."""
    url = urlsplit(base_url)
    if url.hostname not in LOOPBACK or url.port is None:
        raise ValueError(f"judge.base_url={base_url}: the local judge server serves 127.0.0.1:<port> only")
    return url.port


def serve_while(command: list[str], base_url: str, api_key_env: str) -> int:
    """Run `command` with the fallback judge serving `base_url`; return the command's exit status.
    The server stops when the command ends, however it ends."""
    port = loopback_port(base_url)
    if is_listening(port):
        raise RuntimeError(f"{base_url}: something already listens on port {port}; stop it or change judge.base_url")
    env = {**os.environ, api_key_env: os.environ.get(api_key_env, "local-judge")}
    with JudgeServer(default=hash_judge, port=port) as server:
        print(f"judge server (hash_judge) on {server.base_url} for: {' '.join(command)}", flush=True)
        done = subprocess.run(command, env=env, check=False)
    return done.returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m selm.judge_server",
                                     description="run one command with the fallback judge server at judge.base_url")
    parser.add_argument("--config-name", default="loop_rehearsal", help="entry config whose judge section is served")
    parser.add_argument("rest", nargs=argparse.REMAINDER, help="[judge.base_url=...] -- COMMAND ...")
    args = parser.parse_args(argv)
    if "--" not in args.rest or args.rest.index("--") == len(args.rest) - 1:
        parser.error("no command given (python -m selm.judge_server [OVERRIDES] -- COMMAND ...)")
    split = args.rest.index("--")
    overrides, command = args.rest[:split], args.rest[split + 1:]
    from selm.config import compose_config

    judge = compose_config(args.config_name, overrides).judge
    try:
        return serve_while(command, judge.base_url, judge.api_key_env)
    except (ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
