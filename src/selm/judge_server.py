"""A real OpenAI-compatible chat-completions server on 127.0.0.1: the judge tests' server, and the
fallback judge server that the rehearsal scale's judging stages start and stop.

It answers POST .../chat/completions from a scripted queue of replies (or, once the queue is empty,
from a `default` function of the request body), records every request it got (path, headers under lower-case
names, JSON body, tokens generated, how it ended), and counts requests in flight so tests can check a
concurrency limit. A request leaves the in-flight count before the last byte of its answer is written,
so a client cannot send its next request while the server still counts the old one. It is bounded:
use it as a context manager; it shuts down (and joins its thread) on exit.

A request with `"stream": true` is answered the way vLLM answers it: server-sent events, one chunk per
token (a reply's logprob tokens, else its text cut at whitespace), at most the request's max_tokens,
paced at `tokens_per_second` when given; a request without `stream` gets the whole answer once all
its tokens are generated at that pace. Every token generated is counted (`tokens_generated`), and
generation stops at the first token after the client hangs up, as vLLM aborts a request whose
connection closed. `Reply.delay` holds the first token back (queueing, prompt processing) and
`Reply.stall_after` goes silent after that many tokens until the client hangs up (a stuck server).

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
import re
import select
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
    delay: float = 0.0  # seconds before answering (streamed: before the first token), less if the client hangs up
    stall_after: int | None = None  # streamed: silent after this many tokens until the client hangs up
    stall: float = 60.0  # ... or for at most this many seconds, then go on


class ClientGone(ConnectionError):
    """The client closed its connection while its request was being answered."""


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


def stream_tokens(body: dict) -> tuple[list[str], list[dict | None], str]:
    """The tokens a streamed answer to this completion body sends, each one's logprobs entry (or None),
    and the finish reason: the choice's logprob tokens if it has them, else its text cut before each
    run of whitespace."""
    if not body.get("choices"):
        return [], [], "stop"
    choice = body["choices"][0]
    entries = (choice.get("logprobs") or {}).get("content") or []
    if entries:
        return [e["token"] for e in entries], list(entries), choice.get("finish_reason", "stop")
    pieces = re.findall(r"\s*\S+|\s+$", choice["message"].get("content") or "")
    return pieces, [None] * len(pieces), choice.get("finish_reason", "stop")


def _chunk(body: dict, delta: dict, logprobs: dict | None = None, finish: str | None = None) -> bytes:
    choice = {"index": 0, "delta": delta, "logprobs": None if logprobs is None else {"content": [logprobs]},
              "finish_reason": finish}
    event = {"id": body.get("id", "chatcmpl-test"), "object": "chat.completion.chunk", "created": 0,
             "model": body.get("model", "judge"), "choices": [choice]}
    return b"data: " + json.dumps(event).encode() + b"\n\n"


class JudgeServer:
    def __init__(self, default: Callable[[dict], Reply] | None = None, port: int = 0,
                 tokens_per_second: float | None = None):
        self.default = default
        self.port = port  # 0: any free port
        self.tokens_per_second = tokens_per_second  # streamed answers' pace (None: as fast as it can)
        self.requests: list[dict] = []
        self.max_in_flight = 0
        self.tokens_generated = 0
        self.handler_errors: list[str] = []
        self._script: deque[Reply] = deque()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
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

    def wait_in_flight(self, n: int, timeout: float) -> bool:
        """Block until at least `n` requests are in flight at once (or have been); False after `timeout` s."""
        with self._changed:
            return self._changed.wait_for(lambda: self.max_in_flight >= n, timeout)

    def wait_idle(self, timeout: float, requests: int = 0) -> bool:
        """Block until at least `requests` requests have arrived and none is being answered (every
        hang-up noticed); False after `timeout` s. A client may hang up before the server has read its
        request: the request still arrives, later."""
        with self._changed:
            return self._changed.wait_for(lambda: len(self.requests) >= requests and self._in_flight == 0, timeout)

    def _enter(self, record: dict) -> None:
        with self._changed:
            self.requests.append(record)
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
            self._changed.notify_all()

    def _leave(self, record: dict, outcome: str) -> None:
        with self._changed:
            if "outcome" not in record:  # once per request
                record["outcome"] = outcome
                self._in_flight -= 1
                self._changed.notify_all()

    def _generated(self, record: dict) -> None:
        with self._lock:
            record["tokens"] += 1
            self.tokens_generated += 1

    def __enter__(self) -> "JudgeServer":
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's naming)
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                record = {"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body,
                          "tokens": 0}
                server._enter(record)
                try:
                    reply = server._next(body) if self.path.endswith("/chat/completions") else error_reply(404)
                    if body.get("stream") and reply.status == 200:
                        self._stream(reply, body, record)
                    else:
                        self._wait(reply.delay)
                        if reply.status == 200:
                            for _ in self._generate(reply, body, record):  # the whole answer, then its body
                                pass
                        self._answer(reply, record)
                except (ClientGone, BrokenPipeError, ConnectionResetError):  # also while writing the headers
                    server._leave(record, "client hung up")
                finally:
                    server._leave(record, "error")  # a no-op unless answering failed

            def _wait(self, seconds: float) -> None:
                """Sleep `seconds` (0: only look), or raise ClientGone as soon as the client hangs up."""
                if select.select([self.connection], [], [], max(0.0, seconds))[0]:
                    try:
                        gone = self.connection.recv(1, socket.MSG_PEEK) == b""
                    except ConnectionError:
                        gone = True
                    if gone:
                        raise ClientGone()
                    time.sleep(seconds)  # a client sent more than its request: just wait

            def _write(self, data: bytes) -> None:
                try:
                    self.wfile.write(data)
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError) as e:
                    raise ClientGone() from e

            def _answer(self, reply: Reply, record: dict) -> None:
                data = json.dumps(reply.body).encode()
                self.send_response(reply.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                server._leave(record, "answered")  # before the client can have the whole answer
                self._write(data)

            def _generate(self, reply: Reply, body: dict, record: dict):
                """Yield (token, logprobs entry) as each is generated: paced, counted, stopped by a hang-up."""
                tokens, logprobs, finish = stream_tokens(reply.body)
                limit = body.get("max_tokens") or body.get("max_completion_tokens")
                if limit is not None and len(tokens) > limit:
                    tokens, logprobs, finish = tokens[:limit], logprobs[:limit], "length"
                record["finish_reason"] = finish
                gap = 1.0 / server.tokens_per_second if server.tokens_per_second else 0.0
                for k, (token, entry) in enumerate(zip(tokens, logprobs)):
                    if k == reply.stall_after:
                        self._wait(reply.stall)
                    self._wait(gap)
                    server._generated(record)
                    yield token, entry

            def _stream(self, reply: Reply, body: dict, record: dict) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()  # HTTP/1.0: the stream ends when the connection closes
                self._wait(reply.delay)
                if not reply.body.get("choices"):
                    self._write(b'data: {"id": "chatcmpl-test", "object": "chat.completion.chunk", "created": 0, '
                                b'"model": "judge", "choices": []}\n\n')
                first = True
                for token, entry in self._generate(reply, body, record):
                    delta = {"role": "assistant", "content": token} if first else {"content": token}
                    self._write(_chunk(body, delta, entry))
                    first = False
                if reply.body.get("choices"):
                    self._write(_chunk(body, {"role": "assistant", "content": ""} if first else {},
                                       finish=record["finish_reason"]))
                server._leave(record, "answered")  # before the client can have the whole answer
                self._write(b"data: [DONE]\n\n")

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
