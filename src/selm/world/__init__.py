"""The toy world: a synthetic instruction-following world with a known true reward r*.

It stands in, at the toy and evalcheck scales, for UltraFeedback (preference corpus), UltraChat-style
SFT data, PairRM (``OracleRanker``), the GPT-4 judge (``OracleJudge``) and the evaluation sets.
See docs/design.md section 3.  ``build_world`` is imported lazily so that ``python -m selm.world.build``
does not find its own module already imported.
"""

from .evalsets import mt_bench_records
from .families import FAMILIES, Family, get_family, levenshtein, sample_records, true_reward
from .oracles import OracleJudge, OracleRanker, hash_normal
from .policies import ANNOTATOR_MIX, MIXES, POLICIES, demonstrations, policy_stats, resolve_mix
from .prefs import preference_pairs, preference_stats, prompt_id

__all__ = [
    "ANNOTATOR_MIX",
    "FAMILIES",
    "MIXES",
    "POLICIES",
    "Family",
    "OracleJudge",
    "OracleRanker",
    "build_world",
    "demonstrations",
    "get_family",
    "hash_normal",
    "levenshtein",
    "mt_bench_records",
    "policy_stats",
    "preference_pairs",
    "preference_stats",
    "prompt_id",
    "resolve_mix",
    "sample_records",
    "true_reward",
]


def __getattr__(name: str):
    if name == "build_world":
        from .build import build_world

        return build_world
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
