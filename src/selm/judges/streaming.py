"""How long the API judge waits, and how a streamed chat completion is put back together.

A judge served by a slow machine (a local vLLM streams a few tokens per second per request) can
take minutes on one MT-Bench judgment (up to 2,048 tokens). No single request-wide timeout fits
both that and a fast API, and a request abandoned on such a timeout keeps the server generating
while a re-sent copy queues behind it. So the judge streams every request and gives up only on
silence:

- `connect_timeout`: to open the connection and send the request;
- `first_token_timeout`: from the start of the request (connecting and sending included) to the
  first streamed chunk (queueing and the prompt's processing);
- `silence_timeout`: between two chunks after that. A stream that keeps coming is never cut, however
  long it takes.

A request given up on has its connection closed, which is how an OpenAI-compatible server (vLLM's
included) learns to stop generating it; only then is it asked again, after a backoff. Retries are
bounded twice per judgment: `max_attempts` requests, and no new attempt once `max_seconds` have
passed since the first.
"""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True)
class StreamLimits:
    connect_timeout: float = 30.0
    first_token_timeout: float = 300.0
    silence_timeout: float = 60.0
    max_attempts: int = 6
    max_seconds: float = 3600.0
    backoff: float = 1.0  # seconds before the first retry, doubled for each next one
    max_backoff: float = 60.0

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"judge.{f.name} must be a number >= 0, got {value!r}")
        if self.max_attempts < 1:
            raise ValueError(f"judge.max_attempts must be >= 1, got {self.max_attempts}")
        for name in ("connect_timeout", "first_token_timeout", "silence_timeout"):
            if getattr(self, name) == 0:
                raise ValueError(f"judge.{name} must be > 0 (seconds)")

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt `attempt` (1-based): backoff * 2**(attempt-1), capped."""
        return min(self.max_backoff, self.backoff * 2 ** (attempt - 1))


class StreamIncomplete(RuntimeError):
    """The stream ended (or was cut) before the server said the completion was finished."""


def merge_chunks(chunks: list[dict]) -> dict | None:
    """The first choice of a streamed chat completion, rebuilt from its chunks (as dicts) in the
    shape of a non-streamed one: {"index", "finish_reason", "message": {"role", "content"},
    "logprobs": {"content": [...]} or None}. None when the server streamed no choice at all.
    A stream whose choice never got a finish_reason was cut short: StreamIncomplete."""
    if not chunks:
        raise StreamIncomplete("the server closed the stream before sending anything")
    role, parts, logprobs, finish, seen = None, [], [], None, False
    for chunk in chunks:
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            seen = True
            delta = choice.get("delta") or {}
            role = role or delta.get("role")
            parts.append(delta.get("content") or "")
            logprobs += (choice.get("logprobs") or {}).get("content") or []
            finish = choice.get("finish_reason") or finish
    if not seen:
        return None
    if finish is None:
        raise StreamIncomplete(f"the stream ended after {len(chunks)} chunks without a finish_reason")
    return {"index": 0, "finish_reason": finish, "message": {"role": role or "assistant", "content": "".join(parts)},
            "logprobs": {"content": logprobs} if logprobs else None}
