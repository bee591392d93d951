"""The offline preference corpus in UltraFeedback-binarized's schema.

Each prompt gets two answers from two *different* annotator policies; each answer gets a noisy
annotator score ``1 + 9 * r* + N(0, label_noise)`` clipped to UltraFeedback's 1..10 scale; the
higher score is ``chosen``.  Label noise means some pairs are mislabelled with respect to r*, as real
annotations are; ``preference_stats`` measures how many.  Prompts whose two answers are identical,
or whose rounded scores tie, are skipped (they carry no preference).
"""

from __future__ import annotations

import hashlib
import random
from typing import Iterable, Mapping

from .families import FAMILIES, draw_new, true_reward
from .policies import ANNOTATOR_MIX, POLICIES, choose_policy, resolve_mix


def prompt_id(prompt: str) -> str:
    """Stable id of a prompt: sha256 hex of its UTF-8 text (UltraFeedback's convention)."""
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()


def _messages(prompt: str, answer: str) -> list[dict]:
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]


def annotator_score(reward: float, rng: random.Random, label_noise: float) -> float:
    return round(min(10.0, max(1.0, 1.0 + 9.0 * reward + rng.gauss(0.0, label_noise))), 2)


def _labelled_pair(record: dict, mix: Mapping[str, float], rng: random.Random, label_noise: float):
    """Two answers from two different annotator policies with their noisy scores, ordered
    (chosen, rejected) as ((policy, answer, score), ...); None when the pair carries no preference
    (identical answers, or equal rounded scores)."""
    first = choose_policy(mix, rng)
    second = choose_policy(mix, rng, exclude=first)
    a1, a2 = POLICIES[first](record, rng), POLICIES[second](record, rng)
    if a1 == a2:
        return None
    s1 = annotator_score(true_reward(record, a1), rng, label_noise)
    s2 = annotator_score(true_reward(record, a2), rng, label_noise)
    if s1 == s2:
        return None
    one, two = (first, a1, s1), (second, a2, s2)
    return (one, two) if s1 > s2 else (two, one)


def preference_pairs(
    n: int,
    rng: random.Random,
    annotator_mix: str | Mapping[str, float] | None = None,
    label_noise: float = 1.0,
    families: Iterable[str] | None = None,
    exclude: set[str] | None = None,
) -> list[dict]:
    """``n`` preference rows on distinct prompts not in ``exclude``, families uniform.

    A skipped pair is retried on a new prompt of the same family, so skips (frequent for the number
    families, whose wrong answers often all clip to score 1) do not unbalance the families.
    """
    mix = resolve_mix(annotator_mix if annotator_mix is not None else ANNOTATOR_MIX)
    names = sorted(families) if families is not None else sorted(FAMILIES)
    seen = set(exclude or ())
    rows: list[dict] = []
    while len(rows) < n:
        family = FAMILIES[rng.choice(names)]
        pair = None
        while pair is None:
            record = draw_new(family, rng, seen)
            seen.add(record["prompt"])
            pair = _labelled_pair(record, mix, rng, label_noise)
        (win, chosen_answer, score_c), (lose, rejected_answer, score_r) = pair
        chosen = _messages(record["prompt"], chosen_answer)
        rows.append(
            {
                "prompt": record["prompt"],
                "prompt_id": prompt_id(record["prompt"]),
                "chosen": chosen,
                "rejected": _messages(record["prompt"], rejected_answer),
                "messages": chosen,
                "score_chosen": score_c,
                "score_rejected": score_r,
                "family": record["family"],
                "gold": record["gold"],
                "policy_chosen": win,
                "policy_rejected": lose,
            }
        )
    return rows


def preference_stats(rows: list[dict]) -> dict:
    """How good the corpus is by r*: label accuracy (chosen has strictly higher r*), ties in r*,
    and mean r* of chosen and rejected answers."""
    if not rows:
        return {"n": 0}
    correct = tie = 0
    sum_c = sum_r = 0.0
    for row in rows:
        rc = true_reward(row, row["chosen"][-1]["content"])
        rr = true_reward(row, row["rejected"][-1]["content"])
        correct += rc > rr
        tie += rc == rr
        sum_c += rc
        sum_r += rr
    n = len(rows)
    return {
        "n": n,
        "label_accuracy": round(correct / n, 4),
        "reward_ties": round(tie / n, 4),
        "mean_r_chosen": round(sum_c / n, 4),
        "mean_r_rejected": round(sum_r / n, 4),
    }
