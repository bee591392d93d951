"""REPORT.md's text: the paper's claims as the paper states them, statistics without made-up
intervals, per-scale wording, the first screen (summary, contents, takeaways) and Figure 3's bins.
Expected numbers are worked out by hand in the comments."""

import csv
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from selm.report import claims_text
from selm.report.build import comparison_markdown, coverage_markdown, paired_markdown
from selm.report.claims import (alpha_claim, alpha_verdicts, compute, figure6_claims, figure6_panels, implicit_reward_claims,
                                implicit_rewards, selection_verdicts)
from selm.report.comparison import paper_comparison
from selm.report.report_text import ReportData, Section, anchor, bin_width_text, render
from selm.report.stats import fmt_mean_ci

REPO = Path(__file__).resolve().parents[1]
# sentences written for the toy scale only; none may appear in another scale's report
TOY_ONLY = ("Ours is the toy scale", "300 held-out prompts", "(tiny-sft)", "tiny-sft", "tiny-instruct", "toy world",
            "oracle", "toy:", "r*", "dvc repro`")


def _figure4_claim(fig4: dict, fig5: dict) -> tuple[str, str]:
    """Figure 4's claim line and verdict, computed (selm.report.claims) then rendered (claims_text)."""
    v4, v5 = implicit_rewards(fig4, fig5)
    c = implicit_reward_claims(v4, v5)[0]
    return claims_text.figure4(c, {"figure4": v4}, {"figure4_ird": fig4}), c["verdict"]


def _alpha_claim(fig3: dict) -> tuple[str, str]:
    """Figure 3's alpha claim line and verdict."""
    a = alpha_verdicts(fig3)
    c = alpha_claim(a)
    return claims_text.alpha(c, {"alpha": a}, {}), c["verdict"]


def _spread(mean: float, sd: float, n: int = 30) -> list[float]:
    """n values with exactly this mean: mean - sd, mean, mean + sd repeated."""
    return [mean + sd * k for k in (-1, 0, 1)] * (n // 3)


def test_figure4_needs_both_chosen_and_rejected_higher():
    # chosen and rejected both +1.0 per prompt (sd of 30 values -1/0/+1 around it: 0.830, se 0.152,
    # MDE about 0.44): the paper's Figure 4 (SELM higher on both) holds
    both_up = {"b": {"chosen_sorted": _spread(1.0, 1.0), "rejected_sorted": _spread(1.0, 1.0),
                     "mean_chosen": 1.0, "mean_rejected": 1.0}}
    fig5 = {"b": {"mean": 0.0, "frac_positive": 0.5}}
    line, verdict = _figure4_claim(both_up, fig5)
    assert "both the chosen and the rejected" in line and verdict == "agrees"
    # SELM lower on rejected (-1.0) is what the paper does NOT report
    down = {"b": {**both_up["b"], "rejected_sorted": _spread(-1.0, 1.0), "mean_rejected": -1.0}}
    assert _figure4_claim(down, fig5)[1] == "mixed"


def test_no_zero_width_or_rounded_away_intervals():
    assert fmt_mean_ci(5.0, 0.0, 2) == "5.00 (same in every seed)"
    assert fmt_mean_ci(5.0, 0.004, 2) == "5.00 ± <0.01"  # not "± 0.00"
    assert fmt_mean_ci(5.0, None, 2) == "5.00" and fmt_mean_ci(5.0, 0.21, 2) == "5.00 ± 0.21"
    # Table 1 layout: 3 seeds 30.000 / 30.001 / 30.002 (sd 0.001, CI 4.303 * 0.001 / sqrt 3 = 0.0025)
    from selm.report.eval_tables import table1_markdown, table2_markdown

    rows = [{"base": "b", "method": "iterative DPO", "iteration": "iter1", "seed": s, "alpaca_lc_win_rate": 30 + s / 1000,
             "alpaca_win_rate": 30.0, "alpaca_avg_length": 5.0, "mt_bench_average": 4.0, "mt_bench_turn_1": 4.0,
             "mt_bench_turn_2": 4.0, "lmeval_x": 50 + s / 100} for s in range(3)]
    table = table1_markdown(rows)
    assert "30.00 ± <0.01" in table and "± 0.00" not in table and "30.00 (same in every seed)" in table
    assert "50.0 ± <0.1" in table2_markdown(rows)  # lm-eval: 50.00 / 50.01 / 50.02, CI 0.025
    # the paper comparison keeps the small CI (it used to round it to 0.00 and print "± 0.00")
    paper = [{"model": "Zephyr-7B-DPO", "base": "zephyr", "method": "offline_dpo", "iteration": "0",
              "lc_win_rate": "15.0", "win_rate": "14.0", "mtbench_avg": "7.0"}]
    ours = [{"base": "tiny-sft", "method": "iterative DPO", "iteration": "iter0", "seed": s,
             "alpaca_lc_win_rate": 30 + s / 1000, "alpaca_win_rate": 30.0, "mt_bench_average": 4.0} for s in range(3)]
    table2 = [{"base": "zephyr", "method": "offline_dpo", "iteration": "0", "average": "57.0"}]
    md = comparison_markdown(paper_comparison(ours, paper, table2, selm_alpha=0.1))
    assert "30.00 ± <0.01" in md and "4.00 (same in every seed)" in md and "± 0.00" not in md


def _curve(means: dict, ci: float | None, n: int) -> dict:
    return {f"{a}": {"lc": {"3": {"mean": m, "ci95": ci, "n": n}}, "r_star": {}} for a, m in means.items()}


def test_alpha_claims_are_decided_with_intervals():
    # alpha 1 lowest by raw mean but every gap (0.3) is inside the seeds' resolution (ci 1.0, n 3:
    # se 0.2324 per side, MDE 5.363 * 0.3287 = 1.76): nothing is decided from the raw means
    close = {"hist_by_iteration": {}, "curves": _curve({0.0: 40.0, 0.1: 40.3, 1.0: 39.7}, 1.0, 3)}
    line = _alpha_claim(close)[0]
    assert "(alpha 1 below each other alpha by more than the seeds resolve: 0 of 2): **inconclusive**" in line
    assert "no alpha is above every other beyond the MDE: **inconclusive**" in line
    # ci 0.1: se 0.02324 per side, MDE 0.176; gaps of 2 and 4 are beyond it: alpha 0.1 best, alpha 1 hurts
    clear = {"hist_by_iteration": {}, "curves": _curve({0.0: 40.0, 0.1: 42.0, 1.0: 36.0}, 0.1, 3)}
    line, verdict = _alpha_claim(clear)
    assert "0 of 2" not in line and "2 of 2): **agrees**" in line
    assert "alpha 0.1 is above every other alpha beyond the MDE: **agrees**" in line and verdict == "agrees"
    # one seed per alpha: no interval, nothing decided
    assert _alpha_claim({"hist_by_iteration": {}, "curves": _curve({0.0: 40.0, 1.0: 30.0}, None, 1)})[1] \
        == "inconclusive"


def test_claims_the_paper_does_not_make_are_marked_ours():
    point = lambda mt: {"points": [{"mt_bench": {"mean": mt, "ci95": 0.01, "n": 3}}]}  # noqa: E731
    fig6 = {"iterative (rank y_w, y_l, y_ref)": point(7.5), "rank_w_ref": point(7.0), "stepwise": point(7.2),
            "offline": point(7.1)}
    claims = {(line := claims_text.figure6(c, {}, {})).split("*")[1]: (line, c) for c in figure6_claims(fig6)}
    assert claims["stepwise DPO beats offline DPO (Figure 6)"][1]["ours"]
    assert "(ours, not the paper's" in claims["stepwise DPO beats offline DPO (Figure 6)"][0]
    assert not claims["iterative DPO beats stepwise DPO (Figure 6)"][1]["ours"]


# --- a report on the paper scale's shape -----------------------------------------------------------------

def _paper_csv(name: str) -> list[dict]:
    with (REPO / "paper" / name).open(newline="") as f:
        return list(csv.DictReader(f))


def _paper_scale_rows() -> list[dict]:
    """Evaluation rows shaped like the paper scale's (selm.report.eval_tables.collect): one seed, the
    two real bases, Zephyr's offline-DPO iteration 0, alphas 0.001 / 0.0001."""
    rows = []
    for base, alpha, its in (("zephyr-7b-sft", 0.001, [0, 1, 2, 3]), ("llama3-8b-instruct", 0.0001, [1, 2, 3])):
        rows.append({"base": base, "method": "SFT base", "iteration": "base", "seed": None, "alpaca_lc_win_rate": 10.0,
                     "alpaca_win_rate": 9.0, "mt_bench_average": 6.0, "lmeval_mean": 50.0})
        for t in its:
            for method, bump in (("iterative DPO", 0.0), (f"SELM (alpha={alpha:g})", 0.5)):
                if t == 0 and method != "iterative DPO":
                    continue
                rows.append({"base": base, "method": method, "iteration": f"iter{t}", "seed": 42,
                             "alpaca_lc_win_rate": 15.0 + 2 * t + bump, "alpaca_win_rate": 14.0 + t,
                             "mt_bench_average": 7.0 + 0.1 * t, "lmeval_mean": 55.0 + t})
    return rows


def _selection(external: dict, r_star: dict | None, n: int, ci: float | None = None, iteration: int = 3) -> dict:
    """An alpha selection (selm.report.analyze.alpha_selection) from per-alpha means: argmax over alpha > 0."""
    summary = lambda m: {"mean": m, "ci95": ci, "n": n}  # noqa: E731
    alphas = {str(a): {"cell": f"x/b/alpha{a}", "iteration": iteration, "external_reward": summary(m),
                       **({"r_star": summary(r_star[a])} if r_star else {})} for a, m in external.items()}
    searched = sorted((a for a in external if a > 0), key=lambda a: -external[a])
    out = {"rule": "the searched alpha with the highest mean external reward", "alphas": alphas,
           "searched": sorted(searched), "selected": searched[0], "runner_up": searched[1] if len(searched) > 1 else None}
    if r_star:
        best = max((a for a in r_star if a > 0), key=lambda a: r_star[a])
        out.update(best_r_star=best, agree=best == searched[0])
    return out


def _paper_scale_figs() -> dict:
    one = lambda m: {"mean": m, "ci95": None, "n": 1}  # noqa: E731
    models = ["SELM iter3", "DPO iter3", "SELM iter2", "DPO iter2", "SELM iter1", "DPO iter1"]
    fig2 = {b: {"models": models + [start], "base_model": start,
                "matrix": [[50.0 + i - j for j in range(7)] for i in range(7)]}
            for b, start in (("zephyr-7b-sft", "offline DPO (iter0)"), ("llama3-8b-instruct", "SFT base"))}
    bins = [-6.0, -4.0, -2.0, 0.0, 2.0, 4.0, 6.0]
    return {
        "figure1": {"vanilla_argmax": 0.3, "optimistic_argmax": 0.9, "true_argmax": 0.8},
        "figure2_heatmaps": fig2,
        "figure3_alpha": {"curves": {str(a): {"cell": f"paper_main/zephyr-7b-sft/alpha{a}",
                                              "lc": {str(t): one(15.0 + t + 100 * a) for t in (1, 2, 3)}, "r_star": {}}
                                     for a in (0.0, 0.0001, 0.0005, 0.001, 0.01)},
                          "hist_by_iteration": {"1": {"mean": 0.1}, "2": {"mean": 0.2}, "3": {"mean": 0.3}},
                          "shift_cell": "paper_main/zephyr-7b-sft/alpha0.001", "bins": bins, "beyond_bins": 0.012,
                          "reward": "the ranker's score of the greedy answer to each test prompt (PairRM's logit)",
                          "selection": _selection({0.0: 0.1, 0.0001: 0.3, 0.0005: 0.2, 0.001: 0.5, 0.005: 0.4,
                                                   0.01: -0.2}, None, 1, iteration=3)},
        "figure4_ird": {b: {"chosen_sorted": _spread(0.02, 0.01), "rejected_sorted": _spread(0.01, 0.01),
                            "mean_chosen": 0.02, "mean_rejected": 0.01, "frac_chosen_positive": 0.9,
                            "frac_rejected_positive": 0.6, "iteration": 1} for b in fig2},
        "figure5_own_samples": {b: {"sorted": _spread(0.01, 0.02), "mean": 0.01, "frac_positive": 0.6} for b in fig2},
        "figure6_ablations": {"iterative (rank y_w, y_l, y_ref)": {"points": [{"mt_bench": one(7.5)}]},
                              "rank_w_ref": {"points": [{"mt_bench": one(7.2)}]},
                              "stepwise": {"points": [{"mt_bench": one(7.3)}]},
                              "offline": {"points": [{"mt_bench": one(7.1)}]},
                              "batch128": {"points": [{"mt_bench": one(7.4)}]},
                              "decaying_lr": {"points": [{"mt_bench": one(7.45)}]},
                              "six_iterations": {"points": [{"mt_bench": one(7.2)}]}},
    }


def _paper_scale_data(tmp_path, spec_file: str = "experiments/paper.yaml", **extra) -> ReportData:
    spec = OmegaConf.load(REPO / spec_file)
    comparison = paper_comparison(_paper_scale_rows(), _paper_csv("table1_alpacaeval_mtbench.csv"),
                                  _paper_csv("table2_academic.csv"),
                                  {"zephyr-7b-sft": 0.001, "llama3-8b-instruct": 0.0001})
    paired = {f"{b}/alpha{a}": {"seeds": [42], "iterations": [], "note": "fewer than 2 seeds: no test"}
              for b, a in (("zephyr-7b-sft", 0.001), ("llama3-8b-instruct", 0.0001))}
    figs = _paper_scale_figs()
    return ReportData(scale="paper-scale", spec_path=spec_file, spec=spec, report=tmp_path / "REPORT.md",
                      tables=tmp_path / "tables", figdir=tmp_path / "figures", comparison=comparison, paired=paired,
                      claims=compute(comparison, {**figs, "paired_tests": paired}), figs=figs,
                      markdown={"comparison": comparison_markdown(comparison), "paired": paired_markdown(paired),
                                "coverage": coverage_markdown(paired), "regimes": None, "regime_conclusion": None},
                      machine="8 x H100", commit="abc", runs={"paper_main": 4, "paper_alpha": 3, "paper_ablations": 3},
                      **extra)


def test_the_paper_scale_report_has_no_toy_sentence(tmp_path):
    text = render(_paper_scale_data(tmp_path))
    assert [s for s in TOY_ONLY if s in text] == []
    assert "dvc repro scales/paper/dvc.yaml" in text and "six Open LLM Leaderboard v1-style tasks" in text
    assert "MT avg: the mean of 3 generation runs at FastChat's per-category temperatures" in text
    assert "Regime map" not in text and "high-reward coverage" not in text
    assert "± " not in text.replace("± and", "")  # one seed: no interval anywhere, tables included
    assert "one seed, so no interval and no t-test anywhere" in text
    assert "fewer than 2 seeds per cell: no paired test" in text  # sections that need seeds say so
    assert "Final point of each variant (MT-Bench): iterative (rank y_w, y_l, y_ref): 7.50; rank_w_ref: 7.20" in text
    assert "batch128 (batch size): MT-Bench 7.400 vs 7.500 (-0.100, one seed: no interval: inconclusive)" in text
    assert "fraction of prompts in bins of width 2 over [-6, 6] (1.2% of the values lie beyond the range" in text
    # the alpha selection: external reward 0.5 at alpha 0.001 is the highest of the searched alphas; one seed
    assert "Selected: **alpha 0.001**; its lead over alpha 0.005 (+0.100) is within what the seeds resolve (one " \
           "seed: no interval)" in text and "alpha 0 (iterative DPO, not searched): 0.100;" in text
    assert "This scale has no true reward, so whether selection by the external reward agrees" in text
    # the same shape under the toy spec gets the toy's wording, from experiments/toy.yaml
    toy = render(_paper_scale_data(tmp_path, "experiments/toy.yaml"))
    assert "Ours is the toy scale" in toy and "dvc repro" in toy
    # which verdicts the toy report is not built from (the named controls experiment): said under the claims
    agreement = toy.split("## What agrees with the paper and what does not")[1].split("\n## ")[0]
    assert "**Not in this report:** This report is built from `make repro`'s runs" in agreement
    assert "`dvc repro experiments/controls/dvc.yaml`" in agreement and "Not in this report" not in text


def test_a_spec_without_report_wording_is_an_error_naming_the_key(tmp_path):
    data = _paper_scale_data(tmp_path)
    data.spec = OmegaConf.merge(data.spec, {"report": {"colour": "blue"}})
    with pytest.raises(KeyError, match=r"experiments/paper.yaml: report.colour is not a known key"):
        render(data)
    data.spec = OmegaConf.create({k: v for k, v in OmegaConf.to_container(data.spec).items() if k != "report"})
    with pytest.raises(KeyError, match=r"experiments/paper.yaml: report\.\w+ is missing \("):
        render(data)


def test_first_screen_summary_contents_and_takeaways(tmp_path):
    text = render(_paper_scale_data(tmp_path, extra=[Section("Positive control", "a control's table")]))
    lines = text.splitlines()
    summary = lines[2:7]
    assert [s.split(":**")[0].split(" (")[0] for s in summary] == ["- **What ran", "- **Scale and machine", "- **Headline",
                                                    "- **The paper's claims", "- **Not tested here"]
    assert "10 loop runs (4 in `paper_main`, 3 in `paper_alpha`, 3 in `paper_ablations`)" in summary[0]
    assert "8 x H100" in summary[1]
    # SELM - DPO LC at the last iteration, one seed: +0.5 for both bases (the fixture's bump)
    assert "llama3-8b-instruct +0.50 (iteration 3); zephyr-7b-sft +0.50 (iteration 3)" in summary[2]
    assert "One seed per cell" in summary[4]
    headings = [line[3:] for line in lines if line.startswith("## ")]
    assert headings[-1] == "Positive control"  # the hook for sections beyond the paper's
    contents = lines[lines.index("**Contents**") + 2: lines.index("**Contents**") + 2 + len(headings)]
    assert contents == [f"- [{h}](#{anchor(h)})" for h in headings]
    assert anchor("Regime map: when does optimism help?") == "regime-map-when-does-optimism-help"
    figures = text.split("## Figures")[1].split("## Positive control")[0].split("### ")[1:]
    assert len(figures) == 6 and all("**Takeaway:** " in f for f in figures)
    takeaways = {f.split(":")[0]: f.split("**Takeaway:** ")[1].split("\n")[0] for f in figures}
    # Figure 6: final MT-Bench 7.1 (offline) .. 7.5 (iterative), one seed each: no interval, within resolution
    assert takeaways["Figure 6"].startswith("Final MT-Bench ranges from 7.10 (offline) to 7.50 (iterative (rank")
    assert "is within what the seeds resolve (one seed: no interval)" in takeaways["Figure 6"]
    # Figure 2: the fixture's row 0 (SELM iter3) against column 6 (the start model): 50 + 0 - 6 = 44;
    # head to head SELM iter3 (row 0) vs DPO iter3 (column 1): 49
    assert "zephyr-7b-sft: SELM iter3 beats offline DPO (iter0) most often (44.0% LC), head to head SELM iter3 " \
           "vs DPO iter3 49.0%" in takeaways["Figure 2"]
    # Figure 3: final LC = 18 + 100 alpha: 18.00 (alpha 0) .. 19.00 (alpha 0.01)
    assert takeaways["Figure 3"].startswith("Final LC spans 18.00 (alpha 0) to 19.00 (alpha 0.01)")
    # Figure 4: +0.02 / +0.01 over 30 prompts, sd 0.0083, se 0.0015, MDE 0.0044: both beyond it
    assert "both above zero beyond their MDE for 2 of 2 bases" in takeaways["Figure 4"]
    assert "Optimism moves the fitted maximum from x = 0.30 to x = 0.90, closer to" in takeaways["Figure 1"]


def test_figure3_histograms_keep_all_the_mass():
    from selm.report.analyze import beyond_bins, reward_histogram

    bins = np.array([0.0, 0.5, 1.0])
    values = [-3.0, 0.2, 0.7, 0.9, 5.0]  # one below, one above the range: counted in the edge bins
    assert reward_histogram(values, bins) == [0.4, 0.6]
    assert sum(reward_histogram(values, bins)) == pytest.approx(1.0)
    assert beyond_bins(values, bins) == 0.4
    assert bin_width_text([-6.0, -5.0, -4.0, -3.0]) == "bins of width 1 over [-6, -3]"
    assert bin_width_text(np.linspace(-0.4, 1.4, 19).round(3).tolist()) == "bins of width 0.1 over [-0.4, 1.4]"
    assert bin_width_text([0.0, 0.5, 2.0]) == "bins with edges 0, 0.5, 2"


def test_one_seed_figures_draw_without_error_bars(tmp_path):
    """The paper scale's one seed has no interval (ci95 None): the figures draw points without bars
    (matplotlib refuses None as a bar)."""
    from selm.report import figures

    figs = _paper_scale_figs()
    fig3 = {**figs["figure3_alpha"], "hist_by_alpha_iter2": {"0.0": [0.5, 0.5, 0.0, 0.0, 0.0, 0.0]},
            "hist_by_iteration": {"1": {"mean": 0.1, "hist": [0.2] * 5 + [0.0]}}}
    fig6 = {k: {"points": [{**p, "pairs_k": 61.1, "iteration": 1} for p in v["points"]]}
            for k, v in figs["figure6_ablations"].items()}
    assert figures.figure3(fig3, tmp_path)[0].stat().st_size > 10_000
    assert figures.figure6(fig6, tmp_path)[0].stat().st_size > 10_000


def _selection_text(sel: dict) -> str:
    """Figure 3's alpha selection in words: its verdicts computed (selm.report.claims), then rendered."""
    from selm.report.report_text import alpha_selection_text

    return alpha_selection_text(sel, selection_verdicts(sel))


def test_alpha_selection_in_words_with_and_without_the_true_reward():
    ext = {0.0: 0.50, 0.005: 0.60, 0.1: 0.55, 1.0: 0.40}
    # lead 0.60 - 0.55 = +0.05; each side's se 0.01 / 4.302653 = 0.0023241, the difference's 0.0032868 (2 dof):
    # MDE (4.302653 + 1.060660) * 0.0032868 = 0.0176, so the lead is beyond it
    text = _selection_text(_selection(ext, {0.0: 0.5, 0.005: 0.50, 0.1: 0.56, 1.0: 0.45}, 3, 0.01))
    assert "alpha 0 (iterative DPO, not searched): 0.500 ± 0.010; alpha 0.005: 0.600 ± 0.010;" in text
    assert "Selected: **alpha 0.005**; its lead over alpha 0.1 (+0.050) is beyond what the seeds resolve (MDE 0.018)" in text
    # r* selects 0.1: 0.56 - 0.50 = +0.06, beyond the MDE 0.0176 and r*'s floor 0.028
    assert ("would select alpha 0.1 (r* 0.560 vs 0.500 for alpha 0.005, +0.060, MDE 0.018, floor 0.028): selection by the external "
            "reward **does not agree** with selection by the true reward.") in text
    # r* 0.56 vs 0.55: +0.01, whose 95% interval (half-width 4.302653 * 0.0032868 = 0.0141) holds 0
    close = _selection_text(_selection(ext, {0.0: 0.5, 0.005: 0.55, 0.1: 0.56, 1.0: 0.45}, 3, 0.01))
    assert "+0.010, 95% interval includes 0; MDE 0.018, floor 0.028): selection by the external reward **does not agree** with " \
           "selection by the true reward, though their r* differ by less than the seeds resolve." in close
    same = _selection_text(_selection(ext, {0.0: 0.5, 0.005: 0.60, 0.1: 0.56, 1.0: 0.45}, 3, 0.01))
    assert "selects the same alpha (r* 0.600): selection by the external reward **agrees**" in same
    # a lead of 0.005 (0.605 vs 0.60) is below the MDE 0.0176
    near = _selection_text(_selection({0.005: 0.605, 0.1: 0.60}, None, 3, 0.01))
    assert "its lead over alpha 0.1 (+0.005) is within what the seeds resolve (95% interval includes 0; MDE 0.018)" in near
    assert "no true reward" in near
    # the rehearsal's Figure 3: one searched alpha beside iterative DPO
    single = _selection_text(_selection({0.0: 0.1, 0.001: 0.2}, None, 1))
    assert "Selected: **alpha 0.001**; it is the only searched alpha." in single



def test_figure6_panels_against_iterative_dpo():
    from selm.report.report_text import figure6_panels_text

    point = lambda mt, r, k: {"points": [{"pairs_k": k, "mt_bench": {"mean": mt, "ci95": 0.01, "n": 3},  # noqa: E731
                                          "r_star": {"mean": r, "ci95": 0.01, "n": 3}}]}
    fig6 = {"iterative (rank y_w, y_l, y_ref)": point(7.5, 0.50, 2.0), "stepwise": point(7.0, 0.40, 2.0),
            "batch32": point(7.0, 0.50, 2.0), "decaying_lr": point(7.49, 0.53, 2.0),
            "six_iterations": point(7.5, 0.56, 1.75)}
    text = figure6_panels_text(figure6_panels(fig6))
    # each side's se 0.01 / 4.302653 = 0.0023241, the difference's 0.0032868 (2 dof): half-width 0.0141,
    # MDE 5.363313 * 0.0032868 = 0.0176 (r*: the floor 0.028 is larger)
    assert "batch32 (batch size, 2k pairs seen): MT-Bench 7.000 vs 7.500 (-0.500, MDE 0.018: lower)" in text
    assert "decaying_lr (learning-rate schedule, 2k pairs seen): MT-Bench 7.490 vs 7.500 (-0.010, 95% interval " \
           "includes 0; MDE 0.018: inconclusive); r* 0.530 vs 0.500 (+0.030, MDE 0.018, floor 0.028: higher)" in text
    assert "six_iterations (number of iterations, 1.75k pairs seen)" in text and "r* 0.560 vs 0.500 (+0.060" in text
    assert "stepwise" not in text  # the label- and dataset-update variants are the claims section's
    assert figure6_panels_text(figure6_panels({"iterative (rank y_w, y_l, y_ref)": point(7.5, 0.5, 2.0)})) is None


def test_the_report_reads_the_same_from_claims_json(tmp_path):
    """The analyze stage stores the verdicts as JSON with sorted keys (selm.io.write_json_atomic); the
    report rendered from that file is the report rendered from the verdicts themselves."""
    import json

    data = _paper_scale_data(tmp_path, "experiments/toy.yaml")
    direct = render(data)
    data.claims = json.loads(json.dumps(data.claims, sort_keys=True))
    assert render(data) == direct
    assert "What agrees with the paper" in direct and "**inconclusive**" in direct
