"""Rankers (PairRM's place in the loop), by name from config `ranker.name`.

A ranker orders candidate answers to one prompt, best first. Ties keep the input order, so with
candidates [y_ref, y_w, y_l] a tie goes to y_ref, as with the authors' PairRM call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from omegaconf import DictConfig


class Ranker(Protocol):
    def rank(self, record: dict, candidates: Sequence[str]) -> list[int]:
        """Indices of `candidates` from best to worst; `record` is the prompt's data row."""


def _oracle(cfg: DictConfig) -> Ranker:
    from selm.world import OracleRanker

    return OracleRanker(noise=cfg.noise, salt=cfg.salt)


def _pairrm(cfg: DictConfig) -> Ranker:
    from selm.pairrm import PairRMRanker

    return PairRMRanker(path=cfg.path, batch_size=cfg.batch_size, source_max_length=cfg.source_max_length,
                        candidate_max_length=cfg.candidate_max_length, device=cfg.device, dtype=cfg.dtype)


RANKERS: dict[str, Callable[[DictConfig], Ranker]] = {"oracle": _oracle, "pairrm": _pairrm}


def get_ranker(cfg: DictConfig) -> Ranker:
    if cfg.name not in RANKERS:
        raise KeyError(f"ranker.name={cfg.name!r} is not a known ranker; known: {sorted(RANKERS)}")
    return RANKERS[cfg.name](cfg)
