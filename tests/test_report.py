"""The report's statistics, paper comparison and figures, on hand-built numbers."""

import math

import pytest

from selm.report.build import regime_conclusion
from selm.report.claims import regime_verdicts
from selm.report.comparison import paper_comparison
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
    # zero spread (identical, or the same nonzero difference in every seed): no t-test at all, not
    # p = 1 / p = 0 with a zero-width interval
    for a, b in (([1.0, 2.0], [1.0, 2.0]), ([2.0, 3.0], [1.0, 2.0])):
        t = paired_test(a, b)
        assert (t["p_value"], t["ci_low"], t["ci_high"], t["ci95"], t["sd"]) == (None, None, None, None, 0.0)
    with pytest.raises(ValueError, match="at least 2"):
        paired_test([1.0], [2.0])
    assert summarize([1.0, 2.0, 3.0]) == {"mean": 2.0, "ci95": round(4.302653 / math.sqrt(3), 5), "n": 3}
    assert summarize([1.0]) == {"mean": 1.0, "ci95": None, "n": 1}  # one seed: no interval


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
    # the verdicts are recomputed from the paired differences (n = 3, sd 0.001: MDE 0.0031, so the
    # between-machine floor 0.016 decides): -0.05 hurts, +0.05 helps, +0.01 is below the floor
    d = lambda m: {"mean_diff": m, "sd": 0.001, "n": 3}  # noqa: E731
    regimes = {"standard": {"selm": {"0.1": {"diff": d(0.01)}, "1.0": {"diff": d(-0.05)}}},
               "weak": {"selm": {"0.1": {"diff": d(0.05)}}}}
    text = regime_conclusion(regimes, regime_verdicts(regimes))
    assert "**helps** in 1 cell(s): weak at alpha=0.1" in text
    assert "**hurts** in 1 cell(s): standard at alpha=1" in text
    assert "**inconclusive** in 1 cell(s): standard at alpha=0.1" in text


def test_figures_are_written_from_analysis_data(tmp_path):
    from selm.report import figures

    path, facts = figures.figure1_concept(tmp_path)
    assert path.stat().st_size > 10_000
    # the point of the sketch: optimism moves the argmax towards the unexplored true maximum
    assert abs(facts["optimistic_argmax"] - facts["true_argmax"]) < abs(facts["vanilla_argmax"] - facts["true_argmax"])
    regimes = {"standard": {"selm": {"0.1": {"diff": {"mean_diff": -0.1, "ci_low": -0.2, "ci_high": -0.05, "n": 3}},
                                     "1.0": {"diff": {"mean_diff": -0.1, "sd": 0.0, "n": 3, "ci_low": None,
                                                      "ci_high": None}}}}}  # zero spread: a point, no bar
    assert figures.regime_map(regimes, regime_verdicts(regimes), tmp_path)[0].stat().st_size > 5_000
    heat = {"b": {"models": ["A", "B"], "matrix": [[50.0, 60.0], [40.0, 50.0]], "seeds": [1]}}
    first = figures.figure2_heatmaps(heat, tmp_path)[0].read_bytes()
    assert figures.figure2_heatmaps(heat, tmp_path)[0].read_bytes() == first  # same data, same bytes


def test_plain_agreement_verdicts_follow_the_numbers():
    from selm.report.claims import compute
    from selm.report.claims_text import render_claims

    # LC of the loop's start 30 (one evaluation: a fixed reference); DPO iter1 31 +- 0.5 (n 3, se
    # 0.5 / 4.302653 = 0.1162, MDE 5.3633 * 0.1162 = 0.623: +1 is beyond it), iter2 29.9 +- 0.5 (-0.1: inconclusive)
    row = lambda m, it, lc, ci, n: {"paper_model": f"{m} {it}", "our_base": "b", "method": m,  # noqa: E731
                                    "iteration": it, "seeds": n,
                                    "AE2 LC ours": lc, "AE2 LC ours ci95": ci}
    comparison = [row("base", "0", 30.0, None, 1), row("dpo", "1", 31.0, 0.5, 3), row("dpo", "2", 29.9, 0.5, 3)]
    # paired SELM - DPO over 3 seeds with sd 0.001 (MDE 5.3633 * 0.001 / sqrt 3 = 0.0031): r* +0.04 is
    # beyond the MDE and the r* floor 0.028; LC -1.0 with sd 0.1 (MDE 0.31) is a clear "SELM lower"
    t = lambda m, sd: {"mean_diff": m, "sd": sd, "n": 3, "ci_low": m - 0.1, "ci_high": m + 0.1}  # noqa: E731
    paired = {"b/alpha0.1": {"iterations": [{"iteration": 3, "mean_reward": t(0.04, 0.001),
                                              "alpaca_lc_win_rate": t(-1.0, 0.1)}]}}
    fig3 = {"hist_by_iteration": {"1": {"mean": 0.5}, "2": {"mean": 0.4}},
            "curves": {"0.0": {"lc": {"3": {"mean": 40.0}}}, "1.0": {"lc": {"3": {"mean": 41.0}}}}}
    fig4 = {"b": {"mean_chosen": 0.1, "mean_rejected": -0.1}}
    fig5 = {"b": {"mean": -0.1, "frac_positive": 0.4}}
    figs = {"paired_tests": paired, "figure3_alpha": fig3, "figure4_ird": fig4, "figure5_own_samples": fig5,
            "figure6_ablations": {}}
    lines = render_claims(compute(comparison, figs), figs).splitlines()
    assert "1 of 2" in lines[0] and lines[0].endswith("**inconclusive**.")  # iter2's -0.1 is within its MDE
    assert lines[1].endswith("**does not agree** (SELM lower).")  # LC CI below 0
    assert lines[2].endswith("**agrees**.")  # r* CI above 0
    assert "0.500 -> 0.400" in lines[3] and lines[3].endswith("no interval: **inconclusive**.")  # no r* curve
    assert "'Too large an alpha hurts' (alpha 1 below each other alpha by more than the seeds resolve: 0 of 1): " \
           "**inconclusive**" in lines[4]  # one seed per curve here: no interval
    assert lines[5].endswith("**inconclusive**.") and lines[6].endswith("**inconclusive**.")  # no per-prompt values


def test_figure6_claims_compare_the_last_points():
    from selm.report.claims import figure6_claims
    from selm.report.claims_text import figure6

    point = lambda mt, ci: {"points": [{"mt_bench": {"mean": mt, "ci95": ci, "n": 3}}]}  # noqa: E731
    fig6 = {"iterative (rank y_w, y_l, y_ref)": point(7.5, 0.01), "rank_w_ref": point(7.0, 0.01),
            "stepwise": point(8.0, 0.2), "offline": point(7.95, 0.2)}
    lines = [figure6(c, {}, {}) for c in figure6_claims(fig6)]
    # se of each side = ci95 / t(0.975, 2) = ci95 / 4.302653; the difference's se is their root sum of
    # squares; MDE = (4.302653 + 1.060660) * se
    # 7.5 - 7.0: se 0.003287, MDE 0.0176 -> higher
    assert "MT-Bench 7.500 vs 7.000 (+0.500, MDE 0.018: higher): **agrees**." in lines[0]
    # 7.5 - 8.0: se 0.046541, MDE 0.2496 -> lower
    assert "(-0.500, MDE 0.250: lower): **does not agree**." in lines[1]
    # 8.0 - 7.95: se 0.065737, half-width 0.2828 -> holds 0
    assert "(+0.050, 95% interval includes 0; MDE 0.353: inconclusive): **inconclusive**." in lines[2]


def test_claims_without_an_analysis_file_name_it(tmp_path, monkeypatch):
    from pathlib import Path

    from selm.experiments import load_experiments
    from selm.report import claims

    repo = Path(__file__).resolve().parents[1]
    spec = load_experiments(repo / "experiments" / "toy.yaml")
    monkeypatch.chdir(tmp_path)  # no evaluations here: an empty comparison
    (tmp_path / "analysis").mkdir()
    with pytest.raises(FileNotFoundError, match=r"analysis/figure3_alpha.json is missing: run python -m selm.report.analyze"):
        claims.write(spec, Path("experiments/toy.yaml"), tmp_path / "analysis", repo / "paper", "test")


def test_the_report_lists_only_its_own_experiments_runs(tmp_path):
    """provenance.json names the runs the report is built from: a controls run or an ad-hoc run
    below runs/ is no input of the toy report."""
    import json

    from selm.provenance import config_hash
    from selm.report.build import report_runs

    made = {}
    for experiment, cell in (("main", "tiny-sft/alpha0.1"), ("control_weak", "dpo/alpha0.0"), ("adhoc", "x/alpha0.0")):
        run = tmp_path / experiment / cell / "seed42"
        run.mkdir(parents=True)
        config = {"experiment": experiment}
        (run / "config.json").write_text(json.dumps(config))
        made[str(run)] = config_hash(config)
    (tmp_path / "main" / "tiny-sft" / "alpha0.0" / "seed42").mkdir(parents=True)  # no config: not a run yet
    main_run = str(tmp_path / "main" / "tiny-sft" / "alpha0.1" / "seed42")
    assert report_runs({"main", "alpha"}, tmp_path) == {main_run: made[main_run]}
