"""The toy world's ranker (PairRM's place) and judge (GPT-4's place): two different noisy views of r*.

Noise is a deterministic function of (salt, prompt, stripped answer), derived from blake2b, so the
same candidate always gets the same score (re-ranking a file is reproducible, and two identical
answers always tie).  Different salts give independent noise: the ranker and the judge disagree with
each other as two real models would, and a judge with another salt plays "another judge run".
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Sequence

from .families import true_reward


def hash_normal(salt: str, prompt: str, answer: str) -> float:
    """A standard normal draw fixed by (salt, prompt, answer) (Box-Muller on two hashed uniforms)."""
    digest = hashlib.blake2b(
        "\x00".join((salt, prompt, answer)).encode("utf-8"), digest_size=16
    ).digest()
    u1 = (int.from_bytes(digest[:8], "big") + 1) / 2.0**64  # in (0, 1]
    u2 = int.from_bytes(digest[8:], "big") / 2.0**64  # in [0, 1)
    return math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


@dataclass(frozen=True)
class OracleRanker:
    """Scores r* + noise * N(0,1); ranks best to worst, ties resolved to the earlier candidate
    (the authors' PairRM use resolves ties to the first candidate, y_ref)."""

    noise: float = 0.1
    salt: str = "ranker"

    def score(self, record: dict, answers: Sequence[str]) -> list[float]:
        prompt = record["prompt"]
        return [
            true_reward(record, a) + self.noise * hash_normal(self.salt, prompt, a.strip())
            for a in answers
        ]

    def rank(self, record: dict, candidates: Sequence[str]) -> list[int]:
        """Candidate indices from best to worst; equal scores keep their input order."""
        scores = self.score(record, candidates)
        return sorted(range(len(candidates)), key=lambda i: (-scores[i], i))


@dataclass(frozen=True)
class OracleJudge:
    """Latent quality q = r* + length_coef * log(1 + len) + noise * N(0,1).

    The log-length term is the mild verbosity bias real LLM judges have; it is what makes the
    length-controlled win rate differ from the raw one.  ``prefers`` is P(a beats b) =
    sigmoid((q_a - q_b) / temperature); ``score`` maps q to MT-Bench's 1..10 scale (a float, clipped).
    """

    noise: float = 0.05
    length_coef: float = 0.05
    temperature: float = 0.1
    salt: str = "judge"

    def quality(self, record: dict, answer: str) -> float:
        stripped = answer.strip()
        return (
            true_reward(record, answer)
            + self.length_coef * math.log1p(len(stripped))
            + self.noise * hash_normal(self.salt, record["prompt"], stripped)
        )

    def prefers(self, record: dict, output_a: str, output_b: str) -> float:
        """Probability-like preference in [0, 1] for ``output_a`` over ``output_b``."""
        diff = self.quality(record, output_a) - self.quality(record, output_b)
        return _sigmoid(diff / self.temperature)

    def score(self, record: dict, answer: str) -> float:
        """Single-answer grade on 1..10 (MT-Bench style)."""
        return min(10.0, max(1.0, 1.0 + 9.0 * self.quality(record, answer)))
