"""The toy world's metrics of a model's test answers, scored by the true reward r*: the loop's
hook for `eval.true_reward: toy` (selm.loop.TRUE_REWARDS names it; the loop itself knows no world).

`score_answers` gets the test records, the greedy answer to each and, for the exploration coverage,
k samples at T = 1 per prompt, and returns the rows of eval_answers.jsonl and the metrics that go
into eval.json beside the answers' count and length: mean r*, fraction fully correct, r* per task
family and, with samples, the fraction of prompts where some sample reaches r* >= `high_reward`
(high-reward coverage), the mean best-of-k r*, and the mean number of distinct answers per prompt.
"""

from __future__ import annotations

from collections.abc import Sequence

from selm.io import DataError

from .families import true_reward


def score_answers(records: Sequence[dict], answers: Sequence[str], samples: Sequence[Sequence[str]] | None = None,
                  high_reward: float = 1.0) -> tuple[list[dict], dict]:
    """(rows, metrics) of the greedy `answers` (and the k `samples` per prompt, or None) under r*."""
    for record in records:
        missing = [key for key in ("family", "gold") if key not in record]
        if missing:
            raise DataError(f"test record {record.get('prompt_id')}: no {missing[0]!r}; eval.true_reward=toy scores "
                            "the toy world's records only (set eval.true_reward=null for other data)")
    rows = []
    for i, (record, answer) in enumerate(zip(records, answers)):
        row = {"prompt_id": record["prompt_id"], "family": record["family"], "answer": answer,
               "reward": true_reward(record, answer)}
        if samples is not None:
            row["sample_rewards"] = [true_reward(record, a) for a in samples[i]]
            row["distinct_samples"] = len(set(a.strip() for a in samples[i]))
        rows.append(row)
    rewards = [r["reward"] for r in rows]
    families = sorted({r["family"] for r in rows})
    metrics = {
        "mean_reward": sum(rewards) / len(rewards),
        "frac_correct": sum(r == 1.0 for r in rewards) / len(rewards),
        "per_family": {
            f: sum(r["reward"] for r in rows if r["family"] == f) / sum(r["family"] == f for r in rows)
            for f in families
        },
    }
    if samples is not None:
        k = len(samples[0]) if samples else 0
        metrics["coverage"] = {
            "k": k, "high_reward": high_reward,
            "frac_prompts_covered": sum(max(r["sample_rewards"]) >= high_reward for r in rows) / len(rows),
            "mean_best_of_k": sum(max(r["sample_rewards"]) for r in rows) / len(rows),
            "mean_sample_reward": sum(sum(r["sample_rewards"]) / k for r in rows) / len(rows),
            "mean_distinct": sum(r["distinct_samples"] for r in rows) / len(rows),
        }
    return rows, metrics
