"""The report's statistics, paper comparison and figures, on hand-built numbers."""

import math

import pytest

from selm.report.build import paper_comparison, regime_conclusion
from selm.report.stats import paired_test, summarize


def test_paired_test_by_hand():
    # differences (1.0, 2.0, 3.0): mean 2, sd 1, t = 2 / (1/sqrt 3) = 3.4641, df 2
    t = paired_test([11.0, 12.0, 13.0], [10.0, 10.0, 10.0])
    assert t["mean_diff"] == 2.0 and t["n_a_greater"] == 3
    half = 4.302653 / math.sqrt(3)  # t(0.975, 2) * sd / sqrt(n)
    assert (t["ci_low"], t["ci_high"]) == (pytest.approx(2 - half, abs=1e-4), pytest.approx(2 + half, abs=1e-4))
    # two-sided p for t = 3.4641 with 2 dof: 1 - |t| / sqrt(t^2 + 2) (closed form for df = 2)
    assert t["p_value"] == pytest.approx(1 - 3.4641016 / math.sqrt(3.4641016**2 + 2), abs=1e-4)


def test_paired_test_edge_cases():
    assert paired_test([1.0, 2.0], [1.0, 2.0])["p_value"] == 1.0  # identical: no evidence
    assert paired_test([2.0, 3.0], [1.0, 2.0])["p_value"] == 0.0  # constant nonzero difference
    with pytest.raises(ValueError, match="at least 2"):
        paired_test([1.0], [2.0])
    assert summarize([1.0, 2.0, 3.0]) == {"mean": 2.0, "ci95": round(4.302653 / math.sqrt(3), 5), "n": 3}


def _ours(base, method, iteration, seed, lc, mt):
    return {"base": base, "method": method, "iteration": iteration, "seed": seed, "alpaca_lc_win_rate": lc,
            "alpaca_win_rate": lc, "mt_bench_average": mt}


def test_paper_comparison_pairs_roles_and_deltas():
    paper1 = [
        {"model": "Zephyr-7B-DPO", "base": "zephyr", "method": "offline_dpo", "iteration": "0", "lc_win_rate": "15.0",
         "win_rate": "14.0", "mtbench_avg": "7.0"},
        {"model": "SELM Iter 1 (Zephyr)", "base": "zephyr", "method": "selm", "iteration": "1", "lc_win_rate": "20.0",
         "win_rate": "18.0", "mtbench_avg": "7.5"},
    ]
    paper2 = [{"base": "zephyr", "method": m, "iteration": i, "average": a}
              for m, i, a in (("offline_dpo", "0", "57.0"), ("selm", "1", "59.0"))]
    rows = [_ours("tiny-sft", "iterative DPO", "iter0", s, 30.0 + s, 4.0) for s in (1, 2)]
    rows += [_ours("tiny-sft", "SELM (alpha=0.1)", "iter1", s, 40.0 + s, 4.5) for s in (1, 2)]
    rows += [_ours("tiny-sft", "SELM (alpha=1)", "iter1", 1, 99.0, 9.0)]  # another alpha: not the compared one
    out = {r["paper_model"]: r for r in paper_comparison(rows, paper1, paper2, selm_alpha=0.1)}
    selm = out["SELM Iter 1 (Zephyr)"]
    assert selm["AE2 LC ours"] == 41.5 and selm["AE2 LC paper"] == 20.0
    assert selm["AE2 LC ours delta"] == 41.5 - 31.5 and selm["AE2 LC paper delta"] == 5.0
    assert selm["MT avg ours delta"] == 0.5 and selm["MT avg paper delta"] == 0.5
    assert "academic mean ours" not in selm  # no lm-eval numbers of ours: not invented
    assert out["Zephyr-7B-DPO"]["AE2 LC ours delta"] == 0.0


def test_regime_conclusion_counts_verdicts():
    regimes = {"standard": {"selm": {"0.1": {"verdict": "no detectable effect"}, "1.0": {"verdict": "hurts"}}},
               "weak": {"selm": {"0.1": {"verdict": "helps"}}}}
    text = regime_conclusion(regimes)
    assert "**helps** in 1 cell(s): weak at alpha=0.1" in text
    assert "**hurts** in 1 cell(s): standard at alpha=1" in text
    assert "**no detectable effect** in 1 cell(s)" in text


def test_figures_are_written_from_analysis_data(tmp_path):
    from selm.report import figures

    path, facts = figures.figure1_concept(tmp_path)
    assert path.stat().st_size > 10_000
    # the point of the sketch: optimism moves the argmax towards the unexplored true maximum
    assert abs(facts["optimistic_argmax"] - facts["true_argmax"]) < abs(facts["vanilla_argmax"] - facts["true_argmax"])
    regimes = {"standard": {"selm": {"0.1": {"verdict": "hurts", "diff": {"mean_diff": -0.1, "ci_low": -0.2,
                                                                          "ci_high": -0.05}}}}}
    assert figures.regime_map(regimes, tmp_path)[0].stat().st_size > 5_000
    heat = {"b": {"models": ["A", "B"], "matrix": [[50.0, 60.0], [40.0, 50.0]], "seeds": [1]}}
    first = figures.figure2_heatmaps(heat, tmp_path)[0].read_bytes()
    assert figures.figure2_heatmaps(heat, tmp_path)[0].read_bytes() == first  # same data, same bytes


def test_plain_agreement_verdicts_follow_the_numbers():
    from selm.report.report_text import plain_agreement

    comparison = [{"method": "dpo", "AE2 LC ours delta": 1.0}, {"method": "dpo", "AE2 LC ours delta": -0.5}]
    t = lambda m, lo, hi: {"mean_diff": m, "ci_low": lo, "ci_high": hi}  # noqa: E731
    paired = {"b/alpha0.1": {"iterations": [{"iteration": 3, "mean_reward": t(0.02, 0.01, 0.03),
                                              "alpaca_lc_win_rate": t(-1.0, -2.0, -0.5)}]}}
    fig3 = {"hist_by_iteration": {"1": {"mean": 0.5}, "2": {"mean": 0.4}},
            "curves": {"0.0": {"lc": {"3": {"mean": 40.0}}}, "1.0": {"lc": {"3": {"mean": 41.0}}}}}
    fig4 = {"b": {"mean_chosen": 0.1, "mean_rejected": -0.1}}
    fig5 = {"b": {"mean": -0.1, "frac_positive": 0.4}}
    lines = plain_agreement(comparison, paired, fig3, fig4, fig5).splitlines()
    assert "1 of 2" in lines[0] and lines[0].endswith("**does not agree**.")
    assert lines[1].endswith("**does not agree** (SELM lower).")  # LC CI below 0
    assert lines[2].endswith("**agrees**.")  # r* CI above 0
    assert "0.500 -> 0.400" in lines[3] and lines[3].endswith("**does not agree**.")
    assert "'Too large an alpha hurts': **does not agree**" in lines[4]
    assert lines[5].endswith("**agrees**.") and lines[6].endswith("**does not agree**.")


def test_report_of_a_single_seed_scale_without_true_reward(tmp_path):
    """The paper scale's report: one seed, no r*, no regime map. Sections that need them are left
    out (not filled with made-up numbers) and the rest still renders."""
    from argparse import Namespace

    from omegaconf import OmegaConf

    from selm.report.build import coverage_markdown, paired_markdown
    from selm.report.report_text import render

    paired = {"z/alpha0.001": {"seeds": [42], "iterations": [], "note": "fewer than 2 seeds: no test"}}
    data = {
        "figure3_alpha.json": {"curves": {"0.0": {"lc": {"3": {"mean": 20.0}}, "r_star": {}},
                                          "0.001": {"lc": {"3": {"mean": 22.0}}, "r_star": {}}},
                               "hist_by_iteration": {"1": {"mean": 0.1}, "2": {"mean": 0.2}},
                               "shift_cell": "m/z/alpha0.001", "reward": "PairRM logit"},
        "figure4_ird.json": {"z": {"mean_chosen": 0.01, "mean_rejected": -0.02, "frac_chosen_positive": 0.6,
                                   "frac_rejected_negative": 0.7}},
        "figure5_own_samples.json": {"z": {"mean": 0.01, "frac_positive": 0.6}},
        "figure6_ablations.json": {"iterative": {"points": [{"mt_bench": {"mean": 7.5}}]}},
    }
    text = render(args=Namespace(report=tmp_path / "R.md", scale="paper-scale", spec="experiments/paper.yaml"),
                  spec=OmegaConf.create({"seeds": [42], "bases": ["z"], "description": "the paper's."}),
                  comparison=[], paired=paired, regimes=None, load=lambda name: data[name],
                  fig1_facts={"vanilla_argmax": 0.3, "optimistic_argmax": 0.9, "true_argmax": 0.8},
                  tables=tmp_path / "t", figdir=tmp_path / "f", paired_md=paired_markdown(paired),
                  coverage_md=coverage_markdown(paired), regime_md=None, regime_conclusion=None, comparison_md="")
    assert "fewer than 2 seeds per cell: no paired test" in text
    assert "high-reward coverage" not in text.split("## Figures")[1] and "Regime map" not in text
    assert "Final point of each variant (MT-Bench): iterative: 7.50." in text
    assert "Figure 4" in text and "Figure 5" in text


def test_figure6_claims_compare_the_last_points():
    from selm.report.report_text import _figure6_claims

    point = lambda mt, ci: {"points": [{"mt_bench": {"mean": mt, "ci95": ci}}]}  # noqa: E731
    fig6 = {"iterative (rank y_w, y_l, y_ref)": point(7.5, 0.01), "rank_w_ref": point(7.0, 0.01),
            "stepwise": point(7.6, 0.2), "offline": point(7.55, 0.2)}
    lines = _figure6_claims(fig6)
    assert lines[0].endswith("MT-Bench 7.500 vs 7.000: **agrees** in direction.")  # 0.5 apart, intervals 0.02
    assert lines[1].endswith("**does not agree**.")  # stepwise above iterative
    assert lines[2].endswith("(intervals overlap): **agrees** in direction, within the seed intervals.")
