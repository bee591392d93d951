"""Evaluation sets built from the world: AlpacaEval, MT-Bench and two lm-eval tasks.

- AlpacaEval rows carry a reference ``output`` from a fixed reference policy (the ``strong`` SFT mix
  by default), playing GPT-4 Turbo's reference answers: good but imperfect, so win rates are
  informative in both directions.
- MT-Bench questions have two turns; the second is a follow-up instruction on the first answer
  ("now uppercase it").  ``reference`` holds the gold answer of each turn, the turn-2 gold assuming a
  correct turn 1 (as MT-Bench's reference answers do); ``mt_bench_records`` turns a question into
  the two records the oracle judge grades.
- lm-eval: a multiple-choice loglikelihood task (gold among the family's typical wrong answers) and
  a generate-until exact-match task.
"""

from __future__ import annotations

import random
from typing import Callable

from .policies import POLICIES, resolve_mix, choose_policy

REFERENCE_GENERATOR = "toy_reference"
DATASET_NAME = "selm_toy"
MAX_GOLD_LEN = 24


def alpaca_eval_rows(records: list[dict], rng: random.Random, reference_mix="strong") -> list[dict]:
    mix = resolve_mix(reference_mix)
    rows = []
    for record in records:
        policy = choose_policy(mix, rng)
        rows.append(
            {
                "instruction": record["prompt"],
                "output": POLICIES[policy](record, rng),
                "generator": REFERENCE_GENERATOR,
                "dataset": DATASET_NAME,
                "family": record["family"],
                "gold": record["gold"],
                "reference_policy": policy,
            }
        )
    return rows


def _dedup(s: str) -> str:
    return "".join(dict.fromkeys(s))


# name -> (instruction, function on the turn-1 gold, family whose reward grades turn 2)
STRING_FOLLOWUPS: dict[str, tuple[str, Callable[[str], str], str]] = {
    "upper": ("now uppercase it", str.upper, "upper"),
    "reverse": ("now reverse it", lambda s: s[::-1], "reverse"),
    "sort": ("now sort its characters", lambda s: "".join(sorted(s)), "sort"),
    "dedup": ("now remove repeated characters", _dedup, "dedup"),
}
NUMBER_FAMILIES = ("count", "add")


def _followup(record: dict, rng: random.Random) -> tuple[str, str, str]:
    """(turn-2 instruction, turn-2 gold, grading family) for a turn-1 record; the follow-up always
    changes the answer, so turn 2 cannot be passed by repeating turn 1."""
    gold = record["gold"]
    if record["family"] in NUMBER_FAMILIES:
        if rng.random() < 0.5:
            return "now double it", str(2 * int(gold)), "add"
        k = rng.randint(2, 9)
        return f"now add {k} to it", str(int(gold) + k), "add"
    options = [
        (text, fn(gold), fam)
        for text, fn, fam in STRING_FOLLOWUPS.values()
        if fn(gold) != gold and len(fn(gold)) <= MAX_GOLD_LEN
    ]
    if not options:
        raise ValueError(f"no follow-up changes {gold!r}")
    return rng.choice(options)


def mt_bench_rows(records: list[dict], rng: random.Random) -> list[dict]:
    """MT-Bench question.jsonl rows (question_id, category, turns, reference) plus what the oracle
    needs: the family grading each turn."""
    rows = []
    for i, record in enumerate(records, 1):
        text, gold2, family2 = _followup(record, rng)
        rows.append(
            {
                "question_id": i,
                "category": record["family"],
                "turns": [record["prompt"], text],
                "reference": [record["gold"], gold2],
                "families": [record["family"], family2],
            }
        )
    return rows


def mt_bench_records(question: dict) -> list[dict]:
    """The two records (family, prompt, gold) the oracle judge grades for a question's turns.  The
    turn-2 prompt is the whole user side of the conversation, so its judge noise is specific to the
    question rather than shared by every question with the same follow-up text."""
    t1, t2 = question["turns"]
    (g1, g2), (f1, f2) = question["reference"], question["families"]
    return [
        {"family": f1, "prompt": t1, "gold": g1},
        {"family": f2, "prompt": f"{t1}\n{t2}", "gold": g2},
    ]


def lmeval_mc_rows(records: list[dict], rng: random.Random) -> list[dict]:
    """Four distinct choices: gold, the habit answer, and two noisy answers, shuffled."""
    rows = []
    for record in records:
        choices = [record["gold"], POLICIES["habit"](record, rng)]
        for _ in range(100):
            if len(choices) == 4:
                break
            candidate = POLICIES["noise" if len(choices) == 2 else "habit_noise"](record, rng)
            if candidate not in choices:
                choices.append(candidate)
        if len(choices) < 4:
            raise RuntimeError(f"could not find 4 distinct choices for {record['prompt']!r}")
        rng.shuffle(choices)
        rows.append(
            {
                "query": record["prompt"],
                "choices": choices,
                "gold": choices.index(record["gold"]),
                "family": record["family"],
            }
        )
    return rows


def lmeval_gen_rows(records: list[dict]) -> list[dict]:
    return [{"query": r["prompt"], "answer": r["gold"], "family": r["family"]} for r in records]
