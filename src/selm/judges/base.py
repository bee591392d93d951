"""The judge interface every evaluator uses, whatever plays GPT-4's part.

Two questions are asked of a judge:
- `pairwise(instruction, output_1, output_2) -> Annotation`: a preference on alpaca_eval's scale,
  1 = output_1 wins, 2 = output_2 wins, fractional values allowed (1.5 is a tie);
- `single(question_turns, answer_turns, reference=None, turn=1|2, run=0) -> Rating`: MT-Bench's
  1..10 grade of answer `turn`; `run` numbers repeated judge runs (the paper averages 3).

A judgment that cannot be read (a malformed judge answer) comes back with `preference`/`score`
None and `error` saying why: it is reported and left out of the metrics, never scored.

The base class owns what all judges share: the cache (every judgment stored the moment it exists,
reused on restart), alpaca_eval's rule that identical outputs tie without asking the judge, and a
thread pool of `concurrency` workers for batches. Subclasses implement `_pairwise`, `_single` and
`identity(kind)` (judge name + model + prompt version: the cache key's first part).
"""

from __future__ import annotations

import os
import threading
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

from .cache import AnnotationCache, cache_key

TIE = 1.5


@dataclass(frozen=True)
class Annotation:
    preference: float | None  # alpaca_eval scale: 1 output_1 wins, 2 output_2 wins; None on error
    raw: str  # what the judge said
    error: str | None = None
    meta: dict = field(default_factory=dict)  # judge-specific detail (logprobs, order switch)
    cached: bool = False  # read back from the cache rather than judged now

    @property
    def ok(self) -> bool:
        return self.preference is not None


@dataclass(frozen=True)
class Rating:
    score: float | None  # 1..10; None on error
    raw: str
    error: str | None = None
    meta: dict = field(default_factory=dict)
    cached: bool = False

    @property
    def ok(self) -> bool:
        return self.score is not None


R = TypeVar("R", Annotation, Rating)


def _to_record(result: Annotation | Rating) -> dict:
    record = asdict(result)
    record.pop("cached")
    return record


@dataclass(frozen=True)
class SingleItem:
    """One MT-Bench grading request (a batch of these goes through `Judge.single_many`)."""

    question_turns: Sequence[str]
    answer_turns: Sequence[str]
    reference: Sequence[str] | None = None
    turn: int = 1
    run: int = 0


class Judge(ABC):
    name: str = "judge"
    # fsync every cached judgment (paid API calls); a judge that costs nothing to ask again turns it off
    durable_cache: bool = True

    def __init__(
        self,
        *,
        cache: AnnotationCache | str | os.PathLike | None = None,
        concurrency: int = 1,
        retry_errors: bool = False,
    ):
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        self.cache = (AnnotationCache(cache, durable=self.durable_cache) if isinstance(cache, (str, os.PathLike))
                      else cache)
        self.concurrency = concurrency
        # A cached malformed answer is reused by default (it was paid for); True asks again.
        self.retry_errors = retry_errors
        self.stats: Counter[str] = Counter()
        self._stats_lock = threading.Lock()

    @abstractmethod
    def identity(self, kind: str) -> str:
        """'name|model|prompt-version' for `kind` ('pairwise' or 'single')."""

    @abstractmethod
    def _pairwise(self, instruction: str, output_1: str, output_2: str) -> Annotation: ...

    @abstractmethod
    def _single(self, item: SingleItem) -> Rating: ...

    def _count(self, what: str) -> None:
        with self._stats_lock:
            self.stats[what] += 1

    def _cached_call(self, cls: type[R], kind: str, payload: list, compute: Callable[[], R]) -> R:
        identity = self.identity(kind)
        key = cache_key(identity, kind, *payload)
        if self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None and (hit.get("error") is None or not self.retry_errors):
                self._count("cached")
                return cls(**hit, cached=True)
        result = compute()
        self._count("judged" if result.error is None else "errors")
        if self.cache is not None:
            self.cache.put(key, identity, kind, _to_record(result))
        return result

    def pairwise(self, instruction: str, output_1: str, output_2: str) -> Annotation:
        if output_1 == output_2:  # alpaca_eval ties identical outputs without asking the judge
            return Annotation(TIE, raw="identical outputs: a tie by rule, the judge was not asked")
        return self._cached_call(
            Annotation, "pairwise", [instruction, output_1, output_2],
            lambda: self._pairwise(instruction, output_1, output_2),
        )

    def single(
        self,
        question_turns: Sequence[str],
        answer_turns: Sequence[str],
        reference: Sequence[str] | None = None,
        turn: int = 1,
        run: int = 0,
    ) -> Rating:
        if turn not in (1, 2) or len(answer_turns) < turn or len(question_turns) < turn:
            raise ValueError(f"turn {turn} needs {turn} question and answer turns, got "
                             f"{len(question_turns)} and {len(answer_turns)}")
        item = SingleItem(list(question_turns[:turn]), list(answer_turns[:turn]),
                          None if reference is None else list(reference[:turn]), turn, run)
        payload = [item.question_turns, item.answer_turns, item.reference, turn, run]
        return self._cached_call(Rating, "single", payload, lambda: self._single(item))

    def _map(self, fn: Callable[[Any], R], items: Sequence[Any]) -> list[R]:
        """`fn` over items with `concurrency` threads. If one fails, the others still finish (and are
        cached) before the first error is raised."""
        if self.concurrency == 1 or len(items) < 2:
            return [fn(item) for item in items]
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            futures = [pool.submit(fn, item) for item in items]
        return [f.result() for f in futures]

    def pairwise_many(self, items: Sequence[tuple[str, str, str]]) -> list[Annotation]:
        """Annotations for (instruction, output_1, output_2) triples, in order."""
        return self._map(lambda t: self.pairwise(*t), items)

    def single_many(self, items: Sequence[SingleItem]) -> list[Rating]:
        return self._map(
            lambda i: self.single(i.question_turns, i.answer_turns, i.reference, i.turn, i.run), items
        )
