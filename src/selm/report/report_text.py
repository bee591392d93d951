"""results/REPORT.md: the text around the tables and figures, one renderer per section.

Every sentence that states a result is rendered from the analysis files (selm.report.analyze), the
comparison table and the verdicts of analysis/claims.json (selm.report.claims, computed by the analyze
stage); this module only chooses what to quote and computes no statistic. The
wording that depends on the scale (how its numbers compare with the paper's, what its true reward is,
what it cannot test, how the report is regenerated) comes from the spec's `report` section
(experiments/<scale>.yaml, `REPORT_KEYS`), so no sentence written for one scale appears in another's
report.

The report: a five-line summary, a table of contents, how to read the verdicts, the paper's claims,
Tables 1-2 beside the paper, the paired SELM-vs-DPO tests, the figures (each with a one-sentence
takeaway computed from its numbers), the regime map where the scale has one, then the `extra`
sections a caller passes (`Section(title, body)`: experiments added beside the paper's).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from selm import layout
from selm.report.claims_text import WORDS, interval, render_claims, verdict_note, versus_text
from selm.report.stats import MACHINE_FLOOR, fmt_mean_ci

# The spec's `report` section: key -> (required, what it says)
REPORT_KEYS = {
    "name": (True, "the scale in a few words, for the summary"),
    "command": (True, "the command that regenerates this report"),
    "comparability": (True, "how this scale's numbers compare with the paper's"),
    "academic": (True, "what the scale's lm-eval suite is"),
    "mt_bench": (True, "what the scale's MT-Bench runs repeat (judge or generation)"),
    "untested": (True, "what this scale cannot test"),
    "true_reward": (False, "what r* is (scales with a known true reward)"),
    "coverage": (False, "how high-reward coverage is measured (scales with r*)"),
    "regimes": (False, "what each regime of the regime map changes"),
    "controls": (False, "which verdicts come from a named, longer experiment and where its report is"),
}


@dataclass(frozen=True)
class Section:
    """One `## title` section of the report."""

    title: str
    body: str


@dataclass
class ReportData:
    """What the renderers read: the spec and its path, the analyses, the comparison rows, the verdicts
    (claims.json) and the tables' Markdown, all made by earlier stages or selm.report.build."""

    scale: str
    spec_path: str
    spec: object
    report: Path
    tables: Path
    figdir: Path
    comparison: list[dict]
    paired: dict
    claims: dict               # analysis/claims.json (selm.report.claims)
    figs: dict[str, dict]      # analysis file stem -> its content (figure1 is the concept sketch's facts)
    markdown: dict[str, str | None]  # comparison, paired, coverage, regimes, regime_conclusion
    regimes: dict | None = None
    variants: dict = field(default_factory=dict)  # data/variants/weak_corpus/stats.json, where it exists
    machine: str = "unknown machine"
    commit: str | None = None
    runs: dict[str, int] = field(default_factory=dict)  # experiment -> number of loop runs
    extra: list[Section] = field(default_factory=list)


def wording(data: ReportData, key: str) -> str | None:
    """The spec's `report.<key>`, whitespace-normalised; a missing required key or an unknown one is
    an error naming the spec file."""
    section = data.spec.get("report") or {}
    unknown = sorted(set(section) - set(REPORT_KEYS))
    if unknown:
        raise KeyError(f"{data.spec_path}: report.{unknown[0]} is not a known key; known: {sorted(REPORT_KEYS)}")
    if key not in section:
        if REPORT_KEYS[key][0]:
            raise KeyError(f"{data.spec_path}: report.{key} is missing ({REPORT_KEYS[key][1]})")
        return None
    return " ".join(str(section[key]).split())


def _rel(path: Path, report: Path) -> str:
    return os.path.relpath(path, report.parent)


def anchor(title: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")


# --- the first screen ----------------------------------------------------------------------------------

def _headline(data: ReportData) -> str:
    """SELM minus DPO at the last iteration per cell: AlpacaEval LC and, where measured, r*."""
    parts = []
    for cell, entry in data.claims["paired_last"].items():
        last = data.paired[cell]["iterations"][-1]
        for key, label in (("alpaca_lc_win_rate", "AE2 LC"), ("mean_reward", "r*")):
            if key in last:
                v = entry["verdicts"][key]
                parts.append(f"{cell} {label} {last[key]['mean_diff']:+.3f} {interval(last[key])} "
                             f"({v['verdict'].replace('positive', 'SELM higher').replace('negative', 'SELM lower')})")
    if parts:
        return "SELM minus iterative DPO at the last iteration, paired by seed: " + "; ".join(parts) + "."
    by_base = {d["base"]: d for d in data.claims["selm_minus_dpo"]}  # the last iteration of each base
    diffs = [f"{b} {d['ours']:+.2f} (iteration {d['iteration']})" for b, d in sorted(by_base.items())]
    return ("SELM minus iterative DPO, AlpacaEval LC, one seed (no interval): " + "; ".join(diffs) + "."
            if diffs else "no SELM-vs-DPO comparison was run.")


PAIRED_LABELS = {"mean_reward": "r*", "alpaca_lc_win_rate": "AE2 LC", "mt_bench_average": "MT-Bench",
                 "frac_prompts_covered": "coverage"}


def _across_bases(data: ReportData) -> str | None:
    """The first screen's line on the SFT base: which SELM - DPO effects exceed the between-base spread
    that the controls experiment measured (claims.json's `between_bases`), or that it was not measured.
    None where the scale's spec does not name the controls' file."""
    b = data.claims.get("between_bases")
    if b is None:
        return None
    if b["status"] != "measured":
        return (f"not measured: `{b['source']}` is {'absent' if b['status'] == 'absent' else 'empty'} (the controls "
                "experiment, `dvc repro experiments/controls/dvc.yaml`, measures how far a loop difference moves "
                "between SFT bases), so every SELM-vs-DPO verdict here holds for one SFT base per model and is not "
                "known to hold for another.")
    effects = [(f"{cell} {PAIRED_LABELS.get(k, k)}", PAIRED_LABELS.get(k, k), a)
               for cell, keys in b["paired"].items() for k, a in keys.items()]
    effects += [(f"regime {name} alpha {alpha} r*", "r*", a) for name, alphas in b["regimes"].items()
                for alpha, a in alphas.items()]
    measured = [(n, a) for n, _, a in effects if a["exceeds"] is not None]
    above = [n for n, a in measured if a["exceeds"]]
    spreads = ", ".join(f"{PAIRED_LABELS.get(k, k)} {v['sd_between']:.3g}" for k, v in b["spread"].items())
    n_bases = max((v["bases"] for v in b["spread"].values()), default=0)
    text = (f"{len(above)} of {len(measured)} SELM-vs-DPO effects exceed the between-base spread measured by the "
            f"controls experiment (`{b['source']}`: between-base sd {spreads}, over {n_bases} SFT bases"
            + (f", commit {str(b['commit'])[:10]}" if b.get("commit") else "") + ")"
            + (f": {'; '.join(above)}" if above else "") + ". The others could change with another SFT base.")
    unmeasured = sorted({label for _, label, a in effects if a["exceeds"] is None})
    if unmeasured:
        text += f" No between-base spread was measured for {', '.join(unmeasured)}."
    return text


def render_summary(data: ReportData) -> str:
    """Five lines a reader can act on: what ran, where, the headline, the verdicts, what is untested;
    and a sixth where the spec names the controls' between-base spread: which effects exceed it."""
    seeds = list(data.spec.seeds)
    runs = ", ".join(f"{n} in `{e}`" for e, n in data.runs.items())
    claims = data.claims["claims"]
    paper = [c["verdict"] for c in claims if not c["ours"]]
    counts = ", ".join(f"{paper.count(v)} {v}" for v in ("agrees", "does not agree", "mixed", "inconclusive")
                       if paper.count(v))
    ours = [c for c in claims if c["ours"]]
    untested = wording(data, "untested")
    if len(seeds) < 2:
        untested += " One seed per cell: no interval and no verdict beyond 'inconclusive'."
    return "\n".join([
        f"- **What ran:** {sum(data.runs.values())} loop runs ({runs}) of bases {', '.join(data.spec.bases)}, "
        f"seeds {seeds}, then their evaluations and analyses.",
        f"- **Scale and machine:** {wording(data, 'name')}; report built on {data.machine}"
        + (f", commit `{data.commit}`." if data.commit else "."),
        f"- **Headline:** {_headline(data)}",
        f"- **The paper's claims ({len(paper)}):** {counts or 'none checked'}"
        + (f"; plus {len(ours)} claim(s) of ours." if ours else ".") + " A verdict is definitive only beyond the "
        "minimum detectable effect (next section).",
        f"- **Not tested here:** {untested}",
        *([f"- **Across SFT bases:** {across}"] if (across := _across_bases(data)) else []),
    ])


def render_contents(sections: list[Section]) -> str:
    return "\n".join(f"- [{s.title}](#{anchor(s.title)})" for s in sections)


def render_how_to_read(data: ReportData) -> str:
    seeds = list(data.spec.seeds)
    has_r_star = wording(data, "true_reward") is not None
    return (
        f"Generated by `{wording(data, 'command')}` (`python -m selm.report.build`) from the runs named in "
        f"`{data.spec_path}`; do not edit by hand. Package versions and every run's config hash are in "
        f"`{_rel(data.tables / 'provenance.json', data.report)}`, each run's composed config in "
        "`runs/<experiment>/<cell>/seed<seed>/config.json`.\n\n"
        f"Scale: {str(data.spec.get('description', data.scale)).strip()} Seeds {seeds} for every cell; "
        "a seed varies the online loop (`train.seed`: the sampling of y_ref and the training's data order), "
        "not the SFT base: each model has one SFT base, as in the paper (how far an effect "
        "moves between SFT bases: the first screen's line on them). "
        + ("± and [brackets] are 95% t intervals over seeds (none for one seed, 'same in every seed' for zero "
           "spread); SELM-vs-DPO comparisons are paired by seed. " if len(seeds) > 1 else
           "one seed, so no interval and no t-test anywhere. ")
        + "A verdict is definitive only when the difference's 95% interval excludes 0 and the difference is at "
        "least the minimum detectable effect (MDE: the smallest true difference this many seeds with this spread "
        "detect at alpha 0.05 with 80% power)"
        + (f" and, in r*, at least {MACHINE_FLOOR['mean_reward']} (the largest shift of the SFT base's greedy r* "
           "measured when only the floating-point code path changed: two CPUs' native kernels; it guards the "
           "verdicts where the bytes are not portable, on GPUs and other architectures)" if has_r_star else "")
        + "; otherwise it says **inconclusive**. Claims marked *ours* are not the paper's.")


# --- the claims and the tables -------------------------------------------------------------------------

def render_agreement(data: ReportData) -> str:
    """The claims, then (where the scale has one) which verdicts this report was not built from."""
    controls = wording(data, "controls")
    return render_claims(data.claims, data.figs) + (f"\n\n**Not in this report:** {controls}" if controls else "")


def _direction_agreement(changes: list[dict]) -> str:
    """Per (model, metric): does our change from the loop's start model go the paper's way, beyond
    what the seeds resolve (an unresolved change counts as neither)? claims.json's `changes`."""
    tally: dict[str, list[str]] = {"agree": [], "opposite": [], "unresolved": []}
    for c in changes:
        if c["direction"] is not None:
            tally[c["direction"]].append(f"{c['paper_model']} {c['label']} (ours {c['ours_delta']:+.2f}, "
                                         f"paper {c['paper_delta']:+.2f})")
    n = sum(map(len, tally.values()))
    text = [f"Direction of the change from the loop's start model, per (model, metric) cell, decided with the seed "
            f"intervals: {len(tally['agree'])} of {n} go the paper's way, {len(tally['opposite'])} the opposite way, "
            f"{len(tally['unresolved'])} cannot be told apart from no change."]
    if tally["opposite"]:
        text.append("Opposite: " + "; ".join(tally["opposite"]) + ".")
    return " ".join(text)


def _selm_minus_dpo_means(diffs: list[dict]) -> str | None:
    parts = [f"{d['base']} iter{d['iteration']}: ours {d['ours']:+.2f}, paper {d['paper']:+.2f}" for d in diffs]
    return ("SELM minus iterative DPO, AlpacaEval LC, plain means (the paired tests are in the next section): "
            + "; ".join(parts) + ".") if parts else None


def render_tables(data: ReportData) -> str:
    starts = "; ".join(f"{r['paper_model']} / {r['our_base']}'s " + ("offline-DPO iteration 0" if r["method"] ==
                                                                        "offline_dpo" else "SFT base")
                       for r in data.comparison if (r["method"], r["iteration"]) in (("offline_dpo", "0"), ("base", "0")))
    t = data.tables
    files = ", ".join(f"`{_rel(t / n, data.report)}`" for n in ("table1.md", "table2.md", "paper_comparison.md"))
    return "\n\n".join(x for x in [
        f"{wording(data, 'comparability')} Δ is the change from the model the online iterations start from"
        + (f" ({starts})" if starts else "") + f". 'academic mean' is the mean of {wording(data, 'academic')}. "
        f"MT avg: {wording(data, 'mt_bench')} (docs/evaluation.md). "
        f"Full tables: {files} (and `.csv`).",
        data.markdown["comparison"], _direction_agreement(data.claims["changes"]),
        _selm_minus_dpo_means(data.claims["selm_minus_dpo"])]
        if x)


def _paired_sentences(paired: dict, verdicts: dict, bases: dict | None = None) -> str:
    lines = []
    for cell, entry in verdicts.items():
        last = paired[cell]["iterations"][-1]
        parts = []
        for key, label in (("mean_reward", "r*"), ("alpaca_lc_win_rate", "AE2 LC"), ("mt_bench_average", "MT-Bench")):
            if key in last:
                t = last[key]
                v = entry["verdicts"][key]
                sig = {"positive": "SELM higher", "negative": "SELM lower", "inconclusive": "inconclusive"}[v["verdict"]]
                parts.append(f"{label} {t['mean_diff']:+.3f} (95% CI {interval(t)}, {verdict_note(v)}: {sig}"
                             + _base_note((bases or {}).get(cell, {}).get(key)) + ")")
        lines.append(f"- {cell}, iteration {last['iteration']}: " + "; ".join(parts) + ".")
    return "\n".join(lines)


def _base_note(a: dict | None) -> str:
    """'; beyond the between-base spread (+-0.045)' and the like, where it was measured."""
    if not a or a.get("exceeds") is None:
        return ""
    return f"; {'beyond' if a['exceeds'] else 'within'} the between-base spread (±{a['half_width']:.3f})"


def render_paired(data: ReportData) -> str:
    true_reward = wording(data, "true_reward")
    out = ["Ours, not the paper's (it runs one seed): the difference SELM - DPO per iteration with its 95% CI, the "
           "paired t-test p-value, and in how many seeds SELM was higher." + (f" r* is {true_reward}." if true_reward else "") + " AE2 LC, MT avg and lm-eval "
           "are the judge's and the harness's verdicts on the same checkpoints.",
           data.markdown["paired"], _paired_sentences(data.paired, data.claims["paired_last"],
                                                      (data.claims.get("between_bases") or {}).get("paired"))]
    if data.markdown.get("coverage"):
        out += ["### Exploration: high-reward coverage", "Ours, not the paper's. " + (wording(data, "coverage") or ""),
                data.markdown["coverage"]]
    return "\n\n".join(x for x in out if x)


# --- the figures: each a caption and a one-sentence takeaway -------------------------------------------

def _img(data: ReportData, name: str) -> str:
    return f"![{name}]({_rel(data.figdir / name, data.report)})"


def takeaway_figure1(f: dict) -> str:
    closer = abs(f["optimistic_argmax"] - f["true_argmax"]) < abs(f["vanilla_argmax"] - f["true_argmax"])
    return (f"Optimism moves the fitted maximum from x = {f['vanilla_argmax']:.2f} to x = {f['optimistic_argmax']:.2f}, "
            + ("closer to" if closer else "no closer to") + f" the true maximum at x = {f['true_argmax']:.2f}.")


def render_figure1(data: ReportData) -> str:
    f = data.figs["figure1"]
    return "\n\n".join([_img(data, "figure1_concept.png"),
                        "Drawn from a 1-D toy reward, not data: a bootstrap ensemble of cubic fits to responses seen "
                        "only in [0, 0.6]; the optimistic fit is mean + 2 sd.",
                        f"**Takeaway:** {takeaway_figure1(f)}"])


def _head_to_head(d: dict) -> str | None:
    """The last SELM iteration's LC win rate against the last DPO iteration's answers."""
    models = d["models"]
    selm = sorted((m for m in models if m.startswith("SELM iter")), key=lambda m: int(m.removeprefix("SELM iter")))
    dpo = sorted((m for m in models if m.startswith("DPO iter")), key=lambda m: int(m.removeprefix("DPO iter")))
    if not selm or not dpo:
        return None
    return f"{selm[-1]} vs {dpo[-1]} {d['matrix'][models.index(selm[-1])][models.index(dpo[-1])]:.1f}%"


def takeaway_figure2(fig2: dict) -> str:
    parts = []
    for base, d in fig2.items():
        bi = d["models"].index(d["base_model"])
        h2h = _head_to_head(d)
        parts.append(f"{base}: {d['models'][0]} beats {d['base_model']} most often ({d['matrix'][0][bi]:.1f}% LC)"
                     + (f", head to head {h2h}" if h2h else ""))
    return "; ".join(parts) + " (50% = a tie)."


def render_figure2(data: ReportData) -> str:
    fig2 = data.figs.get("figure2_heatmaps")
    starts = "; ".join(f"{b}: {d['base_model']}" for b, d in (fig2 or {}).items())
    out = [*[_img(data, f"figure2_heatmap_{b}.png") for b in data.spec.bases],
           "Row model vs column model (the column's answers are the reference), LC win rate in %, mean over seeds; "
           "rows ordered by win rate against the model the loop starts from" + (f" ({starts})" if starts else "") + "."]
    if fig2:
        out.append(f"**Takeaway:** {takeaway_figure2(fig2)}")
    return "\n\n".join(out)


def bin_width_text(bins: list[float]) -> str:
    """'bins of width 0.1 over [-0.4, 1.4]' (or the edges, when the widths differ)."""
    widths = {round(b - a, 9) for a, b in zip(bins[:-1], bins[1:])}
    lo, hi = bins[0], bins[-1]
    return (f"bins of width {widths.pop():g} over [{lo:g}, {hi:g}]" if len(widths) == 1
            else f"bins with edges {', '.join(f'{b:g}' for b in bins)}")


def takeaway_figure3(fig3: dict, a: dict) -> str:
    """`a`: claims.json's `alpha` (the alpha verdicts)."""
    means = [h["mean"] for _, h in sorted(fig3["hist_by_iteration"].items(), key=lambda kv: int(kv[0]))]
    final = dict((x, s) for x, s in a["final"])
    lo, hi = a["lowest"], a["highest"]
    resolved = (f"alpha {a['best']:g} is above every other beyond the seeds' resolution" if a["best"] is not None
                else "no alpha is above every other beyond the seeds' resolution")
    sel = fig3["selection"]
    selection = f"; the paper's selection rule picks alpha {sel['selected']:g}" + (
        "" if "best_r_star" not in sel else " (as the true reward does)" if sel["agree"]
        else f" (the true reward: alpha {sel['best_r_star']:g})")
    return (f"Final LC spans {final[lo]['mean']:.2f} (alpha {lo:g}) to {final[hi]['mean']:.2f} (alpha {hi:g}) and "
            f"{resolved}; the mean ranker reward of greedy answers goes "
            + " -> ".join(f"{m:.3f}" for m in means) + f" over the SELM iterations{selection}.")


def _selection_lead(sel: dict, v: dict | None) -> str:
    """The selected alpha's lead in external reward over the runner-up (`v`, its verdict), against the
    seeds' resolution."""
    if sel["runner_up"] is None:
        return "it is the only searched alpha"
    return (f"its lead over alpha {sel['runner_up']:g} ({v['mean_diff']:+.3f}) is "
            + ("beyond" if v["verdict"] == "positive" else "within") + f" what the seeds resolve ({verdict_note(v)})")


def _selection_vs_true_reward(sel: dict, v: dict | None) -> str:
    """Does the external reward select the alpha the true reward r* would (scales that know r*)? `v`:
    the verdict on r*'s lead where it selects another alpha."""
    r = {x: sel["alphas"][str(x)]["r_star"] for x in (sel["selected"], sel["best_r_star"])}
    if sel["agree"]:
        return (f"The true reward r* of the same answers selects the same alpha (r* {r[sel['selected']]['mean']:.3f}): "
                "selection by the external reward **agrees** with selection by the true reward.")
    return (f"The true reward r* of the same answers would select alpha {sel['best_r_star']:g} (r* "
            f"{r[sel['best_r_star']]['mean']:.3f} vs {r[sel['selected']]['mean']:.3f} for alpha {sel['selected']:g}, "
            f"{v['mean_diff']:+.3f}, {verdict_note(v)}): selection by the external reward **does not agree** with "
            "selection by the true reward" + (", though their r* differ by less than the seeds resolve."
                                               if v["verdict"] == "inconclusive" else "."))


def alpha_selection_text(sel: dict, verdicts: dict) -> str:
    """Figure 3's alpha selection (selm.report.analyze.alpha_selection) in words: each alpha's mean
    external reward, the selected alpha, and whether the true reward agrees where the scale knows it;
    `verdicts`: claims.json's `selection`."""
    means = "; ".join(f"alpha {float(a):g}" + (" (iterative DPO, not searched)" if float(a) == 0 else "")
                      + f": {fmt_mean_ci(e['external_reward']['mean'], e['external_reward']['ci95'])}"
                      for a, e in sorted(sel["alphas"].items(), key=lambda kv: float(kv[0])))
    iterations = sorted({e["iteration"] for e in sel["alphas"].values()})
    truth = (_selection_vs_true_reward(sel, verdicts["true_reward"]) if "best_r_star" in sel else
             "This scale has no true reward, so whether selection by the external reward agrees with selection by "
             "the true reward cannot be checked here.")
    return (f"**Alpha selection (the paper's rule):** {sel['rule']}. Mean external reward, final iteration "
            f"({', '.join(map(str, iterations))}): {means}. Selected: **alpha {sel['selected']:g}**; "
            f"{_selection_lead(sel, verdicts['lead'])}. {truth}")


def render_figure3(data: ReportData) -> str:
    fig3 = data.figs["figure3_alpha"]
    base = layout.parse_figure_ref(str(fig3["shift_cell"])).cell
    beyond = fig3.get("beyond_bins")
    return "\n\n".join([
        _img(data, "figure3_alpha.png"),
        f"Left: AlpacaEval LC per iteration for alpha in {sorted(float(a) for a in fig3['curves'])} ({base}). Middle "
        f"and right: {fig3['reward']}; fraction of prompts in {bin_width_text(fig3['bins'])}"
        + (f" ({100 * beyond:.1f}% of the values lie beyond the range and are counted in the edge bins)"
           if beyond is not None else "") + f". Mean ranker reward of the greedy test answers by iteration for "
        f"{fig3['shift_cell']}: " + ", ".join(f"iteration {t}: {h['mean']:.3f}"
                                               for t, h in sorted(fig3["hist_by_iteration"].items())) + ".",
        alpha_selection_text(fig3["selection"], data.claims["selection"]),
        f"**Takeaway:** {takeaway_figure3(fig3, data.claims['alpha'])}"])


def takeaway_figure4(fig4: dict, v4: dict) -> str:
    """`v4`: claims.json's `figure4` (per base, `both`: both differences positive beyond their MDE)."""
    verdicts = {b: v4[b]["both"] for b in fig4}
    return ("SELM's implicit reward minus DPO's, chosen / rejected: " + "; ".join(
        f"{b} {d['mean_chosen']:+.5f} / {d['mean_rejected']:+.5f} ({verdicts[b]})" for b, d in fig4.items())
        + f"; both above zero beyond their MDE for {sum(v == 'agrees' for v in verdicts.values())} of "
        f"{len(verdicts)} bases (the paper: both above zero).")


def render_figure4(data: ReportData) -> str:
    fig4 = data.figs["figure4_ird"]
    caption = " ".join(
        f"{b}: mean r_SELM - r_DPO on chosen {d['mean_chosen']:+.4f} ({100 * d['frac_chosen_positive']:.0f}% of "
        f"prompts > 0), on rejected {d['mean_rejected']:+.4f}"
        + (f" ({100 * d['frac_rejected_positive']:.0f}% > 0)." if "frac_rejected_positive" in d else ".")
        for b, d in fig4.items())
    return "\n\n".join([_img(data, "figure4_ird.png"),
                        caption + " The paper reports SELM's implicit reward higher than DPO's on both the chosen and "
                        "the rejected answers.", f"**Takeaway:** {takeaway_figure4(fig4, data.claims['figure4'])}"])


def takeaway_figure5(fig5: dict, v5: dict) -> str:
    """`v5`: claims.json's `figure5` (per base, the verdict or None)."""
    parts = []
    for b, d in fig5.items():
        v = v5[b]["verdict"] if v5[b] else "inconclusive"
        parts.append(f"{b} {d['mean']:+.5f} ({100 * d['frac_positive']:.0f}% of prompts > 0, "
                     f"{WORDS[v].replace('agrees', 'SELM higher').replace('does not agree', 'SELM lower')})")
    return "SELM's own samples minus DPO's, implicit reward: " + "; ".join(parts) + "."


def render_figure5(data: ReportData) -> str:
    fig5 = data.figs["figure5_own_samples"]
    return "\n\n".join([_img(data, "figure5_own_samples.png"),
                        " ".join(f"{b}: mean SELM - DPO {d['mean']:+.4f}, positive for {100 * d['frac_positive']:.0f}% "
                                 "of prompts." for b, d in fig5.items())
                        + " The paper reports SELM's own samples with higher implicit reward than DPO's.",
                        f"**Takeaway:** {takeaway_figure5(fig5, data.claims['figure5'])}"])


def takeaway_figure6(fig6: dict, spread: dict) -> str:
    """`spread`: claims.json's `figure6_range` (the highest and lowest variant, the verdict on the gap)."""
    final = {label: s["points"][-1]["mt_bench"] for label, s in fig6.items()}
    hi, lo, v = spread["highest"], spread["lowest"], spread["verdict"]
    if v is None:
        return f"One variant only: {hi} ends at MT-Bench {final[hi]['mean']:.2f}."
    return (f"Final MT-Bench ranges from {final[lo]['mean']:.2f} ({lo}) to {final[hi]['mean']:.2f} ({hi}); that "
            f"gap of {v['mean_diff']:.2f} is " + ("beyond" if v["verdict"] == "positive" else "within")
            + f" what the seeds resolve ({verdict_note(v)}).")


def figure6_panels_text(panels: list[dict] | None) -> str | None:
    """Each variant of Figure 6's batch, schedule and iteration-count panels against iterative DPO at
    the last point (MT-Bench, and r* where measured): claims.json's `figure6_panels`."""
    if not panels:
        return None
    parts = [f"{p['label']} ({p['panel']}" + (f", {p['pairs_k']:g}k pairs seen" if p["pairs_k"] is not None else "")
             + "): " + "; ".join(map(versus_text, p["parts"])) for p in panels]
    return ("Figure 6's batch-size, learning-rate and iteration-count panels, each variant against iterative DPO at "
            "its last point (ours: the paper plots these panels without stating an ordering): " + "; ".join(parts) + ".")


def render_figure6(data: ReportData) -> str:
    fig6 = data.figs["figure6_ablations"]
    with_r = all("r_star" in s["points"][-1] for s in fig6.values())
    final = "; ".join(f"{label}: {s['points'][-1]['mt_bench']['mean']:.2f}"
                      + (f", {s['points'][-1]['r_star']['mean']:.3f}" if "r_star" in s["points"][-1] else "")
                      for label, s in fig6.items())
    return "\n\n".join(x for x in [_img(data, "figure6_ablations.png"),
                                   f"Final point of each variant (MT-Bench{', r*' if with_r else ''}): {final}.",
                                   figure6_panels_text(data.claims["figure6_panels"]),
                                   f"**Takeaway:** {takeaway_figure6(fig6, data.claims['figure6_range'])}"] if x)


FIGURES = (("Figure 1: the concept", render_figure1),
           ("Figure 2: pairwise AlpacaEval LC heatmaps", render_figure2),
           ("Figure 3: alpha ablation and reward distributions", render_figure3),
           ("Figure 4: implicit reward difference on test chosen and rejected answers", render_figure4),
           ("Figure 5: implicit reward of the model's own samples", render_figure5),
           ("Figure 6: iterative-DPO ablations", render_figure6))


def render_figures(data: ReportData) -> str:
    return "\n\n".join(f"### {title}\n\n{renderer(data)}" for title, renderer in FIGURES)


# --- the regime map ------------------------------------------------------------------------------------

def takeaway_regimes(verdicts_by_regime: dict) -> str:
    """`verdicts_by_regime`: claims.json's `regimes` (regime -> alpha -> verdict)."""
    verdicts = [v["verdict"] for e in verdicts_by_regime.values() for v in e.values()]
    return (f"Optimism helps in {verdicts.count('helps')}, hurts in {verdicts.count('hurts')} and is inconclusive "
            f"in {verdicts.count('inconclusive')} of {len(verdicts)} (regime, alpha) cells.")


def render_regimes(data: ReportData) -> str:
    v = data.variants
    weak = (f" Weak corpus: mean r* of the chosen answers {v['original']['mean_r_chosen']:.3f} -> "
            f"{v['variant_stats']['mean_r_chosen']:.3f}." if v else "")
    return "\n\n".join([
        "Ours, not the paper's. " + (wording(data, "regimes") or "") + weak + " Verdicts: helps / hurts when the 95% CI of the paired difference "
        "in final-iteration r* excludes 0 and the difference is at least the threshold (the larger of its MDE and "
        "the between-machine floor), else inconclusive.",
        _img(data, "regime_map.png"), f"**Takeaway:** {takeaway_regimes(data.claims['regimes'])}",
        data.markdown["regimes"], "**Conclusion (as measured):**", data.markdown["regime_conclusion"]])


# --- the whole report ----------------------------------------------------------------------------------

def sections(data: ReportData) -> list[Section]:
    """The report's sections after the summary, in order (the extra ones last)."""
    out = [Section("How to read this report", render_how_to_read(data)),
           Section("What agrees with the paper and what does not", render_agreement(data)),
           Section("Tables 1 and 2 beside the paper", render_tables(data)),
           Section("SELM vs iterative DPO, paired by seed", render_paired(data)),
           Section("Figures", render_figures(data))]
    if data.regimes is not None:
        out.append(Section("Regime map: when does optimism help?", render_regimes(data)))
    return out + list(data.extra)


def render(data: ReportData) -> str:
    body = sections(data)
    head = [f"# SELM reproduction report ({data.scale} scale)", render_summary(data),
            "**Contents**", render_contents(body)]
    return "\n\n".join(head + [f"## {s.title}\n\n{s.body}" for s in body]) + "\n"
