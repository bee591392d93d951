"""results/REPORT.md: the text around the tables and figures. Every sentence that states a result
is computed from the analysis files, so the report says what the runs measured, whatever it is."""

from __future__ import annotations

import os
from pathlib import Path

from selm.provenance import provenance
from selm.report.stats import MACHINE_FLOOR, effect_verdict, fmt_threshold, sample_test, summary_diff

# what a verdict on "a > b" is called in the report
WORDS = {"positive": "**agrees**", "negative": "**does not agree**", "inconclusive": "**inconclusive**"}


def _rel(path: Path, report: Path) -> str:
    return os.path.relpath(path, report.parent)


def _verdict_note(v: dict) -> str:
    """What the difference was held against ('MDE 0.004, floor 0.016') and, when inconclusive, why."""
    if v["verdict"] != "inconclusive":
        return fmt_threshold(v)
    return v["reason"] if "below the" in v["reason"] or v["threshold"] is None else f"{v['reason']}; {fmt_threshold(v)}"


def _interval(t: dict) -> str:
    """'[-0.002, +0.001]', or why there is none."""
    if t.get("ci_low") is None:
        return "no interval (same difference in every seed)" if t.get("n", 0) >= 2 else "no interval (one seed)"
    return f"[{t['ci_low']:+.3f}, {t['ci_high']:+.3f}]"


def _selm_vs_dpo_sentence(paired: dict) -> str:
    lines = []
    for cell, entry in paired.items():
        if not entry["iterations"]:  # fewer than 2 seeds: nothing to test
            continue
        last = entry["iterations"][-1]
        parts = []
        for key, label in (("mean_reward", "r*"), ("alpaca_lc_win_rate", "AE2 LC"), ("mt_bench_average", "MT-Bench")):
            if key in last:
                t = last[key]
                v = effect_verdict(t, MACHINE_FLOOR.get(key, 0.0))
                sig = {"positive": "SELM higher", "negative": "SELM lower", "inconclusive": "inconclusive"}[v["verdict"]]
                parts.append(f"{label} {t['mean_diff']:+.3f} (95% CI {_interval(t)}, {_verdict_note(v)}: {sig})")
        lines.append(f"- {cell}, iteration {last['iteration']}: " + "; ".join(parts) + ".")
    return "\n".join(lines)


def _paper_agreement(comparison: list[dict]) -> str:
    """Does each method move the scores the way it moves them in the paper (sign of the change from
    the loop's start), and does SELM beat DPO where the paper's does?"""
    lines = []
    for r in comparison:
        if r["method"] not in ("dpo", "selm"):
            continue
        for label in ("AE2 LC", "MT avg", "academic mean"):
            ours, paper = r.get(f"{label} ours delta"), r.get(f"{label} paper delta")
            if ours is None or paper is None:
                continue
            agree = (ours > 0) == (paper > 0)
            lines.append((r["paper_model"], label, ours, paper, agree))
    n_agree = sum(x[-1] for x in lines)
    text = [f"The direction of the change from the loop's start model agrees with the paper in {n_agree} of "
            f"{len(lines)} (model, metric) cells."]
    disagree = [f"{m} {label} (ours {o:+.2f}, paper {p:+.2f})" for m, label, o, p, a in lines if not a]
    if disagree:
        text.append("Where it does not: " + "; ".join(disagree) + ".")
    by_key = {(r["our_base"], r["iteration"], r["method"]): r for r in comparison}
    sel = []
    for (base, it, method), r in sorted(by_key.items()):
        if method != "selm" or (base, it, "dpo") not in by_key:
            continue
        d = by_key[(base, it, "dpo")]
        if "AE2 LC ours" in r and "AE2 LC ours" in d:
            sel.append(f"{base} iter{it}: ours SELM - DPO {r['AE2 LC ours'] - d['AE2 LC ours']:+.2f} LC, "
                       f"paper {r['AE2 LC paper'] - d['AE2 LC paper']:+.2f}")
    if sel:
        text.append("SELM minus iterative DPO, AlpacaEval LC: " + "; ".join(sel) + ".")
    return " ".join(text)


def _combine(verdicts: list[str]) -> str:
    """One verdict on a claim made of several comparisons: agrees only if every one is a definitive
    "positive"; does not agree if some are negative and none positive; mixed if both; else inconclusive."""
    if verdicts and all(v == "positive" for v in verdicts):
        return "**agrees**"
    if "negative" in verdicts:
        return "**mixed**" if "positive" in verdicts else "**does not agree**"
    return "**inconclusive**"


def _summary(mean: float, ci: float | None, n: int) -> dict:
    return {"mean": mean, "ci95": ci, "n": n}


def _figure6_claims(fig6: dict) -> list[str]:
    """Figure 6's orderings on the last point of each variant (the paper's y axis is MT-Bench): the
    difference of the two variants' seed means against its minimum detectable effect."""
    final = {label.split(" ")[0]: s["points"][-1] for label, s in fig6.items()}
    lines = []
    for claim, better, worse in (("ranking {y_w, y_l, y_ref} beats ranking {y_w, y_ref}", "iterative", "rank_w_ref"),
                                 ("iterative DPO beats stepwise DPO", "iterative", "stepwise"),
                                 ("stepwise DPO beats offline DPO", "stepwise", "offline")):
        if better not in final or worse not in final:
            continue
        parts, verdicts = [], []
        for key, label in (("mt_bench", "MT-Bench"), ("r_star", "r*")):
            if key in final[better] and key in final[worse]:
                a, b = final[better][key], final[worse][key]
                v = effect_verdict(summary_diff(a, b), MACHINE_FLOOR.get(key, 0.0))
                verdicts.append(v["verdict"])
                parts.append(f"{label} {a['mean']:.3f} vs {b['mean']:.3f} ({v['mean_diff']:+.3f}, {_verdict_note(v)}: "
                             f"{v['verdict'].replace('positive', 'higher').replace('negative', 'lower')})")
        lines.append(f"- *{claim} (Figure 6)* (paper: yes). Ours, last point: " + "; ".join(parts) + ": "
                     + _combine(verdicts) + ".")
    return lines


def _dpo_improves(comparison: list[dict]) -> str | None:
    """Each (base, iteration) of iterative DPO against the model the loop starts from, AlpacaEval LC."""
    start = {r["our_base"]: r for r in comparison if (r["method"], r["iteration"]) in (("offline_dpo", "0"), ("base", "0"))}
    verdicts, parts = [], []
    for r in comparison:
        s = start.get(r["our_base"])
        if r["method"] != "dpo" or s is None or "AE2 LC ours" not in r or "AE2 LC ours" not in s:
            continue
        v = effect_verdict(summary_diff(_summary(r["AE2 LC ours"], r.get("AE2 LC ours ci95"), r["seeds"]),
                                        _summary(s["AE2 LC ours"], s.get("AE2 LC ours ci95"), s["seeds"])))
        verdicts.append(v["verdict"])
        parts.append(f"{r['our_base']} iter{r['iteration']} {v['mean_diff']:+.2f} ({_verdict_note(v)})")
    if not verdicts:
        return None
    n_up = sum(v == "positive" for v in verdicts)
    return (f"- *Iterative DPO improves AlpacaEval LC over the loop's start model at every iteration* (paper: yes). "
            f"Ours: {n_up} of {len(verdicts)} (base, iteration) cells improve by more than they can be told apart "
            f"from the start: " + "; ".join(parts) + f": {_combine(verdicts)}.")


def _greedy_reward_rises(fig3: dict) -> str:
    """Figure 3 right: the ranker's mean reward of greedy answers per SELM iteration; the verdict uses
    the true reward r* of the same cell (seed intervals), the ranker means having none."""
    means = [h["mean"] for _, h in sorted(fig3["hist_by_iteration"].items(), key=lambda kv: int(kv[0]))]
    text = (f"- *The reward of greedy answers moves up over SELM iterations (Figure 3 right)* (paper: yes). Ours: "
            f"mean ranker reward {' -> '.join(f'{m:.3f}' for m in means)}")
    curve = next((c for c in fig3["curves"].values() if c.get("cell") == fig3.get("shift_cell")), None)
    rstar = {int(t): s for t, s in (curve or {}).get("r_star", {}).items() if int(t) >= 1}
    if len(rstar) < 2:
        return text + ": one value per iteration, no interval: **inconclusive**."
    steps = [effect_verdict(summary_diff(rstar[t], rstar[t - 1]), MACHINE_FLOOR["r_star"])
             for t in sorted(rstar)[1:] if t - 1 in rstar]
    return (text + "; r* of the same checkpoints " + " -> ".join(f"{rstar[t]['mean']:.3f}" for t in sorted(rstar))
            + " (steps " + ", ".join(f"{v['mean_diff']:+.3f} ({_verdict_note(v)})" for v in steps) + "): "
            + _combine([v["verdict"] for v in steps]) + ".")


def _alpha_claims(fig3: dict) -> str:
    """Figure 3 left: final LC per alpha; 'too large an alpha hurts' holds if the largest alpha is
    below every other by more than the difference the seeds can resolve."""
    final = {float(a): c["lc"][max(c["lc"], key=int)] for a, c in fig3["curves"].items()}
    largest = max(final)
    below = [effect_verdict(summary_diff(final[a], final[largest]))["verdict"] for a in final if a != largest]
    best = max(final, key=lambda a: final[a]["mean"])
    best_vs = [effect_verdict(summary_diff(final[best], final[a]))["verdict"] for a in final if a != best]
    resolved = bool(best_vs) and all(v == "positive" for v in best_vs)
    return (f"- *A small positive alpha is best and a too large alpha hurts (Figure 3 left)* (paper: alpha 0.001 "
            "above both 0 and 0.01). Ours, final LC: " + ", ".join(f"alpha {a:g}: {s['mean']:.2f}" for a, s in sorted(final.items()))
            + f". 'Too large an alpha hurts' (alpha {largest:g} below each other alpha by more than the seeds resolve: "
            f"{sum(v == 'positive' for v in below)} of {len(below)}): {_combine(below)}. 'A small positive alpha is best': "
            f"the best mean is alpha {best:g}, " + ("above every other alpha beyond its MDE." if resolved else
                                                     "but not above every other alpha beyond the MDE: **inconclusive**."))


def _implicit_reward_claims(fig4: dict, fig5: dict) -> list[str]:
    """Figures 4 and 5: per-prompt implicit-reward differences (seeds pooled) against their MDE."""
    v4, parts4 = [], []
    for b, d in fig4.items():
        c = effect_verdict(sample_test(d["chosen_sorted"])) if "chosen_sorted" in d else None
        r = effect_verdict(sample_test(d["rejected_sorted"])) if "rejected_sorted" in d else None
        if c is None or r is None:
            v4.append("inconclusive")
        else:  # chosen should be positive, rejected negative
            v4 += [c["verdict"], {"positive": "negative", "negative": "positive"}.get(r["verdict"], "inconclusive")]
        parts4.append(f"{b} {d['mean_chosen']:+.5f} / {d['mean_rejected']:+.5f}"
                      + (f" (MDE {c['mde']:.5f} / {r['mde']:.5f})" if c and r and c["mde"] and r["mde"] else ""))
    v5, parts5 = [], []
    for b, d in fig5.items():
        v = effect_verdict(sample_test(d["sorted"])) if "sorted" in d else None
        v5.append(v["verdict"] if v else "inconclusive")
        parts5.append(f"{b} {d['mean']:+.5f} ({100 * d['frac_positive']:.0f}% of prompts > 0"
                      + (f", MDE {v['mde']:.5f})" if v and v["mde"] else ")"))
    return ["- *SELM's implicit reward exceeds DPO's on chosen answers and falls below it on rejected ones "
            "(Figure 4)* (paper: yes). Ours, per-prompt means over seeds: " + "; ".join(parts4) + f": {_combine(v4)}.",
            "- *SELM's own samples carry higher implicit reward than DPO's (Figure 5)* (paper: yes). Ours: "
            + "; ".join(parts5) + f": {_combine(v5)}."]


def plain_agreement(comparison: list[dict], paired: dict, fig3: dict, fig4: dict, fig5: dict,
                    fig6: dict | None = None) -> str:
    """The paper's claims one by one, each with what our runs measured and a verdict: agrees / does not
    agree only when the difference is beyond the smallest one the design can detect (stats.effect_verdict),
    otherwise inconclusive."""
    lines = []
    dpo = _dpo_improves(comparison)
    if dpo:
        lines.append(dpo)
    if not any(entry["iterations"] for entry in paired.values()):
        # one seed (the paper's protocol): the plain difference of the last iteration, no interval
        by_key = {(r["our_base"], r["method"], r["iteration"]): r for r in comparison}
        for (base, method, it), r in sorted(by_key.items()):
            d = by_key.get((base, "dpo", it))
            if method != "selm" or d is None or "AE2 LC ours" not in r or "AE2 LC ours" not in d:
                continue
            diff = r["AE2 LC ours"] - d["AE2 LC ours"]
            lines.append(f"- *SELM beats iterative DPO (AlpacaEval LC), iteration {it}* (paper: "
                         f"{r['AE2 LC paper'] - d['AE2 LC paper']:+.2f}). Ours, {base}: {diff:+.2f} from one seed, "
                         f"so without an interval: **inconclusive**.")
    for cell, entry in paired.items():
        if not entry["iterations"]:
            continue
        last = entry["iterations"][-1]
        for key, label in (("alpaca_lc_win_rate", "AlpacaEval LC"), ("mean_reward", "true reward r*"),
                           ("frac_prompts_covered", "high-reward coverage")):
            if key not in last:
                continue
            t = last[key]
            v = effect_verdict(t, MACHINE_FLOOR.get(key, 0.0))
            paper = ("paper: LC +2.06 Zephyr, +1.50 Llama-3" if key == "alpaca_lc_win_rate" else
                     "the paper cannot measure this; its exploration claim implies SELM >= DPO")
            lines.append(f"- *SELM beats iterative DPO at the last iteration ({label})* ({paper}). Ours, {cell} "
                         f"iteration {last['iteration']}: {t['mean_diff']:+.3f} {_interval(t)}, {_verdict_note(v)}: "
                         f"{WORDS[v['verdict']]}" + (" (SELM lower)" if v["verdict"] == "negative" else "") + ".")
    lines.append(_greedy_reward_rises(fig3))
    lines.append(_alpha_claims(fig3))
    lines += _figure6_claims(fig6 or {})
    lines += _implicit_reward_claims(fig4, fig5)
    return "\n".join(lines)


def render(*, args, spec, comparison, paired, regimes, load, fig1_facts, tables: Path, figdir: Path, paired_md: str,
           coverage_md: str | None, regime_md: str | None, regime_conclusion: str | None, comparison_md: str) -> str:
    report = args.report
    prov = provenance(command="dvc repro dvc.yaml")
    fig3, fig4, fig5, fig6 = (load("figure3_alpha.json"), load("figure4_ird.json"), load("figure5_own_samples.json"),
                              load("figure6_ablations.json"))
    img = lambda name: f"![{name}]({_rel(figdir / name, report)})"  # noqa: E731
    variants = {}
    variant_stats = Path("data/variants/weak_corpus/stats.json")
    if variant_stats.is_file():
        import json

        variants = json.loads(variant_stats.read_text())
    seeds = list(spec.seeds)
    out = [
        f"# SELM reproduction report ({args.scale} scale)",
        "",
        "Generated by the `report` stage of `dvc repro dvc.yaml` (`python -m selm.report.build`) from the runs "
        f"named in `{args.spec}`; do not edit by hand. Git commit `{prov.get('git_commit')}`; package versions and "
        f"every run's config hash are in `{_rel(tables / 'provenance.json', report)}`, each run's composed config in "
        "`runs/<experiment>/<cell>/seed<seed>/config.json`.",
        "",
        f"Scale: {str(spec.get('description', args.scale)).strip()} Seeds {seeds} for every cell; ± and [brackets] are "
        "95% t intervals over seeds (none for one seed); SELM-vs-DPO comparisons are paired by seed. A verdict is "
        "definitive only when the difference's 95% interval excludes 0 and the difference is at least the minimum "
        "detectable effect (MDE: the smallest true difference this many seeds with this spread detect at alpha 0.05 "
        f"with 80% power) and, in r*, at least {MACHINE_FLOOR['mean_reward']} (how far the SFT base's r* moved between "
        "two machines of the same kind); otherwise it says **inconclusive**.",
        "",
        "## What agrees with the paper and what does not",
        "",
        plain_agreement(comparison, paired, fig3, fig4, fig5, fig6),
        "",
        "## Tables 1 and 2 beside the paper",
        "",
        "Ours is the toy scale, so absolute numbers are not comparable to the paper's (different models, judge and "
        "tasks). What can agree is the direction of each change: Δ is the change from the model the online "
        "iterations start from (Zephyr-7B-DPO / tiny-sft's offline-DPO iteration 0; Llama-3-8B-Instruct / the "
        "tiny-instruct SFT base). 'academic mean' is the mean of the scale's lm-eval suite (toy: two world tasks; "
        f"paper: six Open LLM Leaderboard v1 tasks). Full tables: `{_rel(tables / 'table1.md', report)}`, "
        f"`{_rel(tables / 'table2.md', report)}`, `{_rel(tables / 'paper_comparison.md', report)}` (and `.csv`).",
        "",
        comparison_md,
        "",
        _paper_agreement(comparison),
        "",
        "## SELM vs iterative DPO, paired by seed",
        "",
        "Difference SELM - DPO per iteration with its 95% CI, the paired t-test p-value, and in how many seeds SELM "
        "was higher. r* is the true reward of greedy answers to 300 held-out prompts (the toy world knows it); AE2 "
        "LC, MT avg and lm-eval are the judge's and the harness's verdicts on the same checkpoints.",
        "",
        paired_md,
        "",
        _selm_vs_dpo_sentence(paired),
        "",
        *([] if coverage_md is None else [
            "### Exploration: high-reward coverage",
            "",
            "For each held-out prompt, 8 samples at T = 1 from the checkpoint: coverage is the fraction of prompts "
            "with at least one fully correct sample (r* = 1); also the mean best-of-8 r* and the mean number of "
            "distinct answers among the 8. This is the paper's exploration claim measured directly.",
            "",
            coverage_md,
            ""]),
        "## Figures",
        "",
        "### Figure 1: the concept",
        "",
        img("figure1_concept.png"),
        "",
        "Drawn from a 1-D toy reward, not data: a bootstrap ensemble of cubic fits to responses seen only in "
        f"[0, 0.6]. The vanilla fit's maximum is at x = {fig1_facts['vanilla_argmax']:.2f}, the optimistic one's "
        f"(mean + 2 sd) at x = {fig1_facts['optimistic_argmax']:.2f}; the true maximum is at "
        f"x = {fig1_facts['true_argmax']:.2f}.",
        "",
        "### Figure 2: pairwise AlpacaEval LC heatmaps",
        "",
        *[img(f"figure2_heatmap_{b}.png") for b in spec.bases],
        "",
        "Row model vs column model (the column's answers are the reference), LC win rate in %, mean over seeds; rows "
        "ordered by win rate against the base (tiny-sft: its offline-DPO iteration 0, as Zephyr-7B-DPO in the paper).",
        "",
        "### Figure 3: alpha ablation and reward distributions",
        "",
        img("figure3_alpha.png"),
        "",
        "Left: AlpacaEval LC per iteration for alpha in "
        f"{sorted(float(a) for a in fig3['curves'])} (tiny-sft). Middle and right: {fig3['reward']}. "
        "Mean ranker reward of the greedy test answers by iteration for "
        f"{fig3['shift_cell']}: " + ", ".join(f"iteration {t}: {h['mean']:.3f}"
                                              for t, h in sorted(fig3["hist_by_iteration"].items())) + ".",
        "",
        "### Figure 4: implicit reward difference on test chosen and rejected answers",
        "",
        img("figure4_ird.png"),
        "",
        " ".join(f"{b}: mean r_SELM - r_DPO on chosen {d['mean_chosen']:+.4f} ({100 * d['frac_chosen_positive']:.0f}% "
                 f"of prompts > 0), on rejected {d['mean_rejected']:+.4f} ({100 * d['frac_rejected_negative']:.0f}% < 0)."
                 for b, d in fig4.items())
        + " The paper reports SELM's implicit reward higher on chosen and lower on rejected answers.",
        "",
        "### Figure 5: implicit reward of the model's own samples",
        "",
        img("figure5_own_samples.png"),
        "",
        " ".join(f"{b}: mean SELM - DPO {d['mean']:+.4f}, positive for {100 * d['frac_positive']:.0f}% of prompts."
                 for b, d in fig5.items())
        + " The paper reports SELM's own samples with higher implicit reward than DPO's.",
        "",
        "### Figure 6: iterative-DPO ablations",
        "",
        img("figure6_ablations.png"),
        "",
        "Final point of each variant (MT-Bench" + (", r*" if all("r_star" in s["points"][-1] for s in fig6.values())
                                                   else "") + "): " + "; ".join(
            f"{label}: {s['points'][-1]['mt_bench']['mean']:.2f}"
            + (f", {s['points'][-1]['r_star']['mean']:.3f}" if "r_star" in s["points"][-1] else "")
            for label, s in fig6.items()) + ".",
        "",
    ]
    if regime_md is None:
        return "\n".join(out) + "\n"
    out += [
        "## Regime map: when does optimism help?",
        "",
        "Each regime changes one factor of the standard tiny-sft setting: `weak_corpus` re-annotates the offline "
        "pairs with annotators that never write the gold answer"
        + (f" (mean r* of chosen answers {variants['original']['mean_r_chosen']:.3f} -> "
           f"{variants['variant_stats']['mean_r_chosen']:.3f})" if variants else "")
        + "; `sampled_y_ref` samples y_ref at T = 1 instead of greedy; `hard_tasks` keeps the four families with the "
        "lowest SFT reward (add, count, rotate, sort). Verdicts: helps / hurts when the 95% CI of the paired "
        "difference in final-iteration r* excludes 0 and the difference is at least the threshold (the larger of "
        "its MDE and the between-machine floor), else inconclusive.",
        "",
        img("regime_map.png"),
        "",
        regime_md,
        "",
        "**Conclusion (as measured):**",
        "",
        regime_conclusion,
        "",
    ]
    return "\n".join(out) + "\n"
