"""The controls' analysis and mechanism probe: arms over several cells, the paper's fraction, the
power rule, the per-term gradients at pi = pi_ref, and the report section."""

import json
import math

import pytest
import torch

from conftest import make_pairs
from selm.io import DataError
from selm.report import controls, controls_analysis as ca
from selm.report.mechanism import changes, term_gradients


def _run(root, cell, seed, iters, coverage=None, lc=None):
    d = root / "runs" / cell / f"seed{seed}"
    d.mkdir(parents=True)
    summary = {"base": {"mean_reward": 0.4}}
    for t, r in enumerate(iters):
        summary[f"iter{t}"] = {"mean_reward": r}
    if coverage is not None:
        summary[f"iter{len(iters) - 1}"]["coverage"] = {"frac_prompts_covered": coverage, "mean_best_of_k": coverage + 0.1}
    (d / "summary.json").write_text(json.dumps(summary))
    if lc is not None:
        e = root / "evals" / cell / f"seed{seed}" / f"iter{len(iters) - 1}"
        e.mkdir(parents=True)
        (e / "metrics.json").write_text(json.dumps({"alpaca_lc_win_rate": lc}))


def test_an_arm_is_the_union_of_its_cells_by_seed(tmp_path):
    _run(tmp_path, "main/c/alpha0.0", 1, [0.5, 0.6], coverage=0.3, lc=20.0)
    _run(tmp_path, "extra/c/alpha0.0", 1, [0.5, 0.6])           # the same training again: agrees
    _run(tmp_path, "extra/c/alpha0.0", 2, [0.5, 0.7])
    arm = ca.arm(["main/c/alpha0.0", "extra/c/alpha0.0"], tmp_path)
    assert sorted(arm) == [1, 2]
    assert arm[1] == {"iteration": "iter1", "r_star": 0.6, "start_r_star": 0.5, "coverage": 0.3, "best_of_k": 0.4,
                      "alpaca_lc": 20.0}
    assert arm[2]["r_star"] == 0.7 and "coverage" not in arm[2]
    _run(tmp_path, "bad/c/alpha0.0", 2, [0.5, 0.71])
    with pytest.raises(DataError, match="seed 2: extra/c/alpha0.0 and bad/c/alpha0.0 disagree"):
        ca.arm(["extra/c/alpha0.0", "bad/c/alpha0.0"], tmp_path)
    with pytest.raises(FileNotFoundError, match="no run folders"):
        ca.arm(["nope/c/alpha0.0"], tmp_path)


def test_compare_pairs_by_seed_and_skips_metrics_with_too_few_seeds(tmp_path):
    a = {1: {"r_star": 0.60, "coverage": 0.5}, 2: {"r_star": 0.64}, 3: {"r_star": 0.70}}
    b = {1: {"r_star": 0.50, "coverage": 0.4}, 2: {"r_star": 0.55}, 3: {"r_star": 0.58}, 4: {"r_star": 0.9}}
    out = ca.compare(a, b)
    assert set(out) == {"r_star"}  # coverage has one common seed only
    diffs = [0.10, 0.09, 0.12]
    mean, sd = sum(diffs) / 3, math.sqrt(sum((d - 0.10333333) ** 2 for d in diffs) / 2)
    assert out["r_star"]["mean_diff"] == pytest.approx(mean, abs=1e-5)
    assert out["r_star"]["sd"] == pytest.approx(sd, abs=1e-5)
    assert out["r_star"]["seeds"] == [1, 2, 3] and out["r_star"]["verdict"] == "positive"


def test_paper_fraction_reads_table1(tmp_path):
    table = tmp_path / "t.csv"
    table.write_text("model,base,method,iteration,lc_win_rate\nA,zephyr,offline_dpo,0,15.41\nB,zephyr,dpo,1,20.0\n"
                     "C,zephyr,dpo,3,22.19\nD,zephyr,selm,3,24.25\n")
    f = ca.paper_fraction(table, "zephyr")
    assert f["iteration"] == 3
    assert f["fraction"] == pytest.approx((24.25 - 22.19) / (22.19 - 15.41))
    with pytest.raises(KeyError, match="paper base 'gpt'"):
        ca.paper_fraction(table, "gpt")


def test_seeds_needed_is_the_first_n_whose_mde_reaches_the_effect():
    from scipy import stats

    def mde(sd, n):
        return (stats.t.ppf(0.975, n - 1) + stats.t.ppf(0.8, n - 1)) * sd / math.sqrt(n)

    n = ca.seeds_needed(0.02, 0.015)
    assert mde(0.02, n) <= 0.015 < mde(0.02, n - 1)
    assert ca.seeds_needed(0.02, 1e-6, most=50) is None


def test_mechanism_changes_split_y_ref_by_its_role():
    before = torch.tensor([[-10.0, -20.0, -10.0], [-5.0, -6.0, -7.0]])
    after = torch.tensor([[-9.0, -22.0, -9.0], [-5.0, -7.0, -9.0]])
    records = [{"chosen": "a", "rejected": "b", "response": "a"}, {"chosen": "c", "rejected": "d", "response": "e"}]
    out = changes(before, after, records)
    assert out["dlogp_y_w"] == pytest.approx(0.5) and out["dlogp_y_l"] == pytest.approx(-1.5)
    assert out["dlogp_y_ref"] == pytest.approx(-0.5)
    assert (out["dlogp_y_ref_when_chosen"], out["dlogp_y_ref_when_neither"]) == (1.0, -2.0)
    assert out["dlogp_y_ref_when_rejected"] is None and out["n_y_ref_rejected"] == 0


def test_term_gradients_at_the_reference(tiny_model, one_torch_thread):
    """At pi = pi_ref the DPO term's gradient is -beta/2 * mean(grad log pi(y_w) - grad log pi(y_l)),
    and the optimism term per alpha is beta * mean(grad log pi(y_ref)): computed here pair by pair."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from selm.data import PairCollator, PairDataset, pad_token_id, tokenize_pairs
    from selm.logps import completion_logps

    tok = AutoTokenizer.from_pretrained(tiny_model)
    pairs, _ = tokenize_pairs(make_pairs(5), tok, max_length=64, max_prompt_length=32)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    beta = 0.1
    got = term_gradients(model, pairs, beta, pad_token_id(tok), batch_size=2)
    params = [p for p in model.parameters() if p.requires_grad]
    dpo = [torch.zeros_like(p) for p in params]
    opt = [torch.zeros_like(p) for p in params]
    for pair in pairs:  # one pair at a time
        batch = PairCollator(pad_token_id(tok))([PairDataset([pair])[0]])
        lp, _ = completion_logps(model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
        for acc, g in zip(dpo, torch.autograd.grad(-beta / 2 * (lp[0] - lp[1]) / len(pairs), params, retain_graph=True)):
            acc += g
        for acc, g in zip(opt, torch.autograd.grad(beta * lp[2] / len(pairs), params)):
            acc += g
    flat_dpo, flat_opt = torch.cat([g.flatten() for g in dpo]), torch.cat([g.flatten() for g in opt])
    assert got["grad_norm_dpo"] == pytest.approx(float(flat_dpo.norm()), rel=1e-4)
    assert got["grad_norm_optimism_per_alpha"] == pytest.approx(float(flat_opt.norm()), rel=1e-4)
    cos = float(flat_dpo @ flat_opt / (flat_dpo.norm() * flat_opt.norm()))
    assert got["cosine_dpo_optimism"] == pytest.approx(cos, abs=1e-4)


def test_report_section_renders_what_exists(tmp_path):
    with pytest.raises(FileNotFoundError, match="none of"):
        controls.render(tmp_path)
    prov = {"spec": "experiments/toy_controls.yaml", "git_commit": "abc1234567890"}
    t = {"n": 5, "a_mean": 0.6, "b_mean": 0.55, "mean_diff": 0.05, "ci_low": 0.03, "ci_high": 0.07, "n_a_greater": 5,
         "verdict": "positive"}
    (tmp_path / "positive_control.json").write_text(json.dumps({"rows": [{"name": "s", "tests": {"r_star": t}}],
                                                                "provenance": prov}))
    text = controls.render(tmp_path)
    assert "`experiments/toy_controls.yaml` (commit abc1234567)" in text
    assert "| s | r* (greedy) | 5 | 0.600 | 0.550 | +0.050 [+0.030, +0.070] | 5/5 | positive |" in text
    assert "Power" not in text


def test_positive_reading_says_why_only_when_the_numbers_say_so():
    t = {"n": 5, "mean_diff": 0.001, "ci_low": -0.01, "ci_high": 0.012, "verdict": "inconclusive"}
    q = {"mean_r_star_chosen": 0.84, "mean_r_star_y_ref": 0.53, "mean_r_star_policy_start": 0.51,
         "mean_r_star_policy_gain": 0.02}
    row = {"name": "s", "tests": {"r_star": t}, "pair_quality": {"dpo": q, "explorer": {**q, "mean_r_star_chosen": 0.89}}}
    text = controls.positive_reading(row)
    assert "cannot show that better exploration helps" in text and "limited by how far an iteration moves" in text
    row["pair_quality"]["dpo"]["mean_r_star_chosen"] = 0.70  # gap to the policy 0.19; the explorer adds 0.30 of it
    row["pair_quality"]["explorer"]["mean_r_star_chosen"] = 1.0
    assert "limited by" not in controls.positive_reading(row)
    row["tests"]["r_star"] = {**t, "mean_diff": 0.05, "ci_low": 0.04, "ci_high": 0.06, "verdict": "positive"}
    assert "can see an exploration gain" in controls.positive_reading(row)


def test_mechanism_table_renders_one_row_per_alpha(tmp_path):
    row = {"alpha": 0.1, "grad_ratio_optimism_to_dpo": 0.078, "mean_train_grad_norm": 1.79, "dlogp_y_w": 0.148,
           "dlogp_y_l": -0.246, "dlogp_y_ref": -0.05, "dlogp_y_ref_when_chosen": 0.036, "dlogp_y_ref_when_neither": -0.06,
           "r_star": 0.515, "n_y_ref_chosen": 1, "n_y_ref_rejected": 0, "n_y_ref_neither": 1}
    result = {"start": "s", "n_pairs": 2, "pairs": "p", "beta": 0.1, "lr": 3e-5, "max_grad_norm": 1.0,
              "start_logp_means": {"y_w": -5.8, "y_l": -8.8, "y_ref": -2.6},
              "gradients_at_start": {"grad_norm_dpo": 0.687, "grad_norm_optimism_per_alpha": 0.539,
                                     "cosine_dpo_optimism": -0.055}, "rows": [row]}
    (tmp_path / "mechanism.json").write_text(json.dumps(result))
    text = controls.render(tmp_path)
    assert "| 0.1 | 0.078 | 1.79 | +0.148 | -0.246 | -0.050 | +0.036 | -0.060 | 0.515 |" in text
    assert "clipped to norm 1 per step" in text


def test_unfinished_runs_are_listed_only_when_asked(tmp_path):
    _run(tmp_path, "e/c/alpha0.0", 1, [0.5, 0.6])
    (tmp_path / "runs" / "e" / "c" / "alpha0.0" / "seed2").mkdir()  # started, no summary.json
    with pytest.raises(FileNotFoundError, match="seed2/summary.json: the run has not finished"):
        ca.arm(["e/c/alpha0.0"], tmp_path)
    missing: list = []
    assert sorted(ca.arm(["e/c/alpha0.0", "e/none/alpha0.0"], tmp_path, missing)) == [1]
    assert missing == [str(tmp_path / "runs" / "e" / "c" / "alpha0.0" / "seed2"), str(tmp_path / "runs" / "e" / "none" / "alpha0.0")]


def _screen_run(root, cell, seed, iters):
    _run(root, cell, seed, iters)
    d = root / "runs" / cell / f"seed{seed}"
    (root / "prefs.jsonl").write_text(json.dumps({"prompt_id": "p0", "family": "reverse"}) + "\n")
    (d / "config.json").write_text(json.dumps({"data": {"train_prefs": "prefs.jsonl"}}))


def test_screening_row_is_explorer_minus_dpo_after_iteration_1_and_at_the_last(tmp_path):
    _screen_run(tmp_path, "s/dpo/alpha0.0", 42, [0.47, 0.50, 0.53, 0.55])
    _screen_run(tmp_path, "s/dpo/alpha0.0", 43, [0.47, 0.51, 0.52, 0.50])   # the explorer lacks seed 43: left out
    _screen_run(tmp_path, "s/bok/alpha0.0", 42, [0.47, 0.52, 0.56, 0.60])
    row = ca.screening_row({"name": "w", "dpo": ["s/dpo/alpha0.0"], "explorer": ["s/bok/alpha0.0"]}, tmp_path)
    assert row["seeds"] == [42]
    assert row["mean_diff_first"] == pytest.approx(0.52 - 0.50) and row["mean_diff_last"] == pytest.approx(0.60 - 0.55)
    assert row["per_seed"][0]["iteration"] == "iter3" and row["per_seed"][0]["dpo_r_star_last"] == 0.55
    assert row["pair_quality"] == {"dpo": {}, "explorer": {}}  # no online iteration recorded its pairs
    d = tmp_path / "runs" / "s" / "dpo" / "alpha0.0"
    for seed in (42, 43):  # an online iteration's pairs: chosen right (r* 1), y_ref and rejected wrong (r* 0)
        it = d / f"seed{seed}" / "iter1"
        it.mkdir()
        (it / "responses.jsonl").write_text("{}\n")
        pair = {"prompt_id": "p0", "prompt": "reverse: ab", "chosen": "ba", "rejected": "zz", "response": "zz"}
        (it / "pairs.jsonl").write_text(json.dumps(pair) + "\n")
    (tmp_path / "prefs.jsonl").write_text(json.dumps({"prompt_id": "p0", "family": "reverse", "prompt": "reverse: ab",
                                                       "gold": "ba"}) + "\n")
    q = ca.screening_row({"name": "w", "dpo": ["s/dpo/alpha0.0"], "explorer": ["s/bok/alpha0.0"]}, tmp_path)["pair_quality"]
    assert q["dpo"]["iterations"] == 1  # seed 43's iteration is left out: the explorer did not run seed 43
    assert q["dpo"]["mean_r_star_policy_gain"] == pytest.approx(0.50 - 0.47)
    with pytest.raises(DataError, match="no seed run by both arms"):
        ca.screening_row({"name": "w", "dpo": ["s/dpo/alpha0.0"], "explorer": ["s/none/alpha0.0"]}, tmp_path)
    with pytest.raises(KeyError, match="missing key 'explorer'"):
        ca.screening_row({"name": "w", "dpo": ["s/dpo/alpha0.0"]}, tmp_path)
    (tmp_path / "runs" / "s" / "bok" / "alpha0.0" / "seed43").mkdir()
    with pytest.raises(FileNotFoundError, match="seed43/summary.json: the run has not finished"):
        ca.screening_row({"name": "w", "dpo": ["s/dpo/alpha0.0"], "explorer": ["s/bok/alpha0.0"]}, tmp_path)


def test_analyze_one_section_without_the_other_sections_runs(tmp_path):
    (tmp_path / "paper").mkdir(parents=True)
    (tmp_path / "paper" / "table1_alpacaeval_mtbench.csv").write_text(
        "model,base,method,iteration,lc_win_rate\nA,zephyr,offline_dpo,0,15.41\nC,zephyr,dpo,3,22.19\nD,zephyr,selm,3,24.25\n")
    _screen_run(tmp_path, "s/dpo/alpha0.0", 42, [0.47, 0.50])
    _screen_run(tmp_path, "s/bok/alpha0.0", 42, [0.47, 0.53])
    spec = tmp_path / "spec.yaml"
    spec.write_text("controls:\n  positive:\n    - {name: p, dpo: [gone/dpo/alpha0.0], explorer: [gone/bok/alpha0.0]}\n"
                    "  screening:\n    - {name: w, dpo: [s/dpo/alpha0.0], explorer: [s/bok/alpha0.0]}\n")
    with pytest.raises(FileNotFoundError, match="gone/dpo/alpha0.0: no run folders"):
        ca.analyze(spec, tmp_path)
    out = ca.analyze(spec, tmp_path, sections=["screening"])
    assert list(out) == ["screening"] and out["screening"]["rows"][0]["mean_diff_last"] == pytest.approx(0.03)
    with pytest.raises(KeyError, match=r"controls has no \['power'\] for section\(s\) \['power'\]"):
        ca.analyze(spec, tmp_path, sections=["power"])
    with pytest.raises(KeyError, match=r"unknown section\(s\) \['nope'\]"):
        ca.analyze(spec, tmp_path, sections=["nope"])


def test_screening_table_and_the_positive_reading_of_a_working_control(tmp_path):
    q = {"mean_r_star_chosen": 0.62, "mean_r_star_y_ref": 0.53, "mean_r_star_policy_start": 0.52,
         "mean_r_star_policy_gain": -0.004}
    qe = {**q, "mean_r_star_chosen": 0.74, "mean_r_star_policy_gain": 0.012}
    row = {"name": "weak corpus", "seeds": [42], "mean_diff_first": 0.024, "mean_diff_last": 0.047, "what": "y_w is weak",
           "per_seed": [{"explorer_r_star_last": 0.511, "dpo_r_star_last": 0.464}], "pair_quality": {"dpo": q, "explorer": qe}}
    prov = {"spec": "experiments/toy_controls.yaml", "git_commit": "abc1234567890"}
    (tmp_path / "screening.json").write_text(json.dumps({"rows": [row], "rule": "one seed", "provenance": prov}))
    text = controls.render(tmp_path)
    assert "| weak corpus | 42 | +0.024 | +0.047 | 0.511 | 0.464 | 0.740 | 0.620 | +0.012 | -0.004 |" in text
    assert "- weak corpus: y_w is weak" in text
    t = {"n": 5, "mean_diff": 0.05, "ci_low": 0.04, "ci_high": 0.06, "verdict": "positive"}
    reading = controls.positive_reading({"name": "w", "tests": {"r_star": t}, "pair_quality": {"dpo": q, "explorer": qe}})
    assert "(+0.050 [+0.040, +0.060]) is CI-separated" in reading
    assert "chosen answers have r* 0.740 against DPO's 0.620" in reading and "+0.012 (explorer) and -0.004 (DPO)" in reading


def test_a_positive_entry_without_runs_is_listed_as_unfinished_when_asked(tmp_path):
    (tmp_path / "paper").mkdir(parents=True)
    (tmp_path / "paper" / "table1_alpacaeval_mtbench.csv").write_text(
        "model,base,method,iteration,lc_win_rate\nA,zephyr,offline_dpo,0,15.41\nC,zephyr,dpo,3,22.19\nD,zephyr,selm,3,24.25\n")
    for seed, (d, e) in {1: (0.50, 0.56), 2: (0.52, 0.57)}.items():
        _screen_run(tmp_path, "w/dpo/alpha0.0", seed, [0.47, d])
        _screen_run(tmp_path, "w/bok/alpha0.0", seed, [0.47, e])
    spec = tmp_path / "spec.yaml"
    spec.write_text("controls:\n  positive:\n    - {name: gone, dpo: [g/dpo/alpha0.0], explorer: [g/bok/alpha0.0]}\n"
                    "    - {name: w, dpo: [w/dpo/alpha0.0], explorer: [w/bok/alpha0.0]}\n")
    out = ca.analyze(spec, tmp_path, allow_unfinished=True)["positive_control"]
    assert out["unfinished_runs"] == [str(tmp_path / "runs" / "g" / c / "alpha0.0") for c in ("dpo", "bok")]
    gone, w = out["rows"]
    assert gone["tests"] == {} and gone["dpo_gain_over_start"] is None
    assert w["tests"]["r_star"]["mean_diff"] == pytest.approx(0.055)
    assert w["dpo_gain_over_start"] == pytest.approx(((0.50 - 0.47) + (0.52 - 0.47)) / 2)
    assert "- gone: fewer than two paired seeds; no reading." in controls.positive_markdown(out)


def test_a_ci_separated_gain_below_the_threshold_is_not_called_a_null():
    t = {"n": 5, "mean_diff": 0.041, "ci_low": 0.009, "ci_high": 0.073, "n_a_greater": 5, "verdict": "inconclusive",
         "reason": "|effect| below the minimum detectable effect 0.0427"}
    q = {"mean_r_star_chosen": 0.627, "mean_r_star_y_ref": 0.55, "mean_r_star_policy_start": 0.528,
         "mean_r_star_policy_gain": 0.004}
    row = {"name": "w", "tests": {"r_star": t}, "pair_quality": {"dpo": q, "explorer": {**q, "mean_r_star_chosen": 0.74,
                                                                                          "mean_r_star_policy_gain": 0.018}}}
    text = controls.positive_reading(row)
    assert "a CI-separated gain in r* (+0.041 [+0.009, +0.073], explorer better in 5/5 seeds)" in text
    assert "below the minimum detectable effect 0.0427" in text and "no CI-separated" not in text
    assert "r* 0.740 against DPO's 0.627" in text and "+0.018 (explorer) and +0.004 (DPO)" in text
