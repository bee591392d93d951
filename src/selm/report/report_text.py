"""results/REPORT.md: the text around the tables and figures. Every sentence that states a result
is computed from the analysis files, so the report says what the runs measured, whatever it is."""

from __future__ import annotations

import os
from pathlib import Path

from selm.provenance import provenance


def _rel(path: Path, report: Path) -> str:
    return os.path.relpath(path, report.parent)


def _selm_vs_dpo_sentence(paired: dict) -> str:
    lines = []
    for cell, entry in paired.items():
        if not entry["iterations"]:  # fewer than 2 seeds: nothing to test
            continue
        last = entry["iterations"][-1]
        parts = []
        for key, label, scale in (("mean_reward", "r*", 1), ("alpaca_lc_win_rate", "AE2 LC", 1),
                                  ("mt_bench_average", "MT-Bench", 1)):
            if key in last:
                t = last[key]
                sig = "SELM higher" if t["ci_low"] > 0 else "SELM lower" if t["ci_high"] < 0 else "no detectable difference"
                parts.append(f"{label} {t['mean_diff']:+.3f} (95% CI [{t['ci_low']:+.3f}, {t['ci_high']:+.3f}]: {sig})")
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


def _verdict(agree: bool | None) -> str:
    return {True: "**agrees**", False: "**does not agree**", None: "**no detectable difference**"}[agree]


def _figure6_claims(fig6: dict) -> list[str]:
    """Figure 6's orderings on the last point of each variant (the paper's y axis is MT-Bench)."""
    final = {label.split(" ")[0]: s["points"][-1] for label, s in fig6.items()}
    lines = []
    for claim, better, worse in (("ranking {y_w, y_l, y_ref} beats ranking {y_w, y_ref}", "iterative", "rank_w_ref"),
                                 ("iterative DPO beats stepwise DPO", "iterative", "stepwise"),
                                 ("stepwise DPO beats offline DPO", "stepwise", "offline")):
        if better not in final or worse not in final:
            continue
        parts, verdicts, overlaps = [], [], []
        for key, label in (("mt_bench", "MT-Bench"), ("r_star", "r*")):
            if key in final[better] and key in final[worse]:
                a, b = final[better][key], final[worse][key]
                overlaps.append(abs(a["mean"] - b["mean"]) < a["ci95"] + b["ci95"])
                parts.append(f"{label} {a['mean']:.3f} vs {b['mean']:.3f}" + (" (intervals overlap)" if overlaps[-1] else ""))
                verdicts.append(a["mean"] > b["mean"])
        within = ", within the seed intervals" if all(overlaps) else ", partly within the seed intervals" if any(overlaps) else ""
        verdict = ("**agrees** in direction" + within
                   if all(verdicts) else "**does not agree**" if not any(verdicts) else "**mixed**")
        lines.append(f"- *{claim} (Figure 6)* (paper: yes). Ours, last point: " + "; ".join(parts) + ": " + verdict + ".")
    return lines


def plain_agreement(comparison: list[dict], paired: dict, fig3: dict, fig4: dict, fig5: dict,
                    fig6: dict | None = None) -> str:
    """The paper's claims one by one, each with what our runs measured and a verdict."""
    lines = []
    dpo_deltas = [r["AE2 LC ours delta"] for r in comparison if r["method"] == "dpo" and "AE2 LC ours delta" in r]
    if dpo_deltas:
        lines.append(f"- *Iterative DPO improves AlpacaEval LC over the loop's start model at every iteration* (paper: "
                     f"yes). Ours: {sum(d > 0 for d in dpo_deltas)} of {len(dpo_deltas)} (base, iteration) cells "
                     f"improve: {_verdict(all(d > 0 for d in dpo_deltas))}.")
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
                         f"so without an interval: {_verdict(diff > 0)} in sign.")
    for cell, entry in paired.items():
        if not entry["iterations"]:
            continue
        last = entry["iterations"][-1]
        for key, label in (("alpaca_lc_win_rate", "AlpacaEval LC"), ("mean_reward", "true reward r*"),
                           ("frac_prompts_covered", "high-reward coverage")):
            if key not in last:
                continue
            t = last[key]
            agree = True if t["ci_low"] > 0 else False if t["ci_high"] < 0 else None
            paper = ("paper: LC +2.06 Zephyr, +1.50 Llama-3" if key == "alpaca_lc_win_rate" else
                     "the paper cannot measure this; its exploration claim implies SELM >= DPO")
            lines.append(f"- *SELM beats iterative DPO at the last iteration ({label})* ({paper}). Ours, {cell} "
                         f"iteration {last['iteration']}: {t['mean_diff']:+.3f} [{t['ci_low']:+.3f}, {t['ci_high']:+.3f}]: "
                         f"{_verdict(agree)}" + (" (SELM lower)" if agree is False else "") + ".")
    means = [h["mean"] for _, h in sorted(fig3["hist_by_iteration"].items(), key=lambda kv: int(kv[0]))]
    lines.append(f"- *The reward of greedy answers moves up over SELM iterations (Figure 3 right)* (paper: yes). Ours: "
                 f"mean ranker reward {' -> '.join(f'{m:.3f}' for m in means)}: "
                 f"{_verdict(all(b > a for a, b in zip(means, means[1:])))}.")
    final = {float(a): c["lc"][max(c["lc"], key=int)]["mean"] for a, c in fig3["curves"].items()}
    best, largest = max(final, key=final.get), max(final)
    lines.append(f"- *A small positive alpha is best and a too large alpha hurts (Figure 3 left)* (paper: alpha 0.001 "
                 f"above both 0 and 0.01). Ours, final LC: " + ", ".join(f"alpha {a:g}: {v:.2f}" for a, v in sorted(final.items()))
                 + f". 'Too large an alpha hurts': {_verdict(final[largest] == min(final.values()))} (alpha "
                 f"{largest:g} is {'the' if final[largest] == min(final.values()) else 'not the'} lowest). 'A small "
                 f"positive alpha is best': the best is alpha {best:g}, but the differences among the smaller alphas are "
                 "within the seed CIs of the curves, so this part is not resolved.")
    lines += _figure6_claims(fig6 or {})
    ok4 = all(d["mean_chosen"] > 0 and d["mean_rejected"] < 0 for d in fig4.values())
    lines.append("- *SELM's implicit reward exceeds DPO's on chosen answers and falls below it on rejected ones "
                 "(Figure 4)* (paper: yes). Ours: " + "; ".join(
                     f"{b} {d['mean_chosen']:+.5f} / {d['mean_rejected']:+.5f}" for b, d in fig4.items())
                 + f": {_verdict(ok4)}.")
    ok5 = all(d["mean"] > 0 and d["frac_positive"] > 0.5 for d in fig5.values())
    lines.append("- *SELM's own samples carry higher implicit reward than DPO's (Figure 5)* (paper: yes). Ours: " + "; ".join(
        f"{b} {d['mean']:+.5f} ({100 * d['frac_positive']:.0f}% of prompts > 0)" for b, d in fig5.items())
        + f": {_verdict(ok5)}.")
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
        "95% t intervals over seeds; SELM-vs-DPO comparisons are paired by seed.",
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
        "lowest SFT reward (add, count, rotate, sort). Verdicts: the 95% CI of the paired difference in "
        "final-iteration r* excludes 0 (helps / hurts) or not.",
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
