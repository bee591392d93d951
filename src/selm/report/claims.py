"""The paper's claims one by one, each with what our runs measured and a verdict (REPORT.md's "What
agrees with the paper" section and its summary).

A claim is decided by stats.effect_verdict: agrees / does not agree only when the difference is beyond
the smallest one the design can detect (its 95% interval excludes 0 and it is at least the minimum
detectable effect and, in r*, the between-machine floor), otherwise inconclusive; one seed or zero
spread gives no interval and no test, so "inconclusive". Claims the paper does not make (r*,
coverage, orderings it does not state) are marked as ours. Every number quoted is read from the
analysis files and the comparison table; nothing here is specific to one scale.
"""

from __future__ import annotations

from dataclasses import dataclass

from selm.report.stats import MACHINE_FLOOR, effect_verdict, fmt_threshold, sample_test, summary_diff

# a verdict on "a > b" in the report's words
WORDS = {"positive": "agrees", "negative": "does not agree", "inconclusive": "inconclusive"}


@dataclass(frozen=True)
class Claim:
    """One line of the claims section: `verdict` is agrees / does not agree / mixed / inconclusive;
    `ours` marks a claim the paper does not make."""

    line: str
    verdict: str
    ours: bool = False


def bold(verdict: str) -> str:
    return f"**{verdict}**"


def verdict_note(v: dict) -> str:
    """What the difference was held against ('MDE 0.004, floor 0.028') and, when inconclusive, why."""
    if v["verdict"] != "inconclusive":
        return fmt_threshold(v)
    return v["reason"] if "below the" in v["reason"] or v["threshold"] is None else f"{v['reason']}; {fmt_threshold(v)}"


def interval(t: dict) -> str:
    """'[-0.002, +0.001]', or why there is none."""
    if t.get("ci_low") is None:
        return "no interval (same difference in every seed)" if t.get("n", 0) >= 2 else "no interval (one seed)"
    return f"[{t['ci_low']:+.3f}, {t['ci_high']:+.3f}]"


def combine(verdicts: list[str]) -> str:
    """One verdict on a claim made of several comparisons ("positive" / "negative" / "inconclusive"
    each): agrees only if every one is positive; does not agree if some are negative and none
    positive; mixed if both; else inconclusive."""
    if verdicts and all(v == "positive" for v in verdicts):
        return "agrees"
    if "negative" in verdicts:
        return "mixed" if "positive" in verdicts else "does not agree"
    return "inconclusive"


def _summary(mean: float, ci: float | None, n: int) -> dict:
    return {"mean": mean, "ci95": ci, "n": n}


def loop_start_rows(comparison: list[dict]) -> dict[str, dict]:
    """Per base, the comparison row of the model the online iterations start from."""
    return {r["our_base"]: r for r in comparison if (r["method"], r["iteration"]) in (("offline_dpo", "0"), ("base", "0"))}


def change_verdict(row: dict, start: dict, label: str) -> dict:
    """The change of `label` ('AE2 LC', ...) from the loop's start model to `row`, with its verdict."""
    def side(r):
        return _summary(r[f"{label} ours"], r.get(f"{label} ours ci95"), r["seeds"])
    return effect_verdict(summary_diff(side(row), side(start)))


def dpo_improves(comparison: list[dict]) -> Claim | None:
    """Each (base, iteration) of iterative DPO against the model the loop starts from, AlpacaEval LC."""
    start = loop_start_rows(comparison)
    verdicts, parts = [], []
    for r in comparison:
        s = start.get(r["our_base"])
        if r["method"] != "dpo" or s is None or "AE2 LC ours" not in r or "AE2 LC ours" not in s:
            continue
        v = change_verdict(r, s, "AE2 LC")
        verdicts.append(v["verdict"])
        parts.append(f"{r['our_base']} iter{r['iteration']} {v['mean_diff']:+.2f} ({verdict_note(v)})")
    if not verdicts:
        return None
    n_up, verdict = sum(v == "positive" for v in verdicts), combine(verdicts)
    return Claim(f"- *Iterative DPO improves AlpacaEval LC over the loop's start model at every iteration* (paper: "
                 f"yes, Table 1). Ours: {n_up} of {len(verdicts)} (base, iteration) cells improve by more than they "
                 f"can be told apart from the start: " + "; ".join(parts) + f": {bold(verdict)}.", verdict)


def paper_selm_minus_dpo(comparison: list[dict], base: str, iteration: str) -> float | None:
    """The paper's SELM - DPO AlpacaEval LC of the paper model that `base` plays, at `iteration`."""
    rows = {r["method"]: r for r in comparison if r["our_base"] == base and r["iteration"] == iteration}
    if "selm" not in rows or "dpo" not in rows or "AE2 LC paper" not in rows["selm"]:
        return None
    return rows["selm"]["AE2 LC paper"] - rows["dpo"]["AE2 LC paper"]


def one_seed_selm_vs_dpo(comparison: list[dict]) -> list[Claim]:
    """One seed (the paper's protocol): the plain SELM - DPO difference per iteration, no interval."""
    by_key = {(r["our_base"], r["method"], r["iteration"]): r for r in comparison}
    claims = []
    for (base, method, it), r in sorted(by_key.items()):
        d = by_key.get((base, "dpo", it))
        if method != "selm" or d is None or "AE2 LC ours" not in r or "AE2 LC ours" not in d:
            continue
        paper = paper_selm_minus_dpo(comparison, base, it)
        claims.append(Claim(
            f"- *SELM beats iterative DPO (AlpacaEval LC), iteration {it}* (paper: "
            + (f"{paper:+.2f}" if paper is not None else "yes") + f"). Ours, {base}: "
            f"{r['AE2 LC ours'] - d['AE2 LC ours']:+.2f} from one seed, so without an interval: "
            f"{bold('inconclusive')}.", "inconclusive"))
    return claims


PAIRED_CLAIMS = (("alpaca_lc_win_rate", "AlpacaEval LC"), ("mean_reward", "true reward r*"),
                 ("frac_prompts_covered", "high-reward coverage"))


def paired_selm_vs_dpo(paired: dict, comparison: list[dict]) -> list[Claim]:
    """SELM vs iterative DPO at the last iteration, paired by seed, per cell and measure."""
    claims = []
    for cell, entry in paired.items():
        if not entry["iterations"]:
            continue
        last, base = entry["iterations"][-1], cell.split("/")[0]
        for key, label in PAIRED_CLAIMS:
            if key not in last:
                continue
            t = last[key]
            v = effect_verdict(t, MACHINE_FLOOR.get(key, 0.0))
            ours = key != "alpaca_lc_win_rate"
            if ours:
                source = "ours, not the paper's: it has no true reward; its exploration argument implies SELM >= DPO"
            else:
                paper = paper_selm_minus_dpo(comparison, base, str(last["iteration"]))
                source = "paper: " + (f"{paper:+.2f} LC at this iteration" if paper is not None else "yes")
            claims.append(Claim(
                f"- *SELM beats iterative DPO at the last iteration ({label})* ({source}). Ours, {cell} iteration "
                f"{last['iteration']}: {t['mean_diff']:+.3f} {interval(t)}, {verdict_note(v)}: "
                f"{bold(WORDS[v['verdict']])}" + (" (SELM lower)" if v["verdict"] == "negative" else "") + ".",
                WORDS[v["verdict"]], ours))
    return claims


def greedy_reward_rises(fig3: dict) -> Claim:
    """Figure 3 right: the ranker's mean reward of greedy answers per SELM iteration; the verdict uses
    the true reward r* of the same cell (seed intervals), the ranker means having none."""
    means = [h["mean"] for _, h in sorted(fig3["hist_by_iteration"].items(), key=lambda kv: int(kv[0]))]
    text = (f"- *The reward of greedy answers moves up over SELM iterations (Figure 3 right)* (paper: yes). Ours: "
            f"mean ranker reward {' -> '.join(f'{m:.3f}' for m in means)}")
    curve = next((c for c in fig3["curves"].values() if c.get("cell") == fig3.get("shift_cell")), None)
    rstar = {int(t): s for t, s in (curve or {}).get("r_star", {}).items() if int(t) >= 1}
    if len(rstar) < 2:
        return Claim(text + f": one value per iteration, no interval: {bold('inconclusive')}.", "inconclusive")
    steps = [effect_verdict(summary_diff(rstar[t], rstar[t - 1]), MACHINE_FLOOR["r_star"])
             for t in sorted(rstar)[1:] if t - 1 in rstar]
    verdict = combine([v["verdict"] for v in steps])
    return Claim(text + "; r* of the same checkpoints " + " -> ".join(f"{rstar[t]['mean']:.3f}" for t in sorted(rstar))
                 + " (steps " + ", ".join(f"{v['mean_diff']:+.3f} ({verdict_note(v)})" for v in steps) + "): "
                 + bold(verdict) + ".", verdict)


def final_lc_by_alpha(fig3: dict) -> dict[float, dict]:
    """Figure 3 left: the last iteration's LC summary ({mean, ci95, n}) per alpha."""
    return {float(a): c["lc"][max(c["lc"], key=int)] for a, c in fig3["curves"].items()}


def alpha_verdicts(fig3: dict) -> dict:
    """'Too large an alpha hurts' (the largest alpha below every other beyond what the seeds resolve)
    and the alpha that is above every other beyond it (None if none is), decided with intervals."""
    final = final_lc_by_alpha(fig3)
    largest = max(final)
    below = [effect_verdict(summary_diff(final[a], final[largest]))["verdict"] for a in final if a != largest]
    above_all = [a for a in final if len(final) > 1 and all(
        effect_verdict(summary_diff(final[a], final[b]))["verdict"] == "positive" for b in final if b != a)]
    return {"final": final, "largest": largest, "below": below, "hurts": combine(below),
            "best": above_all[0] if above_all else None}


def alpha_claims(fig3: dict) -> Claim:
    """Figure 3 left, both halves of the paper's statement, each decided with intervals."""
    a = alpha_verdicts(fig3)
    best = a["best"]
    if best is None:
        best_text, best_verdict = "no alpha is above every other beyond the MDE: **inconclusive**.", "inconclusive"
    else:
        best_verdict = "agrees" if 0 < best < a["largest"] else "does not agree"
        best_text = f"alpha {best:g} is above every other alpha beyond the MDE: {bold(best_verdict)}."
    verdict = a["hurts"] if a["hurts"] == best_verdict else (
        "mixed" if {a["hurts"], best_verdict} == {"agrees", "does not agree"} else "inconclusive")
    return Claim(f"- *A small positive alpha is best and a too large alpha hurts (Figure 3 left)* (paper: alpha 0.001 "
                 "above both 0 and 0.01). Ours, final LC: " + ", ".join(
                     f"alpha {x:g}: {s['mean']:.2f}" for x, s in sorted(a["final"].items()))
                 + f". 'Too large an alpha hurts' (alpha {a['largest']:g} below each other alpha by more than the "
                 f"seeds resolve: {sum(v == 'positive' for v in a['below'])} of {len(a['below'])}): "
                 f"{bold(a['hurts'])}. 'A small positive alpha is best': " + best_text, verdict)


# Figure 6's orderings: (claim, better, worse, the paper's statement or None for a claim of ours)
FIGURE6_CLAIMS = (("ranking {y_w, y_l, y_ref} beats the label update ({y_w, y_ref})", "iterative", "rank_w_ref", "yes"),
                  ("iterative DPO beats stepwise DPO", "iterative", "stepwise", "yes"),
                  ("stepwise DPO beats offline DPO", "stepwise", "offline", None))


def figure6_claims(fig6: dict) -> list[Claim]:
    """Figure 6's orderings on the last point of each variant (the paper's y axis is MT-Bench): the
    difference of the two variants' seed means against its minimum detectable effect."""
    final = {label.split(" ")[0]: s["points"][-1] for label, s in fig6.items()}
    claims = []
    for claim, better, worse, paper in FIGURE6_CLAIMS:
        if better not in final or worse not in final:
            continue
        parts, verdicts = [], []
        for key, label in (("mt_bench", "MT-Bench"), ("r_star", "r*")):
            if key in final[better] and key in final[worse]:
                a, b = final[better][key], final[worse][key]
                v = effect_verdict(summary_diff(a, b), MACHINE_FLOOR.get(key, 0.0))
                verdicts.append(v["verdict"])
                parts.append(f"{label} {a['mean']:.3f} vs {b['mean']:.3f} ({v['mean_diff']:+.3f}, {verdict_note(v)}: "
                             f"{v['verdict'].replace('positive', 'higher').replace('negative', 'lower')})")
        source = f"paper: {paper}" if paper else "ours, not the paper's: it shows iterative DPO above both"
        verdict = combine(verdicts)
        claims.append(Claim(f"- *{claim} (Figure 6)* ({source}). Ours, last point: " + "; ".join(parts) + ": "
                            + bold(verdict) + ".", verdict, paper is None))
    return claims


def implicit_reward_claims(fig4: dict, fig5: dict) -> list[Claim]:
    """Figures 4 and 5: per-prompt implicit-reward differences (seeds pooled) against their MDE. The
    paper's Figure 4: SELM's implicit reward is higher than DPO's on both the chosen and the rejected
    test answers (docs/paper.md section 4), so both differences must be positive."""
    v4, parts4 = [], []
    for b, d in fig4.items():
        c = effect_verdict(sample_test(d["chosen_sorted"])) if "chosen_sorted" in d else None
        r = effect_verdict(sample_test(d["rejected_sorted"])) if "rejected_sorted" in d else None
        v4 += [c["verdict"], r["verdict"]] if c and r else ["inconclusive"]
        parts4.append(f"{b} {d['mean_chosen']:+.5f} / {d['mean_rejected']:+.5f}"
                      + (f" (MDE {c['mde']:.5f} / {r['mde']:.5f})" if c and r and c["mde"] and r["mde"] else ""))
    v5, parts5 = [], []
    for b, d in fig5.items():
        v = effect_verdict(sample_test(d["sorted"])) if "sorted" in d else None
        v5.append(v["verdict"] if v else "inconclusive")
        parts5.append(f"{b} {d['mean']:+.5f} ({100 * d['frac_positive']:.0f}% of prompts > 0"
                      + (f", MDE {v['mde']:.5f})" if v and v["mde"] else ")"))
    return [Claim("- *SELM's implicit reward exceeds DPO's on both the chosen and the rejected test answers "
                  "(Figure 4)* (paper: yes). Ours, per-prompt means over seeds, chosen / rejected: " + "; ".join(parts4)
                  + f": {bold(combine(v4))}.", combine(v4)),
            Claim("- *SELM's own samples carry higher implicit reward than DPO's (Figure 5)* (paper: yes). Ours: "
                  + "; ".join(parts5) + f": {bold(combine(v5))}.", combine(v5))]


def all_claims(comparison: list[dict], paired: dict, fig3: dict, fig4: dict, fig5: dict,
               fig6: dict | None = None) -> list[Claim]:
    """Every claim the report checks, in the report's order."""
    claims = [c for c in [dpo_improves(comparison)] if c is not None]
    if not any(entry["iterations"] for entry in paired.values()):
        claims += one_seed_selm_vs_dpo(comparison)
    claims += paired_selm_vs_dpo(paired, comparison)
    claims += [greedy_reward_rises(fig3), alpha_claims(fig3)]
    claims += figure6_claims(fig6 or {})
    claims += implicit_reward_claims(fig4, fig5)
    return claims
