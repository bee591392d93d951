"""Seed statistics of the report: means with 95% t intervals, and paired tests (SELM vs DPO on the
same seed, so seed-to-seed variation of the shared start cancels)."""

from __future__ import annotations

import math
import statistics

from scipy import stats as sps


def t95(dof: int) -> float:
    """Two-sided 95% quantile of Student's t with `dof` degrees of freedom."""
    return float(sps.t.ppf(0.975, dof))


def mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of the 95% t interval (0 for a single value)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, t95(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))


def summarize(values: list[float]) -> dict:
    mean, ci = mean_ci([float(v) for v in values])
    return {"mean": round(mean, 5), "ci95": round(ci, 5), "n": len(values)}


def paired_test(a: list[float], b: list[float]) -> dict:
    """a - b paired by position: mean difference, its 95% t interval, the two-sided paired t-test
    p-value, and in how many pairs a > b. Identical pairs give p = 1 (no evidence of a difference)."""
    if len(a) != len(b) or len(a) < 2:
        raise ValueError(f"paired test needs two equal-length lists of at least 2 values, got {len(a)} and {len(b)}")
    diffs = [float(x) - float(y) for x, y in zip(a, b)]
    mean, ci = mean_ci(diffs)
    sd = statistics.stdev(diffs)
    if sd == 0:
        p = 1.0 if mean == 0 else 0.0
    else:
        p = float(2 * sps.t.sf(abs(mean / (sd / math.sqrt(len(diffs)))), len(diffs) - 1))
    return {"mean_diff": round(mean, 5), "ci95": round(ci, 5), "ci_low": round(mean - ci, 5),
            "ci_high": round(mean + ci, 5), "p_value": round(p, 4), "n": len(diffs),
            "n_a_greater": sum(d > 0 for d in diffs), "a_mean": round(statistics.fmean(map(float, a)), 5),
            "b_mean": round(statistics.fmean(map(float, b)), 5)}
