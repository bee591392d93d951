"""Seed statistics of the report: means with 95% t intervals, paired tests (SELM vs DPO on the
same seed, so seed-to-seed variation of the shared start cancels), and the verdict rule.

The verdict rule (`effect_verdict`) calls a difference real only when it is larger than what the
design can resolve, so that a verdict does not flip when rounding moves the numbers a little (the
pipeline on another CPU gives a slightly different SFT base, and everything downstream moves):

- one seed: no interval, no verdict ("inconclusive");
- zero spread over seeds: no t-test either (no p-value, no zero-width interval), "inconclusive";
- otherwise the 95% t interval of the mean difference must exclude 0 AND the mean difference must
  be at least the threshold max(MDE, floor), where MDE is the minimum detectable effect of a paired
  t-test with this many seeds and this spread (two-sided alpha 0.05, power 0.8) and `floor` is the
  metric's between-machine tolerance (MACHINE_FLOOR), else "inconclusive".

What the floor buys: two copies of the results whose mean differences differ by less than 2 * floor
(e.g. the same pipeline on two machines) can never get opposite definitive verdicts (positive in one,
negative in the other); they can still disagree between a definitive verdict and "inconclusive" for
an effect that sits at the threshold. No threshold rule on continuous numbers can do better.
"""

from __future__ import annotations

import functools
import math
import statistics

from scipy import stats as sps

ALPHA = 0.05  # two-sided level of the intervals and tests
POWER = 0.8  # power at which the minimum detectable effect is quoted

# Between-machine tolerance by metric key (the effect below which a difference is treated as a
# rounding artefact whatever the seeds say). r*: the largest shift measured in the toy SFT base's greedy
# r* when only the floating-point code path changed, same pins, same seeds: 0.016 between two machines
# of the same kind (0.477 vs 0.461), and 0.028 on one machine between its full vector extensions and
# ATen/MKL/oneDNN capped below AVX2 (0.461 vs 0.490; standing in for an older x86 CPU). A difference in
# r* smaller than that is not called. Metrics without a measured spread get no floor (0).
MACHINE_FLOOR = {"mean_reward": 0.028, "r_star": 0.028}


@functools.lru_cache(maxsize=None)
def t_quantile(p: float, dof: int) -> float:
    """The p quantile of Student's t with `dof` degrees of freedom (cached: the report asks often)."""
    return float(sps.t.ppf(p, dof))


def t95(dof: int) -> float:
    """Two-sided 95% quantile of Student's t with `dof` degrees of freedom."""
    return t_quantile(1 - ALPHA / 2, dof)


def mean_ci(values: list[float]) -> tuple[float, float | None]:
    """Mean and half-width of the 95% t interval; None for a single value (no interval)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, None
    return mean, t95(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))


def fmt_mean_ci(mean: float, ci: float | None, digits: int = 3) -> str:
    """'mean ± ci'; just 'mean' without an interval (one seed); 'mean (same in every seed)' for zero
    spread (no interval, not '± 0.00'); 'mean ± <0.01' when the half-width rounds to 0 at `digits`."""
    head = f"{mean:.{digits}f}"
    if ci is None:
        return head
    if ci == 0:
        return f"{head} (same in every seed)"
    if round(ci, digits) == 0:
        return f"{head} ± <{10 ** -digits:.{digits}f}"
    return f"{head} ± {ci:.{digits}f}"


def summarize(values: list[float]) -> dict:
    mean, ci = mean_ci([float(v) for v in values])
    return {"mean": round(mean, 5), "ci95": None if ci is None else round(ci, 5), "n": len(values)}


def mde(sd: float, n: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """Minimum detectable effect of a paired t-test of n pairs whose differences have standard
    deviation sd: (t_{1-alpha/2, n-1} + t_{power, n-1}) * sd / sqrt(n)."""
    if n < 2:
        raise ValueError(f"a minimum detectable effect needs at least 2 pairs, got {n}")
    return mde_se(sd / math.sqrt(n), n - 1, alpha, power)


def mde_se(se: float, dof: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """Minimum detectable effect of a t-test with standard error `se` and `dof` degrees of freedom."""
    return (t_quantile(1 - alpha / 2, dof) + t_quantile(power, dof)) * se


def _se_n(summary: dict) -> tuple[float, int]:
    """Standard error of a {mean, ci95, n} summary (0 for one value: a fixed reference) and its n."""
    n = int(summary.get("n", 1))
    if n < 2 or summary.get("ci95") is None:
        return 0.0, n
    return float(summary["ci95"]) / t95(n - 1), n


def summary_diff(a: dict, b: dict) -> dict:
    """a - b for two {mean, ci95, n} summaries of different cells (not paired): standard error
    sqrt(se_a^2 + se_b^2) with the conservative min(n_a, n_b) - 1 degrees of freedom (a side with one
    value, e.g. a base model evaluated once, is a fixed reference with se 0). The result is what
    `effect_verdict` reads; n is 1 when neither side has an interval."""
    (se_a, n_a), (se_b, n_b) = _se_n(a), _se_n(b)
    n = min(x for x in (n_a, n_b) if x >= 2) if max(n_a, n_b) >= 2 else 1
    return {"mean_diff": float(a["mean"]) - float(b["mean"]), "se": math.hypot(se_a, se_b), "dof": n - 1, "n": n}


def sample_test(values: list[float]) -> dict:
    """One-sample view of per-unit values (e.g. per-prompt differences): mean, se = sd / sqrt(n),
    n - 1 degrees of freedom; what `effect_verdict` reads."""
    n = len(values)
    mean = statistics.fmean(values)
    se = statistics.stdev(values) / math.sqrt(n) if n >= 2 else 0.0
    return {"mean_diff": mean, "se": se, "dof": n - 1, "n": n}


def paired_test(a: list[float], b: list[float]) -> dict:
    """a - b paired by position: mean difference, sd of the differences, its 95% t interval, the
    two-sided paired t-test p-value, the minimum detectable effect, and in how many pairs a > b.
    With zero spread there is no t-test: p-value and interval are None (not p = 0 and a zero-width
    interval)."""
    if len(a) != len(b) or len(a) < 2:
        raise ValueError(f"paired test needs two equal-length lists of at least 2 values, got {len(a)} and {len(b)}")
    diffs = [float(x) - float(y) for x, y in zip(a, b)]
    n = len(diffs)
    mean, sd = statistics.fmean(diffs), statistics.stdev(diffs)
    if sd <= 1e-9 * max(1.0, max(abs(d) for d in diffs)):
        sd = 0.0  # the same difference in every pair up to float rounding (0.40 - 0.45 vs 0.35 - 0.40)
    out = {"mean_diff": round(mean, 5), "sd": round(sd, 6), "n": n, "n_a_greater": sum(d > 0 for d in diffs),
           "a_mean": round(statistics.fmean(map(float, a)), 5), "b_mean": round(statistics.fmean(map(float, b)), 5)}
    if sd == 0:
        return {**out, "ci95": None, "ci_low": None, "ci_high": None, "p_value": None, "mde": 0.0}
    ci = t95(n - 1) * sd / math.sqrt(n)
    p = float(2 * sps.t.sf(abs(mean / (sd / math.sqrt(n))), n - 1))
    return {**out, "ci95": round(ci, 5), "ci_low": round(mean - ci, 5), "ci_high": round(mean + ci, 5),
            "p_value": round(p, 4), "mde": round(mde(sd, n), 5)}


def _se_dof(test: dict) -> tuple[float | None, int]:
    """Standard error of the mean difference and its degrees of freedom: stored (`se`, `dof`), from
    the paired differences' sd, or recovered from the interval's half-width (tests written before
    `sd` was stored: half-width = t95(n-1) * se)."""
    n = int(test.get("n", 0))
    if test.get("se") is not None:
        return float(test["se"]), int(test.get("dof", n - 1))
    if test.get("sd") is not None:
        return float(test["sd"]) / math.sqrt(n), n - 1
    if test.get("ci95") is not None:
        return float(test["ci95"]) / t95(n - 1), n - 1
    if test.get("ci_low") is not None:
        return (float(test["ci_high"]) - float(test["ci_low"])) / 2 / t95(n - 1), n - 1
    return None, n - 1


def effect_verdict(test: dict, floor: float = 0.0) -> dict:
    """The verdict on a difference (a `paired_test`, `summary_diff` or `sample_test` dict):
    "positive", "negative" or "inconclusive", with the threshold it was held against and the reason
    when inconclusive. Definitive only when the 95% interval excludes 0 and |mean| >= max(MDE, floor)
    (module doc)."""
    n, mean = int(test.get("n", 0)), float(test["mean_diff"])
    base = {"mean_diff": mean, "n": n, "floor": floor, "mde": None, "threshold": None}
    if n < 2:
        return {**base, "verdict": "inconclusive", "reason": "one seed: no interval"}
    se, dof = _se_dof(test)
    if not se:
        return {**base, "verdict": "inconclusive", "reason": "zero spread: no t-test"}
    half, detectable = t95(dof) * se, mde_se(se, dof)
    threshold = max(detectable, floor)
    base.update(mde=detectable, threshold=threshold, ci_low=mean - half, ci_high=mean + half)
    if mean - half <= 0 <= mean + half:
        return {**base, "verdict": "inconclusive", "reason": "95% interval includes 0"}
    if abs(mean) < threshold:
        which = "minimum detectable effect" if detectable >= floor else "between-machine floor"
        return {**base, "verdict": "inconclusive", "reason": f"|effect| below the {which} {threshold:.3g}"}
    return {**base, "verdict": "positive" if mean > 0 else "negative", "reason": ""}


REGIME_WORDS = {"positive": "helps", "negative": "hurts", "inconclusive": "inconclusive"}


def regime_verdict(diff: dict) -> dict:
    """The regime map's verdict on a paired SELM - DPO difference in final r* (`effect_verdict` with
    r*'s between-machine floor); `verdict` is helps / hurts / inconclusive."""
    v = effect_verdict(diff, MACHINE_FLOOR["r_star"])
    return {**v, "verdict": REGIME_WORDS[v["verdict"]]}


def fmt_test(t: dict, digits: int = 3) -> str:
    """'+0.010 [+0.002, +0.018] p=0.03 (3/3)' for a paired test; without interval and p-value when
    the spread is zero ('+0.010, same in every seed (3/3), no t-test')."""
    head = f"{t['mean_diff']:+.{digits}f}"
    if t.get("ci_low") is None or t.get("p_value") is None:
        return f"{head}, same in every seed ({t['n_a_greater']}/{t['n']}), no t-test"
    return (f"{head} [{t['ci_low']:+.{digits}f}, {t['ci_high']:+.{digits}f}] p={t['p_value']:.2f} "
            f"({t['n_a_greater']}/{t['n']})")


def fmt_threshold(v: dict, digits: int = 3) -> str:
    """What a verdict was held against: 'MDE 0.012' (and the floor when it is the larger)."""
    if v["threshold"] is None:
        return v["reason"]
    text = f"MDE {v['mde']:.{digits}f}"
    if v["floor"] > v["mde"]:
        text += f", floor {v['floor']:.{digits}f}"
    return text


# --- the SFT base as a random factor ---------------------------------------------------------------
#
# A difference (explorer - DPO, SELM - DPO) measured on several SFT bases, several seeds each: the
# base is a random draw of the SFT recipe, so the claim "holds across bases" is about the mean over
# bases, and its uncertainty is that of the per-base means (between-base spread sigma_b plus the
# seeds' sigma_w / sqrt(seeds)), not the seeds' alone.

def sd_from_interval(low: float, high: float, n: int) -> float:
    """The sd of n paired differences whose 95% t interval of the mean is [low, high]:
    (high - low) / 2 / t95(n - 1) * sqrt(n)."""
    if n < 2 or high < low:
        raise ValueError(f"an interval [{low}, {high}] of n={n} values: need n >= 2 and low <= high")
    return (high - low) / 2 / t95(n - 1) * math.sqrt(n)


def components_from_summaries(means: list[float], sds: list[float], ns: list[int]) -> dict:
    """Between-base and between-seed sd from per-base summaries (mean, sd over seeds, seeds): sigma_w
    is the pooled sd, sigma_b^2 = max(0, var(means) - sigma_w^2 * mean(1 / n)) (the spread of the
    per-base means beyond what their seeds explain; method of moments)."""
    if len(means) < 2 or not (len(means) == len(sds) == len(ns)) or min(ns) < 2:
        raise ValueError("variance components need at least 2 bases, each with an sd over >= 2 seeds")
    within = sum((n - 1) * sd ** 2 for n, sd in zip(ns, sds)) / sum(n - 1 for n in ns)
    between = max(0.0, statistics.variance(means) - within * statistics.fmean(1 / n for n in ns))
    return {"sd_between": math.sqrt(between), "sd_within": math.sqrt(within), "bases": len(means)}


def variance_components(groups: list[list[float]]) -> dict:
    """One-way random-effects ANOVA of values grouped by base (unbalanced allowed): MSB, MSW,
    n0 = (N - sum(n_i^2) / N) / (k - 1), sigma_b^2 = max(0, (MSB - MSW) / n0), sigma_w^2 = MSW; sd_within
    is None when no base has two values. Also the share of the variance that is between bases."""
    groups = [[float(v) for v in g] for g in groups if g]
    k, n_total = len(groups), sum(map(len, groups))
    if k < 2:
        raise ValueError(f"variance components need values of at least 2 bases, got {k}")
    grand = statistics.fmean(v for g in groups for v in g)
    msb = sum(len(g) * (statistics.fmean(g) - grand) ** 2 for g in groups) / (k - 1)
    n0 = (n_total - sum(len(g) ** 2 for g in groups) / n_total) / (k - 1)
    if n_total == k:
        return {"bases": k, "values": n_total, "ms_between": msb, "ms_within": None, "n0": n0,
                "sd_between": None, "sd_within": None, "between_share": None}
    msw = sum((v - statistics.fmean(g)) ** 2 for g in groups for v in g) / (n_total - k)
    between = max(0.0, (msb - msw) / n0)
    total = between + msw
    return {"bases": k, "values": n_total, "ms_between": msb, "ms_within": msw, "n0": n0,
            "sd_between": math.sqrt(between), "sd_within": math.sqrt(msw),
            "between_share": between / total if total > 0 else None}


def across_base_mde(sd_between: float, sd_within: float, bases: int, seeds: int,
                    alpha: float = ALPHA, power: float = POWER) -> float:
    """Minimum detectable mean effect over `bases` bases with `seeds` paired seeds each: a t-test
    over the per-base means (bases - 1 degrees of freedom), whose variance is
    sigma_b^2 + sigma_w^2 / seeds."""
    if bases < 2 or seeds < 1:
        raise ValueError(f"an across-base design needs >= 2 bases and >= 1 seed, got {bases} x {seeds}")
    se = math.sqrt((sd_between ** 2 + sd_within ** 2 / seeds) / bases)
    return mde_se(se, bases - 1, alpha, power)


EXACT_BOOTSTRAP_MAX = 10  # up to this many bases, every resample is enumerated (no random numbers)


def bootstrap_mean_interval(values: list[float], level: float = 1 - ALPHA, resamples: int = 20000,
                            seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values` (e.g. per-base means): resamples of the
    same size with replacement. Up to EXACT_BOOTSTRAP_MAX values the bootstrap distribution is exact
    (every multiset of indices, with its multinomial probability); beyond, `resamples` seeded draws.
    The bounds are the smallest resample means whose cumulative probability reaches (1 - level) / 2
    and (1 + level) / 2."""
    import itertools
    from collections import Counter

    n = len(values)
    if n < 2:
        raise ValueError(f"a bootstrap interval needs at least 2 values, got {n}")
    if n <= EXACT_BOOTSTRAP_MAX:
        dist = []
        for combo in itertools.combinations_with_replacement(range(n), n):
            weight = math.factorial(n)
            for c in Counter(combo).values():
                weight //= math.factorial(c)
            dist.append((math.fsum(values[i] for i in combo) / n, weight / n ** n))
    else:
        import numpy as np

        draws = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
        dist = [(float(m), 1 / resamples) for m in np.asarray(values, dtype=float)[draws].mean(axis=1)]
    dist.sort()
    lo_p, hi_p = (1 - level) / 2, (1 + level) / 2
    cum, low, high = 0.0, None, None
    for mean, p in dist:
        cum += p
        if low is None and cum >= lo_p - 1e-12:
            low = mean
        if cum >= hi_p - 1e-12:
            high = mean
            break
    return low, dist[-1][0] if high is None else high


def across_base_test(base_means: list[float]) -> dict:
    """The mean over bases of per-base mean differences, with the bases as the units: sd of the
    per-base means, se = sd / sqrt(bases), bases - 1 degrees of freedom, its 95% t interval, the
    percentile bootstrap interval over bases, the MDE, and in how many bases the difference is > 0.
    What `effect_verdict` reads (`n` is the number of bases)."""
    k = len(base_means)
    if k < 2:
        raise ValueError(f"an across-base test needs at least 2 bases, got {k}")
    mean, sd = statistics.fmean(base_means), statistics.stdev(base_means)
    se = sd / math.sqrt(k)
    half = t95(k - 1) * se
    low, high = bootstrap_mean_interval(base_means)
    return {"mean_diff": mean, "sd": sd, "se": se, "dof": k - 1, "n": k, "ci_low": mean - half,
            "ci_high": mean + half, "bootstrap_low": low, "bootstrap_high": high,
            "mde": mde_se(se, k - 1) if se > 0 else 0.0, "n_bases_positive": sum(m > 0 for m in base_means)}


def against_base_spread(test: dict, sd_between: float, base_dof: int) -> dict:
    """Whether a difference measured on ONE base (a paired test over seeds: mean_diff and its se with
    its dof) exceeds the between-base spread: its interval widened by it, mean +- t95(dof) *
    sqrt(se^2 + sigma_b^2) (another base's draw adds sigma_b^2), must exclude 0. dof is
    Welch-Satterthwaite's (se^2 + sigma_b^2)^2 / (se^4 / dof_se + sigma_b^4 / base_dof), so the part
    of the variance known from fewer units weighs in with fewer degrees of freedom."""
    se, dof_se = _se_dof(test)
    se = se or 0.0
    variance = se ** 2 + sd_between ** 2
    parts = [(v, d) for v, d in ((se ** 2, dof_se), (sd_between ** 2, base_dof)) if v > 0]
    if not parts or any(d < 1 for _, d in parts):
        return {"exceeds": None, "half_width": None, "sd_between": sd_between,
                "reason": "no spread or no degrees of freedom"}
    dof = variance ** 2 / sum(v ** 2 / d for v, d in parts)
    half = float(sps.t.ppf(1 - ALPHA / 2, dof)) * math.sqrt(variance)
    mean = float(test["mean_diff"])
    return {"exceeds": abs(mean) > half, "half_width": half, "low": mean - half, "high": mean + half,
            "sd_between": sd_between, "dof": dof}
