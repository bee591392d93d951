"""An LLM judge over any OpenAI-compatible chat-completions endpoint (GPT-4 Turbo, GPT-4, a local vLLM).

- AlpacaEval: alpaca_eval's `weighted_alpaca_eval_gpt4_turbo` annotator reproduced request for
  request (see alpaca_prompt.py): one answer token, preference from the logprobs of 'm' / 'M'.
- MT-Bench: FastChat's single-answer prompts and rating parser (see mt_bench_prompt.py).

`model=None` means "the protocol's own judge model": the annotator config's (gpt-4-1106-preview)
for AlpacaEval, 'gpt-4' for MT-Bench, as in the paper.

The API key is read once from the environment variable named by `api_key_env` and handed to the
client; it is never stored on this object, logged, or written (the cache holds verdicts only).
The client's own retries are off so that ours are the only ones: on 429, 5xx, timeouts and
connection errors we retry with exponential backoff (`backoff * 2**(attempt-1)`, capped), at most
`max_attempts` requests; other HTTP errors (400, 401, 404) are configuration mistakes and raise at
once. `sleep` is injectable so tests do not wait.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

import openai

from selm.judges.reachable import check_local_server

from . import alpaca_prompt, mt_bench_prompt
from .base import Annotation, Judge, Rating, SingleItem

log = logging.getLogger(__name__)

MT_BENCH_MODEL = "gpt-4"


class JudgeUnavailable(RuntimeError):
    """The endpoint kept failing with retryable errors for all allowed attempts."""


class OpenAIJudge(Judge):
    name = "openai"

    def __init__(
        self,
        *,
        base_url: str,
        model: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        timeout: float = 120.0,
        max_attempts: int = 6,
        backoff: float = 1.0,
        max_backoff: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
        concurrency: int = 4,
        annotator: str = "weighted_alpaca_eval_gpt4_turbo",
        order_seed: int = 0,
        **base,
    ):
        super().__init__(concurrency=concurrency, **base)
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
        if api_key_env not in os.environ:
            raise KeyError(f"the judge's API key is read from the environment variable {api_key_env}, which is not set")
        check_local_server(base_url)  # a judge on this machine that is down fails here, before any work
        self.base_url, self.model = base_url, model
        self.max_attempts, self.backoff, self.max_backoff, self._sleep = max_attempts, backoff, max_backoff, sleep
        self.annotator = alpaca_prompt.load_annotator(annotator)
        self.order_seed = order_seed
        self._client = openai.OpenAI(
            base_url=base_url, api_key=os.environ[api_key_env], timeout=timeout, max_retries=0
        )

    def __repr__(self) -> str:
        return f"OpenAIJudge(base_url={self.base_url!r}, model={self.model!r})"

    def model_for(self, kind: str) -> str:
        return self.model or (self.annotator.model_name if kind == "pairwise" else MT_BENCH_MODEL)

    def identity(self, kind: str) -> str:
        prompt = self.annotator.version if kind == "pairwise" else mt_bench_prompt.prompts_version()
        if kind == "pairwise":
            prompt += f":order_seed={self.order_seed}"
        return f"openai|{self.model_for(kind)}|{prompt}"

    def _request(self, **kwargs):
        """One chat completion, retried on 429 / 5xx / timeouts with exponential backoff."""
        for attempt in range(1, self.max_attempts + 1):
            try:
                return self._client.chat.completions.create(**kwargs)
            except openai.APIConnectionError as e:  # includes APITimeoutError
                reason = type(e).__name__
            except openai.APIStatusError as e:
                if e.status_code != 429 and e.status_code < 500:
                    raise
                reason = f"HTTP {e.status_code}"
            self._count("retries")
            if attempt == self.max_attempts:
                raise JudgeUnavailable(
                    f"{self.base_url}: gave up after {self.max_attempts} attempts; last error: {reason}"
                )
            delay = min(self.max_backoff, self.backoff * 2 ** (attempt - 1))
            log.warning("judge request failed (%s), attempt %d/%d; retrying in %.1fs",
                        reason, attempt, self.max_attempts, delay)
            self._sleep(delay)

    def _pairwise(self, instruction: str, output_1: str, output_2: str) -> Annotation:
        switched = alpaca_prompt.is_switched(instruction, self.order_seed)
        shown = (output_2, output_1) if switched else (output_1, output_2)
        response = self._request(
            model=self.model_for("pairwise"),
            messages=alpaca_prompt.messages(self.annotator, instruction, *shown),
            **self.annotator.request,
        )
        if not response.choices:
            return Annotation(None, raw="", error="the server's response has no choices")
        choice = response.choices[0].model_dump()
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
        response = self._request(model=self.model_for("single"), messages=messages, **mt_bench_prompt.DECODING)
        if not response.choices:
            return Rating(None, raw="", error="the server's response has no choices")
        text = response.choices[0].message.content or ""
        score, error = mt_bench_prompt.parse_rating(text)
        if error is not None:
            log.warning("unreadable MT-Bench judgment (%s)", error)
        return Rating(score, raw=text, error=error, meta={"prompt": prompt})
