"""Judges (GPT-4's place) by name: `get_judge("oracle", ...)`, `get_judge("openai", base_url=...)`.

Every judge answers `pairwise(...) -> Annotation` (AlpacaEval) and `single(...) -> Rating`
(MT-Bench) and caches each judgment as it arrives (see base.py, cache.py). PairRM is a ranker,
not an eval judge, and lives in selm.rankers. Modules are imported on first use so that the oracle
path never imports openai or alpaca_eval.
"""

from __future__ import annotations

import importlib

from .base import TIE, Annotation, Judge, Rating, SingleItem
from .cache import AnnotationCache, cache_key

# name -> "module:Class", imported lazily
JUDGES: dict[str, str] = {
    "oracle": "selm.judges.oracle:OracleJudgeAdapter",
    "openai": "selm.judges.openai_judge:OpenAIJudge",
}


def get_judge(name: str, **cfg) -> Judge:
    """The judge registered as `name`, built with `cfg`; an unknown name raises KeyError."""
    if name not in JUDGES:
        raise KeyError(f"unknown judge {name!r}; known judges: {sorted(JUDGES)}")
    module, cls = JUDGES[name].split(":")
    return getattr(importlib.import_module(module), cls)(**cfg)


__all__ = [
    "JUDGES",
    "TIE",
    "Annotation",
    "AnnotationCache",
    "Judge",
    "Rating",
    "SingleItem",
    "cache_key",
    "get_judge",
]
