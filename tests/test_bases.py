"""The SFT base as a level of the design: base names and folders, experiments over base seeds (the
default base keeps its runs), the statistics with the base as a random factor (numbers computed by
hand here), the design's power and cost, the report's line on the between-base spread, and a mini
end to end run: two SFT bases x two seeds x explorer / DPO, then the analysis across bases."""

import json
import math
import os
import shutil
import statistics
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from selm import layout
from selm.config import ConfigError
from selm.experiments import expand, load_experiments
from selm.report import claims, controls, controls_analysis as ca, stats

ROOT = Path(__file__).resolve().parents[1]
# Student's t quantiles from a table (not from scipy): t_{0.975, dof} and t_{0.80, dof}
T975 = {1: 12.7062047, 3: 3.1824463, 4: 2.7764451, 6: 2.4469119, 7: 2.3646243}
T80 = {3: 0.9784723, 6: 0.9057033}


# --- names and folders --------------------------------------------------------------------------------

def test_base_names_folders_and_cell_references():
    assert layout.base_name("tiny-sft", None) == layout.base_name("tiny-sft", 0) == "tiny-sft"
    assert layout.base_name("tiny-sft", 3) == "tiny-sft.b3"
    assert layout.parse_base_name("tiny-sft.b3") == ("tiny-sft", 3)
    assert layout.parse_base_name("tiny-sft") == ("tiny-sft", 0)
    with pytest.raises(ValueError, match=r"the base of seed 0 is 'tiny-sft'"):
        layout.parse_base_name("tiny-sft.b0")
    with pytest.raises(ValueError, match="the base of seed 0"):
        layout.parse_base_name("tiny-sft.b01")  # one spelling per seed
    assert layout.base_path("models/tiny-sft", 2) == "models/tiny-sft.b2"
    assert layout.base_path("models/tiny-sft", 0) == "models/tiny-sft"
    assert layout.base_cell_ref("control_weak/dpo/alpha0.0", 1) == "control_weak/dpo.b1/alpha0.0"
    assert layout.base_cell_ref("control_weak/dpo/alpha0.0", 0) == "control_weak/dpo/alpha0.0"


def _spec(**exp):
    return OmegaConf.create({"seeds": [42, 43], "experiments": {"x": {"alphas": [0.0], "cells": {
        "dpo": {"model": "tiny-sft"}}, **exp}}})


def test_base_seeds_expand_into_cells_of_each_base_and_the_default_base_keeps_its_runs():
    plain = expand(_spec(), "x")
    based = expand(_spec(base_seeds=[0, 2]), "x")
    assert [str(r.run_dir) for r in based] == [
        "runs/x/dpo/alpha0.0/seed42", "runs/x/dpo/alpha0.0/seed43",
        "runs/x/dpo.b2/alpha0.0/seed42", "runs/x/dpo.b2/alpha0.0/seed43"]
    params = ROOT / "params.yaml"
    # base seed 0 is the run without base seeds: the same folder, the same config (so the same identities)
    assert [str(r.run_dir) for r in plain] == [str(r.run_dir) for r in based[:2]]
    assert plain[0].config(params) == based[0].config(params)
    cfg = based[2].config(params)
    assert (cfg.model.name, cfg.model.path, cfg.sft.seed, cfg.sft.init_seed) == ("tiny-sft.b2", "models/tiny-sft.b2", 2, 2)
    assert cfg.run_dir == "runs/x/dpo.b2/alpha0.0/seed42" and cfg.run.cell == "dpo.b2/alpha0.0"
    # a cell's own list wins over the experiment's
    spec = _spec(base_seeds=[0, 2])
    spec.experiments.x.cells.dpo.base_seeds = [5]
    assert [str(r.run_dir) for r in expand(spec, "x")][0] == "runs/x/dpo.b5/alpha0.0/seed42"


@pytest.mark.parametrize("bad, message", [([1, 1], "named twice"), ([-1], "non-negative"), ("1", "a non-empty list"),
                                          ([], "a non-empty list")])
def test_bad_base_seeds_are_refused_naming_the_cell(bad, message):
    with pytest.raises(ValueError, match=rf"spec.yaml: experiments.x.cells.dpo.base_seeds: .*{message}"):
        expand(_spec(base_seeds=bad), "x", "spec.yaml")


def test_a_base_seed_needs_a_base_the_sft_stage_trains():
    spec = OmegaConf.create({"seeds": [1], "experiments": {"x": {"alphas": [0.0], "base_seeds": [1], "cells": {
        "z": {"model": "zephyr-7b-sft"}}}}})
    with pytest.raises(ConfigError, match="model zephyr-7b-sft is not trained by the sft stage"):
        expand(spec, "x")[0].config(ROOT / "params.yaml")
    run = expand(_spec(base_seeds=[1]), "x")[0]
    with pytest.raises(ConfigError, match="sft.seed=3 and sft.init_seed=0 train the plain-named base"):
        from selm.compose import run_config
        run_config(ROOT / "params.yaml", groups=run.groups, dotlist=["sft.seed=3"], base_seed=1)


def test_the_controls_spec_runs_control_weak_on_the_other_bases_with_the_same_settings():
    spec = load_experiments(ROOT / "experiments" / "toy_controls.yaml")
    params = ROOT / "params.yaml"
    weak = {r.cell.split("/")[0]: r for r in expand(spec, "control_weak") if r.seed == 42}
    bases = expand(spec, "control_bases")
    item = spec.controls.bases[0]
    assert sorted({r.base_seed for r in bases} | {0}) == list(item.base_seeds)
    assert {r.seed for r in bases} == set(item.seeds)
    for run in bases:
        cell = run.cell.split("/")[0].rsplit(".b", 1)[0]
        mine, theirs = run.config(params), weak[cell].config(params)
        assert mine.model.path == f"models/tiny-sft.b{run.base_seed}"
        for section in ("train", "data", "generation", "ranker", "variant", "scale"):
            if section == "train":
                assert {**mine.train, "seed": 0} == {**theirs.train, "seed": 0}
            else:
                assert mine[section] == theirs[section], section
    stages = yaml.safe_load((ROOT / "experiments" / "controls" / "dvc.yaml").read_text())["stages"]
    trained = stages["sft_bases"]["cmd"].split()[4:]
    assert trained == [f"tiny-sft.b{b}" for b in sorted({r.base_seed for r in bases})]
    assert [f"models/{b}" for b in trained] == stages["sft_bases"]["outs"]
    assert set(stages["sft_bases"]["outs"]) <= set(stages["experiment_control_bases"]["deps"])


# --- statistics with the base as a random factor --------------------------------------------------------

def test_sd_from_an_interval_and_the_components_of_the_issues_two_bases():
    sd_amd = 0.0165 / T975[7] * math.sqrt(8)   # [0.022, 0.055] over 8 seeds
    sd_intel = 0.0095 / T975[7] * math.sqrt(8)  # [0.004, 0.023]
    assert stats.sd_from_interval(0.022, 0.055, 8) == pytest.approx(sd_amd, rel=1e-6)
    assert sd_amd == pytest.approx(0.019736, abs=1e-6)
    c = stats.components_from_summaries([0.0385, 0.0135], [sd_amd, sd_intel], [8, 8])
    within = (sd_amd ** 2 + sd_intel ** 2) / 2
    between = 0.025 ** 2 / 2 - within / 8  # var of the two means minus what 8 seeds explain
    assert c["sd_within"] == pytest.approx(math.sqrt(within), rel=1e-9)
    assert c["sd_between"] == pytest.approx(math.sqrt(between), rel=1e-9)
    assert (round(c["sd_within"], 4), round(c["sd_between"], 4)) == (0.0161, 0.0167)
    # means closer than their seeds explain: no between-base variance (not a negative one)
    assert stats.components_from_summaries([0.02, 0.021], [0.02, 0.02], [8, 8])["sd_between"] == 0.0


def test_variance_components_balanced_and_unbalanced():
    c = stats.variance_components([[1, 3], [5, 7]])
    # means 2, 6, grand 4: MSB = 2*4 + 2*4 = 16; MSW = 4 / 2 = 2; n0 = 2; sigma_b^2 = (16 - 2) / 2 = 7
    assert (c["ms_between"], c["ms_within"], c["n0"]) == (16, 2, 2)
    assert c["sd_between"] == pytest.approx(math.sqrt(7)) and c["sd_within"] == pytest.approx(math.sqrt(2))
    assert c["between_share"] == pytest.approx(7 / 9)
    u = stats.variance_components([[0, 2], [4]])
    # means 1, 4, grand 2: MSB = 2*1 + 1*4 = 6; MSW = 2 / 1; n0 = 3 - 5/3 = 4/3; sigma_b^2 = 4 / (4/3) = 3
    assert u["ms_between"] == pytest.approx(6) and u["n0"] == pytest.approx(4 / 3)
    assert u["sd_between"] == pytest.approx(math.sqrt(3))
    assert stats.variance_components([[1], [3]])["sd_within"] is None  # one seed per base: no within spread
    with pytest.raises(ValueError, match="at least 2 bases"):
        stats.variance_components([[1, 2]])


def test_across_base_mde():
    # se = sqrt((0.02^2 + 0.02^2 / 4) / 4); (t_{.975,3} + t_{.8,3}) * se
    se = math.sqrt((0.0004 + 0.0001) / 4)
    assert stats.across_base_mde(0.02, 0.02, 4, 4) == pytest.approx((T975[3] + T80[3]) * se, rel=1e-6)
    assert stats.across_base_mde(0.02, 0.02, 4, 4) == pytest.approx(0.046520, abs=1e-6)
    with pytest.raises(ValueError, match=">= 2 bases"):
        stats.across_base_mde(0.02, 0.02, 1, 4)


def test_the_bootstrap_over_bases_is_exact_for_few_bases():
    # two values: resample means 0 (1/4), 0.5 (1/2), 1 (1/4)
    assert stats.bootstrap_mean_interval([0.0, 1.0]) == (0.0, 1.0)
    # [0, 0, 3]: the mean is the number k of 3s drawn, k ~ Binomial(3, 1/3): P = 8/27, 12/27, 6/27, 1/27;
    # cumulative 0.296, 0.741, 0.963, 1: the 97.5% bound is k = 3
    assert stats.bootstrap_mean_interval([0.0, 0.0, 3.0]) == pytest.approx((0.0, 3.0))
    # [0, 0, 0, 4]: k ~ Binomial(4, 1/4), cumulative 0.316, 0.738, 0.949, 0.996, 1: the bound is k = 3, mean 3
    assert stats.bootstrap_mean_interval([0.0, 0.0, 0.0, 4.0]) == pytest.approx((0.0, 3.0))
    # beyond the exact limit: seeded draws, here of a constant
    assert stats.bootstrap_mean_interval([5.0] * 12) == (5.0, 5.0)


def test_across_base_test_has_the_bases_as_units():
    t = stats.across_base_test([0.01, 0.03, 0.02, 0.04])
    sd = math.sqrt((0.015 ** 2 + 0.005 ** 2 + 0.005 ** 2 + 0.015 ** 2) / 3)
    half = T975[3] * sd / 2
    assert t["mean_diff"] == pytest.approx(0.025) and t["sd"] == pytest.approx(sd) and t["dof"] == 3
    assert (t["ci_low"], t["ci_high"]) == pytest.approx((0.025 - half, 0.025 + half))
    assert t["n_bases_positive"] == 4 and t["n"] == 4
    v = stats.effect_verdict(t, 0.0)
    assert v["verdict"] == "inconclusive" and "minimum detectable" in v["reason"]  # 0.025 < MDE (4.16 * se)


def _welch_half(se2, dof_se, sb2, dof_b):
    """t95 at Welch-Satterthwaite's degrees of freedom times the combined sd (scipy for the quantile)."""
    from scipy import stats as sps

    dof = (se2 + sb2) ** 2 / (se2 ** 2 / dof_se + sb2 ** 2 / dof_b)
    return sps.t.ppf(0.975, dof) * math.sqrt(se2 + sb2), dof


def test_an_effect_against_the_between_base_spread():
    test = {"mean_diff": 0.05, "sd": 0.02, "n": 5}  # se^2 = 0.0004 / 5 = 8e-5, 4 degrees of freedom
    wide = stats.against_base_spread(test, 0.03, 6)
    # dof = (8e-5 + 9e-4)^2 / ((8e-5)^2 / 4 + (9e-4)^2 / 6) = 9.604e-7 / 1.366e-7 = 7.03
    assert wide["dof"] == pytest.approx(9.604e-7 / 1.366e-7, rel=1e-9)
    half, _ = _welch_half(8e-5, 4, 9e-4, 6)
    assert wide["half_width"] == pytest.approx(half, rel=1e-9) and wide["exceeds"] is False  # 0.05 < 0.074
    narrow = stats.against_base_spread(test, 0.01, 6)
    assert narrow["half_width"] == pytest.approx(_welch_half(8e-5, 4, 1e-4, 6)[0], rel=1e-9)
    assert narrow["exceeds"] is True
    # no between-base spread: the seeds' own interval, t95(4) * se
    assert stats.against_base_spread(test, 0.0, 6)["half_width"] == pytest.approx(T975[4] * math.sqrt(8e-5), rel=1e-6)
    # a single-seed effect has no se: the between-base part alone, t95(base_dof) * sigma_b
    assert stats.against_base_spread({"mean_diff": 0.05, "n": 1}, 0.01, 6)["half_width"] == pytest.approx(
        T975[6] * 0.01, rel=1e-6)


def test_the_design_cost_and_the_choice_within_a_budget():
    cost = {"existing_bases": 1, "sft_cpu_s": 177, "run_cpu_s": 43, "arms": 2, "cores": 2, "budget_s": 1080}
    assert ca.design_cost(7, 2, cost) == 6 * (177 + 2 * 2 * 43) / 2 == 1047
    table = [{"bases": 4, "seeds": 4, "mde": 0.04, "seconds": 800}, {"bases": 7, "seeds": 2, "mde": 0.026, "seconds": 1047},
             {"bases": 8, "seeds": 2, "mde": 0.023, "seconds": 1221}, {"bases": 6, "seeds": 3, "mde": 0.026, "seconds": 1000}]
    assert ca.choose_design(table, 1080) == table[3]  # the same MDE as 7 x 2, cheaper
    assert ca.choose_design(table, 100) is None
    # the spec's design is the one of smallest MDE within its budget, under its prior
    item = OmegaConf.to_container(load_experiments(ROOT / "experiments" / "toy_controls.yaml").controls.bases[0])
    prior = ca.prior_components(item["prior"])
    best = ca.choose_design(ca.design_table(prior["sd_between"], prior["sd_within"], item["cost"]),
                            item["cost"]["budget_s"])
    assert (best["bases"], best["seeds"]) == (len(item["base_seeds"]), len(item["seeds"])) == (7, 2)
    # 7 bases x 2 seeds: se^2 = (sigma_b^2 + sigma_w^2 / 2) / 7, (t_{.975,6} + t_{.8,6}) * se
    se = math.sqrt((prior["sd_between"] ** 2 + prior["sd_within"] ** 2 / 2) / 7)
    assert best["mde"] == pytest.approx((T975[6] + T80[6]) * se, rel=1e-6)
    assert round(best["mde"], 3) == 0.026


# --- the report: effects against the between-base spread ---------------------------------------------

def _paired():
    t = {"mean_diff": 0.05, "sd": 0.02, "n": 5, "ci_low": 0.025, "ci_high": 0.075}
    lc = {"mean_diff": 1.0, "sd": 0.5, "n": 5, "ci_low": 0.4, "ci_high": 1.6}
    return {"main/tiny-sft": {"iterations": [{"iteration": 3, "mean_reward": t, "alpaca_lc_win_rate": lc,
                                               "mt_bench_average": lc}]}}


def _bases_json(sd_r=0.01, sd_lc=3.0, n=7):
    def test(sd):
        return {"components": {"sd_between": sd, "sd_within": 0.01, "bases": n}}
    return {"rows": [{"name": "weak", "tests": {"r_star": test(sd_r), "alpaca_lc": test(sd_lc)}}],
            "provenance": {"git_commit": "abcdef1234567"}}


def test_effects_are_annotated_against_the_between_base_spread():
    paired = _paired()
    spread = claims.base_spread(_bases_json(), "results/toy/controls/bases.json")
    out = claims.against_bases(paired, claims.paired_last(paired), None, spread)["paired"]["main/tiny-sft"]
    # r*: +0.05, se^2 0.0004/5 (4 dof), sigma_b 0.01 over 7 bases (6 dof)
    assert out["mean_reward"]["half_width"] == pytest.approx(_welch_half(0.0004 / 5, 4, 0.0001, 6)[0], rel=1e-9)
    assert out["mean_reward"]["exceeds"] is True
    # LC: +1.0 against a between-base sd of 3 points
    assert out["alpaca_lc_win_rate"]["exceeds"] is False
    assert out["mt_bench_average"]["exceeds"] is None  # not measured by the controls


def test_the_first_screen_says_which_effects_exceed_the_spread_or_that_it_is_absent():
    from selm.report.report_text import ReportData, render_summary

    paired = _paired()
    spec = OmegaConf.create({"seeds": [42, 43, 44, 45, 46], "bases": ["tiny-sft"], "report": {
        "name": "toy", "command": "c", "comparability": "c", "academic": "a", "mt_bench": "m", "untested": "u."}})

    def summary(bases):
        spread = claims.base_spread(bases, "results/toy/controls/bases.json")
        data = ReportData("toy", "spec.yaml", spec, Path("r.md"), Path("t"), Path("f"), [], paired,
                          {"claims": [], "paired_last": claims.paired_last(paired), "selm_minus_dpo": [],
                           "between_bases": claims.against_bases(paired, claims.paired_last(paired), None, spread)},
                          {}, {}, runs={"main": 10})
        return render_summary(data)

    text = summary(_bases_json())
    assert ("- **Across SFT bases:** 1 of 2 SELM-vs-DPO effects exceed the between-base spread measured by the "
            "controls experiment (`results/toy/controls/bases.json`: between-base sd r* 0.01, AE2 LC 3, over 7 SFT "
            "bases, commit abcdef1234): main/tiny-sft r*.") in text
    assert "No between-base spread was measured for MT-Bench." in text
    absent = summary(None)
    assert "- **Across SFT bases:** not measured: `results/toy/controls/bases.json` is absent" in absent
    assert "holds for one SFT base per model" in absent


# --- a mini end to end run: two SFT bases x two seeds x explorer / DPO ------------------------------------

SMALL_SFT = {"size": "14k", "epochs": 2, "batch_size": 16, "lr": 0.03, "headroom_prompts": 4, "headroom_n": 2}


@pytest.mark.slow
def test_two_bases_two_seeds_end_to_end(tmp_path, one_torch_thread):
    """`sft tiny-sft tiny-sft.b1` trains two different bases; an experiment with base_seeds [0, 1] runs each
    cell from each base (its shared iteration 0 under the base's name); the analysis across bases reads
    every base's runs, and its numbers are those computed here from the runs' summaries."""
    from selm.cli.stage import main as stage_main
    from selm.experiments import run_experiments
    from selm.world import build_world

    build_world(tmp_path / "data" / "world", seed=0, n_sft=160, n_train_prefs=24, n_test_prefs=6, n_eval=4,
                n_mt_bench=2, n_lmeval=4, families=["upper", "count"])
    params = {"train": {"global_batch_size": 4, "per_device_batch_size": 4},
              "data": {"train_prefs": "data/world/train_prefs.jsonl", "test_prefs": "data/world/test_prefs.jsonl",
                       "slice_size": 8},
              "eval": {"n_prompts": 4, "coverage_samples": 2}, "scale": {"max_new_tokens": 6},
              "sft": SMALL_SFT, "paths": {"ref_cache_dir": "cache", "shared_runs": "runs/shared"}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    cell = {"model": "tiny-sft", "model.iterations": [1], "logger.wandb": False}
    spec = {"seeds": [1, 2], "workers": 1, "experiments": {"e": {"eval": [], "alphas": [0.0], "base_seeds": [0, 1],
            "cells": {"dpo": cell, "bok": {**cell, "variant": "best_of_k", "variant.y_ref_samples": 2}}}},
            "controls": {"bases": [{"name": "mini", "dpo": ["e/dpo/alpha0.0"], "explorer": ["e/bok/alpha0.0"],
                                    "base_seeds": [0, 1]}]}}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        stage_main(["--params", "params.yaml", "sft", "tiny-sft", "tiny-sft.b1"])
        run_experiments(["e"], Path("spec.yaml"), Path("params.yaml"))
        result = ca.analyze(Path("spec.yaml"), sections=["bases"])["bases"]
    finally:
        os.chdir(cwd)
    models = tmp_path / "models"
    sft_seeds = {b: json.loads((models / b / "sft_metrics.json").read_text())["params"]["seed"]
                 for b in ("tiny-sft", "tiny-sft.b1")}
    assert sft_seeds == {"tiny-sft": 0, "tiny-sft.b1": 1}
    assert (models / "tiny-sft" / "model.safetensors").read_bytes() != (models / "tiny-sft.b1" / "model.safetensors").read_bytes()
    runs = tmp_path / "runs" / "e"
    assert sorted(str(p.relative_to(runs)) for p in runs.glob("*/alpha0.0/seed*")) == sorted(
        f"{c}/alpha0.0/seed{s}" for c in ("bok", "bok.b1", "dpo", "dpo.b1") for s in (1, 2))
    for cell_dir, base in (("dpo", "tiny-sft"), ("dpo.b1", "tiny-sft.b1")):
        config = json.loads((runs / cell_dir / "alpha0.0" / "seed1" / "config.json").read_text())
        assert (config["model"]["name"], config["model"]["path"]) == (base, f"models/{base}")
        # iteration 0 is trained once per base and seed, in the base's own shared folder
        shared = list((tmp_path / "runs" / "shared" / base).glob("iter0-seed1-*/model"))
        assert len(shared) == 1
        assert os.path.samefile(shared[0] / "model.safetensors",
                                runs / cell_dir / "alpha0.0" / "seed1" / "iter0" / "model" / "model.safetensors")

    def final(cell_dir, seed, key="mean_reward"):
        summary = json.loads((runs / cell_dir / "alpha0.0" / f"seed{seed}" / "summary.json").read_text())
        return summary["iter1"][key]

    diffs = {b: [final(f"bok{suffix}", s) - final(f"dpo{suffix}", s) for s in (1, 2)]
             for b, suffix in ((0, ""), (1, ".b1"))}
    r = result["rows"][0]["tests"]["r_star"]
    assert [b["base_seed"] for b in r["per_base"]] == [0, 1]
    assert [b["mean_diff"] for b in r["per_base"]] == pytest.approx([statistics.fmean(diffs[0]), statistics.fmean(diffs[1])])
    means = [statistics.fmean(diffs[0]), statistics.fmean(diffs[1])]
    assert r["across"]["mean_diff"] == pytest.approx(statistics.fmean(means))
    assert r["across"]["sd"] == pytest.approx(statistics.stdev(means)) and r["across"]["dof"] == 1
    msw = sum((d - statistics.fmean(ds)) ** 2 for ds in diffs.values() for d in ds) / 2
    assert r["components"]["sd_within"] == pytest.approx(math.sqrt(msw))
    assert r["seeds_only"]["n"] == 4
    text = controls.bases_markdown(result | {"provenance": {"spec": "spec.yaml", "git_commit": "x"}})
    assert "| mini | r* (greedy) | 2 x 2 |" in text
