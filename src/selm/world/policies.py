"""Answer-writing policies: gold, the family's bad habit, and random noise.

Why these three: a throwaway prototype (docs/design.md section 3) found that the online loop has something
to fix only when the SFT model's errors are MODE errors (a consistent, family-specific bad habit that
preference data can push down), not capability errors.  Demonstrations of ~40% gold, ~45% habit and
~15% noise gave SFT greedy r* 0.30-0.43 with best-of-16 0.84-0.87; gold-plus-random-edits alone gave
an SFT policy that DPO could not move.  ``habit_noise`` (random edits of the habit answer) is an
extra annotator policy for the offline preference corpus.

Every policy is ``policy(record, rng) -> answer`` and is deterministic given the rng state.
"""

from __future__ import annotations

import random
from typing import Callable, Iterable, Mapping

from .families import FAMILIES, sample_records, true_reward

Policy = Callable[[dict, random.Random], str]

# SFT demonstration mixes: ``weak`` plays Zephyr-7B-SFT (tiny-sft), ``strong`` Llama-3-8B-Instruct.
MIXES: dict[str, dict[str, float]] = {
    "weak": {"gold": 0.40, "habit": 0.45, "noise": 0.15},
    "strong": {"gold": 0.60, "habit": 0.30, "noise": 0.10},
}
# The "annotator policies" whose answers fill the offline preference corpus (two per prompt).
ANNOTATOR_MIX: dict[str, float] = {"gold": 0.30, "habit": 0.30, "noise": 0.25, "habit_noise": 0.15}


def random_edits(text: str, alphabet: str, rng: random.Random, n_edits: int) -> str:
    """Apply ``n_edits`` random substitutions / insertions / deletions (never emptying the text)."""
    chars = list(text)
    for _ in range(n_edits):
        ops = ["sub", "ins"] + (["del"] if len(chars) > 1 else [])
        op = rng.choice(ops) if chars else "ins"
        if op == "ins":
            chars.insert(rng.randint(0, len(chars)), rng.choice(alphabet))
        elif op == "del":
            del chars[rng.randrange(len(chars))]
        else:
            i = rng.randrange(len(chars))
            chars[i] = rng.choice([c for c in alphabet if c != chars[i]])
    return "".join(chars)


def _edited(record: dict, base: str, rng: random.Random) -> str:
    """1-3 random edits of ``base`` that change it and do not hit full reward by accident
    (e.g. a number edit "3" -> "03" would still be worth 1.0)."""
    alphabet = FAMILIES[record["family"]].alphabet
    for _ in range(100):
        answer = random_edits(base, alphabet, rng, rng.choice((1, 1, 2, 2, 3)))
        if answer != base and true_reward(record, answer) < 1.0:
            return answer
    raise RuntimeError(f"no imperfect edit found for {record['prompt']!r}")


def gold_policy(record: dict, rng: random.Random) -> str:
    return record["gold"]


def habit_policy(record: dict, rng: random.Random) -> str:
    return FAMILIES[record["family"]].habit_answer(record)


def noise_policy(record: dict, rng: random.Random) -> str:
    return _edited(record, record["gold"], rng)


def habit_noise_policy(record: dict, rng: random.Random) -> str:
    return _edited(record, habit_policy(record, rng), rng)


POLICIES: dict[str, Policy] = {
    "gold": gold_policy,
    "habit": habit_policy,
    "noise": noise_policy,
    "habit_noise": habit_noise_policy,
}


def resolve_mix(mix: str | Mapping[str, float]) -> dict[str, float]:
    """A mix given by name (``MIXES``) or as {policy: weight}; returned normalised to sum 1."""
    if isinstance(mix, str):
        if mix not in MIXES:
            raise KeyError(f"unknown mix {mix!r}; known mixes: {sorted(MIXES)}")
        mix = MIXES[mix]
    unknown = set(mix) - set(POLICIES)
    if unknown:
        raise KeyError(f"unknown policies {sorted(unknown)}; known policies: {sorted(POLICIES)}")
    if any(w < 0 for w in mix.values()) or sum(mix.values()) <= 0:
        raise ValueError(f"mix weights must be >= 0 with a positive sum: {dict(mix)}")
    total = sum(mix.values())
    return {name: round(w / total, 12) for name, w in mix.items()}


def choose_policy(mix: Mapping[str, float], rng: random.Random, exclude: str | None = None) -> str:
    """Draw a policy name by weight, optionally excluding one (for two different annotators)."""
    names = [n for n in mix if n != exclude and mix[n] > 0]
    if not names:
        raise ValueError(f"no policy left to choose from {dict(mix)} excluding {exclude!r}")
    return rng.choices(names, weights=[mix[n] for n in names])[0]


def demonstrations(
    n: int,
    mix: str | Mapping[str, float] = "weak",
    seed: int = 0,
    families: Iterable[str] | None = None,
    exclude: set[str] | None = None,
) -> list[dict]:
    """SFT demonstrations ``{prompt, completion, family, policy, gold}``; prompts may repeat (as several
    demonstrations of one instruction would), but never come from ``exclude``."""
    weights = resolve_mix(mix)
    rng = random.Random(seed)
    records = sample_records(n, rng, families=families, exclude=exclude, unique=False)
    rows = []
    for record in records:
        policy = choose_policy(weights, rng)
        rows.append(
            {
                "prompt": record["prompt"],
                "completion": POLICIES[policy](record, rng),
                "family": record["family"],
                "policy": policy,
                "gold": record["gold"],
            }
        )
    return rows


def policy_stats(n_per_family: int = 200, seed: int = 0) -> dict[str, dict[str, float]]:
    """Mean r* of every policy on ``n_per_family`` fresh prompts of each family (for the manifest
    and reports; it documents how far each mode error is from gold)."""
    rng = random.Random(seed)
    stats: dict[str, dict[str, float]] = {}
    for name in sorted(FAMILIES):
        records = sample_records(n_per_family, rng, families=[name])
        stats[name] = {
            policy: round(sum(true_reward(r, fn(r, rng)) for r in records) / len(records), 4)
            for policy, fn in POLICIES.items()
        }
    return stats
