"""An LLM judge over any OpenAI-compatible chat-completions endpoint (GPT-4 Turbo, GPT-4, a local vLLM).

- AlpacaEval: alpaca_eval's `weighted_alpaca_eval_gpt4_turbo` annotator reproduced request for
  request (see alpaca_prompt.py): one answer token, preference from the logprobs of 'm' / 'M'.
- MT-Bench: FastChat's single-answer prompts and rating parser (see mt_bench_prompt.py).

`model=None` means "the protocol's own judge model": the annotator config's (gpt-4-1106-preview)
for AlpacaEval, 'gpt-4' for MT-Bench, as in the paper.

The API key is read once from the environment variable named by `api_key_env` and handed to the
client; it is never stored on this object, logged, or written (the cache holds verdicts only).

Every request is streamed and given up only on silence (streaming.py: a connect, a first-token and a
between-tokens allowance), so a slow server is waited for as long as it keeps sending. A request given
up on has its connection closed, which stops the server's generation, before it is asked again. The
client's own retries are off so that ours are the only ones: on 429, 5xx, silence, a cut stream and
connection errors we retry with exponential backoff, at most `max_attempts` requests and no new one
after `max_seconds`; other HTTP errors (400, 401, 404) are configuration mistakes and raise at once.
`sleep` and `clock` are injectable so tests do not wait.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai

from selm.judges.reachable import check_local_server

from . import alpaca_prompt, mt_bench_prompt
from .base import Annotation, Judge, Rating, SingleItem
from .streaming import StreamIncomplete, StreamLimits, merge_chunks

log = logging.getLogger(__name__)

MT_BENCH_MODEL = "gpt-4"
_D = StreamLimits()


class JudgeUnavailable(RuntimeError):
    """The endpoint kept failing with retryable errors for all allowed attempts (or time)."""


class JudgeSilent(TimeoutError):
    """A streamed request sent nothing for longer than its allowance; its connection was closed."""


def _run(make_coroutine: Callable):
    """Run a coroutine to completion from synchronous code, also where this thread already runs a loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make_coroutine())
    with ThreadPoolExecutor(max_workers=1) as thread:
        return thread.submit(lambda: asyncio.run(make_coroutine())).result()


class OpenAIJudge(Judge):
    name = "openai"

    def __init__(
        self,
        *,
        base_url: str,
        model: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        connect_timeout: float = _D.connect_timeout,
        first_token_timeout: float = _D.first_token_timeout,
        silence_timeout: float = _D.silence_timeout,
        max_attempts: int = _D.max_attempts,
        max_seconds: float = _D.max_seconds,
        backoff: float = _D.backoff,
        max_backoff: float = _D.max_backoff,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        concurrency: int = 4,
        annotator: str = "weighted_alpaca_eval_gpt4_turbo",
        order_seed: int = 0,
        **base,
    ):
        if "timeout" in base:
            raise ValueError("judge.timeout (one timeout for a whole request) is replaced by judge.connect_timeout, "
                             "judge.first_token_timeout and judge.silence_timeout (see conf/judge/openai.yaml)")
        super().__init__(concurrency=concurrency, **base)
        self.limits = StreamLimits(connect_timeout, first_token_timeout, silence_timeout, max_attempts, max_seconds,
                                   backoff, max_backoff)
        if api_key_env not in os.environ:
            raise KeyError(f"the judge's API key is read from the environment variable {api_key_env}, which is not set")
        check_local_server(base_url)  # a judge on this machine that is down fails here, before any work
        self.base_url, self.model = base_url, model
        self._sleep, self._clock = sleep, clock
        self.annotator = alpaca_prompt.load_annotator(annotator)
        self.order_seed = order_seed
        key, wait = os.environ[api_key_env], httpx.Timeout(None, connect=connect_timeout, write=connect_timeout,
                                                           pool=connect_timeout)
        # A client per request: an async client belongs to the event loop of the request's thread.
        self._new_client = lambda: openai.AsyncOpenAI(base_url=base_url, api_key=key, timeout=wait, max_retries=0)

    def __repr__(self) -> str:
        return f"OpenAIJudge(base_url={self.base_url!r}, model={self.model!r})"

    def model_for(self, kind: str) -> str:
        return self.model or (self.annotator.model_name if kind == "pairwise" else MT_BENCH_MODEL)

    def identity(self, kind: str) -> str:
        prompt = self.annotator.version if kind == "pairwise" else mt_bench_prompt.prompts_version()
        if kind == "pairwise":
            prompt += f":order_seed={self.order_seed}"
        return f"openai|{self.model_for(kind)}|{prompt}"

    async def _stream(self, kwargs: dict) -> dict | None:
        """One streamed chat completion's first choice (streaming.merge_chunks). The first chunk must
        come within first_token_timeout of the start, each next one within silence_timeout of the last;
        otherwise JudgeSilent, after the connection is closed (which stops the server's generation)."""
        limits, chunks = self.limits, []
        client = self._new_client()
        try:
            async with asyncio.timeout(limits.first_token_timeout) as deadline:
                stream = await client.chat.completions.create(stream=True, **kwargs)
                try:
                    async for chunk in stream:
                        chunks.append(chunk.model_dump())
                        deadline.reschedule(asyncio.get_running_loop().time() + limits.silence_timeout)
                finally:
                    await stream.close()
        except TimeoutError:
            if chunks:
                raise JudgeSilent(f"no token for {limits.silence_timeout:g} s after {len(chunks)} chunks "
                                  "(judge.silence_timeout)") from None
            raise JudgeSilent(f"no first token within {limits.first_token_timeout:g} s "
                              "(judge.first_token_timeout)") from None
        finally:
            await client.close()
        return merge_chunks(chunks)

    def _request(self, **kwargs) -> dict | None:
        """The first choice of one chat completion (None: the server sent no choice), retried on 429 / 5xx /
        silence / cut streams / connection errors with exponential backoff, within max_attempts and max_seconds."""
        limits, start = self.limits, self._clock()
        for attempt in range(1, limits.max_attempts + 1):
            try:
                return _run(lambda: self._stream(kwargs))
            except openai.APIStatusError as e:
                if e.status_code != 429 and e.status_code < 500:
                    raise
                reason = f"HTTP {e.status_code}"
            except openai.APIConnectionError as e:  # includes APITimeoutError (connecting, sending)
                reason = type(e).__name__
            except JudgeSilent as e:
                self._count("timeouts")
                reason = str(e)
            except (StreamIncomplete, httpx.TransportError, openai.APIError) as e:  # cut, or an error event
                reason = f"{type(e).__name__}: {e}"
            self._count("retries")
            if attempt == limits.max_attempts:
                raise JudgeUnavailable(f"{self.base_url}: gave up after {limits.max_attempts} attempts; "
                                       f"last error: {reason}")
            delay, spent = limits.delay(attempt), self._clock() - start
            if spent + delay > limits.max_seconds:
                raise JudgeUnavailable(f"{self.base_url}: gave up after {attempt} attempts in {spent:.0f} s "
                                       f"(judge.max_seconds={limits.max_seconds:g}); last error: {reason}")
            log.warning("judge request failed (%s), attempt %d/%d; retrying in %.1fs",
                        reason, attempt, limits.max_attempts, delay)
            self._sleep(delay)

    def _pairwise(self, instruction: str, output_1: str, output_2: str) -> Annotation:
        switched = alpaca_prompt.is_switched(instruction, self.order_seed)
        shown = (output_2, output_1) if switched else (output_1, output_2)
        choice = self._request(
            model=self.model_for("pairwise"),
            messages=alpaca_prompt.messages(self.annotator, instruction, *shown),
            **self.annotator.request,
        )
        if choice is None:
            return Annotation(None, raw="", error="the server's response has no choices")
        text = choice.get("message", {}).get("content") or ""
        preference, error = alpaca_prompt.parse_preference(choice, self.annotator)
        if error is not None:
            log.warning("unreadable AlpacaEval judgment (%s)", error)
        elif switched:
            preference = 3.0 - preference
        tops = (choice.get("logprobs") or {}).get("content") or [{}]
        top = {t["token"]: t["logprob"] for t in tops[0].get("top_logprobs", []) if "token" in t}
        return Annotation(preference, raw=text, error=error, meta={"switched": switched, "top_logprobs": top})

    def _single(self, item: SingleItem) -> Rating:
        prompt, messages = mt_bench_prompt.build_messages(
            item.question_turns, item.answer_turns, item.reference, item.turn
        )
        choice = self._request(model=self.model_for("single"), messages=messages, **mt_bench_prompt.DECODING)
        if choice is None:
            return Rating(None, raw="", error="the server's response has no choices")
        text = choice["message"]["content"] or ""
        score, error = mt_bench_prompt.parse_rating(text)
        if error is not None:
            log.warning("unreadable MT-Bench judgment (%s)", error)
        return Rating(score, raw=text, error=error, meta={"prompt": prompt})
