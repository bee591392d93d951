"""The report's analyses on hand-built run folders: paired tests and the regime map from known
numbers, implicit rewards from real (tiny) checkpoints with properties known without computing."""

import json
import shutil

import pytest
from omegaconf import OmegaConf

from selm.report import analyze


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: one thread is faster and steady

SPEC = {
    "bases": ["tiny-sft"], "seeds": [1, 2, 3],
    "experiments": {
        "main": {"alphas": [0.0, 0.5], "cells": {"tiny-sft": {"model": "tiny-sft"}}},
        "regimes": {"alphas": [0.0, 0.5], "cells": {"weak": {"model": "tiny-sft"}}},
    },
}
# final-iteration r* per (cell, seed): SELM - DPO is +0.1, +0.2, +0.3 in "main" and exactly -0.05 in "weak"
R_STAR = {("main", "tiny-sft/alpha0.0"): [0.50, 0.50, 0.50], ("main", "tiny-sft/alpha0.5"): [0.60, 0.70, 0.80],
          ("regimes", "weak/alpha0.0"): [0.40, 0.45, 0.50], ("regimes", "weak/alpha0.5"): [0.35, 0.40, 0.45]}


def _make_run(root, experiment, cell, seed, reward, model=None, config=None):
    run = root / "runs" / experiment / cell / f"seed{seed}"
    for t in (1, 2):
        it = run / f"iter{t}"
        (it / "model").mkdir(parents=True)
        if model is not None:
            shutil.copytree(model, it / "model", dirs_exist_ok=True)
        else:
            (it / "model" / "config.json").write_text("{}")
        r = reward if t == 2 else reward - 0.1
        cov = {"frac_prompts_covered": r, "mean_best_of_k": r, "mean_distinct": 2.0}
        (it / "eval.json").write_text(json.dumps({"mean_reward": r, "frac_correct": r / 2, "coverage": cov}))
    (run / "summary.json").write_text(json.dumps({"iter1": {"mean_reward": reward - 0.1}, "iter2": {"mean_reward": reward}}))
    (run / "config.json").write_text(json.dumps(config or {"train": {"beta": 0.1}}))
    return run


@pytest.fixture
def fake_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for (experiment, cell), rewards in R_STAR.items():
        for seed, reward in zip(SPEC["seeds"], rewards):
            _make_run(tmp_path, experiment, cell, seed, reward)
    return OmegaConf.create(SPEC)


def test_paired_tests_by_hand(fake_runs):
    out = analyze.paired_main(fake_runs, "main")["tiny-sft/alpha0.5"]
    final = out["iterations"][-1]["mean_reward"]
    assert final["mean_diff"] == pytest.approx(0.2)  # mean of (0.1, 0.2, 0.3)
    assert final["n_a_greater"] == 3 and final["n"] == 3
    assert final["ci95"] == pytest.approx(4.302653 * 0.1 / 3**0.5, abs=1e-4)  # t(0.975, 2) * sd / sqrt(3)
    assert "alpaca_lc_win_rate" not in out["iterations"][-1]  # no judge evaluation on disk: nothing made up


def test_regime_map_verdicts(fake_runs):
    fig = OmegaConf.create({"baseline": {"dpo": "main/tiny-sft/alpha0.0", "selm": ["main/tiny-sft/alpha0.5"]},
                            "regimes": ["weak"], "experiment": "regimes"})
    out = analyze.regime_map(fake_runs, fig)
    # +0.2 with sd 0.1 over 3 seeds: half-width 4.302653 * 0.1 / sqrt(3) = 0.2484, CI [-0.048, 0.448] holds 0
    standard = out["standard"]["selm"]["0.5"]
    assert standard["diff"]["ci_low"] == pytest.approx(0.2 - 0.2484, abs=1e-3)
    assert standard["verdict"] == "inconclusive"
    weak = out["weak"]["selm"]["0.5"]
    # exactly -0.05 in every seed: zero spread, so no t-test (no p-value, no interval) and no verdict
    assert weak["diff"]["mean_diff"] == pytest.approx(-0.05) and weak["verdict"] == "inconclusive"
    assert weak["diff"]["p_value"] is None and weak["diff"]["ci_low"] is None
    assert out["weak"]["dpo_final_r_star"]["mean"] == pytest.approx(0.45)


def test_implicit_reward_differences_of_identical_models_are_zero_and_antisymmetric(tmp_path, monkeypatch, tiny_model):
    from selm.tiny import build_tiny_model

    monkeypatch.chdir(tmp_path)
    other = build_tiny_model(tmp_path / "other", size="113k", seed=1)
    config = {"train": {"beta": 0.1, "max_length": 64, "max_prompt_length": 32, "precision": "fp32"},
              "scale": {"max_new_tokens": 6}}
    spec = OmegaConf.create({"bases": ["tiny-sft"], "seeds": [1], "experiments": {
        "main": {"alphas": [0.0, 0.5], "cells": {"tiny-sft": {"model": "tiny-sft"}}}}})
    test = [{"prompt": f"reverse: ab{c}", "chosen": [{"role": "assistant", "content": f"{c}ba"}],
             "rejected": [{"role": "assistant", "content": f"ab{c}"}]} for c in "cdefgh"]
    fig4 = OmegaConf.create({"experiment": "main", "selm_alpha": 0.5, "iteration": 1})
    fig5 = OmegaConf.create({"experiment": "main", "selm_alpha": 0.5, "iteration": 2, "samples": 3})

    def run_with(dpo_model, selm_model):
        shutil.rmtree(tmp_path / "runs", ignore_errors=True)
        _make_run(tmp_path, "main", "tiny-sft/alpha0.0", 1, 0.5, dpo_model, config)
        _make_run(tmp_path, "main", "tiny-sft/alpha0.5", 1, 0.5, selm_model, config)
        return analyze.implicit_rewards(spec, fig4, fig5, test)

    same4, same5 = run_with(tiny_model, tiny_model)
    assert set(same4["tiny-sft"]["chosen_sorted"]) == {0.0} and set(same4["tiny-sft"]["rejected_sorted"]) == {0.0}
    # iteration 2 equals iteration 1 in these folders: every own-sample implicit reward is exactly 0
    assert set(same5["tiny-sft"]["sorted"]) == {0.0}
    ab, _ = run_with(tiny_model, other)
    ba, _ = run_with(other, tiny_model)
    assert ab["tiny-sft"]["mean_chosen"] == pytest.approx(-ba["tiny-sft"]["mean_chosen"], abs=1e-5)
    assert ab["tiny-sft"]["chosen_sorted"] != same4["tiny-sft"]["chosen_sorted"]


def test_paper_like_runs_one_seed_and_no_true_reward(tmp_path, monkeypatch):
    """The paper scale: one seed, no r* (eval.json holds only n and mean_length), per-base SELM alphas."""
    monkeypatch.chdir(tmp_path)
    spec = OmegaConf.create({"bases": ["z"], "seeds": [42], "experiments": {
        "m": {"alphas": [0.0], "cells": {"z": {"preset": "paper_zephyr", "alphas": [0.0, 0.001]}}}}})
    test = {"p": {"prompt": "add: 1+2", "family": "add", "gold": "3",
                  "chosen": [{"role": "assistant", "content": "3"}]}}
    for alpha, answer in (("0.0", "no idea"), ("0.001", "3")):  # r* 0 and 1
        run = tmp_path / "runs" / "m" / f"z/alpha{alpha}" / "seed42"
        for t in (1, 2):
            (run / f"iter{t}" / "model").mkdir(parents=True)
            (run / f"iter{t}" / "model" / "config.json").write_text("{}")
            (run / f"iter{t}" / "model" / "train_metrics.json").write_text(json.dumps({"n_pairs": 100}))
            (run / f"iter{t}" / "eval.json").write_text(json.dumps({"n": 1, "mean_length": 1.0}))
            (run / f"iter{t}" / "eval_answers.jsonl").write_text(json.dumps({"prompt_id": "p", "answer": answer}) + "\n")
            ev = tmp_path / "evals" / "m" / f"z/alpha{alpha}" / "seed42" / f"iter{t}"
            ev.mkdir(parents=True)
            ev.joinpath("metrics.json").write_text(json.dumps({"alpaca_lc_win_rate": 10.0 * t, "mt_bench_average": 5.0}))
        (run / "config.json").write_text(json.dumps({"ranker": {"name": "oracle", "noise": 0.0, "salt": "r"}}))
    assert analyze.selm_alpha(OmegaConf.create({"selm_alpha": {"z": 0.001}}), "z") == 0.001
    assert analyze.paired_main(spec, "m")["z/alpha0.001"]["note"] == "fewer than 2 seeds: no test"
    fig6 = analyze.ablations(spec, OmegaConf.create({"iterative": "m/z/alpha0.0", "variants": []}))
    points = fig6["iterative (rank y_w, y_l, y_ref)"]["points"]
    assert [p["pairs_k"] for p in points] == [0.1, 0.2] and all("r_star" not in p for p in points)
    fig3 = analyze.alpha_ablation(spec, OmegaConf.create(
        {"cells": ["m/z/alpha0.0", "m/z/alpha0.001"], "shift_cell": "m/z/alpha0.001", "bins": [-0.5, 0.5, 1.5]}), test)
    assert fig3["curves"]["0.001"]["lc"][2]["mean"] == 20.0 and fig3["curves"]["0.001"]["r_star"] == {}
    # the ranker scores each greedy answer beside the test chosen answer: noiseless oracle, "3" is right
    assert fig3["hist_by_alpha_iter2"] == {"0.0": [1.0, 0.0], "0.001": [0.0, 1.0]}
    assert fig3["beyond_bins"] == 0.0 and "the true reward r* plus the oracle ranker's" in fig3["reward"]
    # the alpha selection: the final iteration (2) of alpha 0.001 answers right (1.0), alpha 0 wrong (0.0);
    # one seed, no interval; no r* on disk, so no true-reward selection to compare with
    sel = fig3["selection"]
    assert sel["selected"] == 0.001 and sel["runner_up"] is None and "best_r_star" not in sel
    assert sel["alphas"]["0.0"]["external_reward"] == {"mean": 0.0, "ci95": None, "n": 1}


def test_implicit_rewards_load_the_training_precision_and_hold_one_micro_batch_chunk_of_logits(
        tmp_path, monkeypatch, tiny_model):
    """Figures 4/5 at a bf16 run: the checkpoints are loaded in bf16, and no log-prob pass ever holds
    more vocabulary logits than analysis.batch_size pairs x 3 completions x analysis.seq_chunk positions."""
    import torch
    from alloc_tracker import AllocationTracker
    from transformers import AutoConfig

    monkeypatch.chdir(tmp_path)
    vocab = AutoConfig.from_pretrained(tiny_model).vocab_size
    config = {"train": {"beta": 0.1, "max_length": 64, "max_prompt_length": 32, "precision": "bf16"},
              "scale": {"max_new_tokens": 6}}
    spec = OmegaConf.create({"bases": ["tiny-sft"], "seeds": [1], "analysis": {"batch_size": 2, "seq_chunk": 3},
                             "experiments": {"main": {"alphas": [0.0, 0.5], "cells": {"tiny-sft": {"model": "tiny-sft"}}}}})
    test = [{"prompt": f"reverse: abcd{c}", "chosen": [{"role": "assistant", "content": f"{c}dcba"}],
             "rejected": [{"role": "assistant", "content": f"abcd{c}"}]} for c in "efghijk"]  # 7: not a multiple of 2
    for cell in ("tiny-sft/alpha0.0", "tiny-sft/alpha0.5"):
        _make_run(tmp_path, "main", cell, 1, 0.5, tiny_model, config)
    seen = {"largest": 0, "dtypes": set(), "calls": 0}
    logps = analyze._logps

    def tracked(*args, **kwargs):
        with AllocationTracker(vocab) as tracker:
            out = logps(*args, **kwargs)
        seen["largest"] = max(seen["largest"], tracker.largest_vocab_numel)
        seen["dtypes"] |= tracker.vocab_dtypes
        seen["calls"] += 1
        return out

    monkeypatch.setattr(analyze, "_logps", tracked)
    fig4, fig5 = analyze.implicit_rewards(
        spec, OmegaConf.create({"experiment": "main", "selm_alpha": 0.5, "iteration": 1}),
        OmegaConf.create({"experiment": "main", "selm_alpha": 0.5, "iteration": 2, "samples": 3}), test)
    assert seen["calls"] == 6  # Figure 4: 2 models; Figure 5: 2 runs x (now, before)
    assert 0 < seen["largest"] <= 2 * 3 * 3 * vocab
    assert torch.bfloat16 in seen["dtypes"]  # the head ran in bf16, only a chunk's log-softmax in fp32
    assert set(fig4["tiny-sft"]["chosen_sorted"]) == {0.0} and set(fig5["tiny-sft"]["sorted"]) == {0.0}
    assert fig4["tiny-sft"]["precision"] == "bf16" and len(fig4["tiny-sft"]["chosen_sorted"]) == 7


def test_analysis_section_is_checked():
    assert analyze.analysis_options(OmegaConf.create({})) == analyze.ANALYSIS_DEFAULTS
    assert analyze.analysis_options(OmegaConf.create({"analysis": {"batch_size": 1}}))["batch_size"] == 1
    with pytest.raises(ValueError, match="analysis.seq_chunk must be a positive integer, got 0"):
        analyze.analysis_options(OmegaConf.create({"analysis": {"seq_chunk": 0}}))
    with pytest.raises(KeyError, match="analysis.batchsize is not a known key"):
        analyze.analysis_options(OmegaConf.create({"analysis": {"batchsize": 4}}))


# --- Figure 3: the paper's alpha selection rule --------------------------------------------------------

SEL_TEST = {p: {"prompt": f"add: {a}+{b}", "family": "add", "gold": str(a + b),
                "chosen": [{"role": "assistant", "content": str(a + b)}]} for p, a, b in (("p1", 1, 2), ("p2", 2, 2))}
RIGHT, WRONG = {"p1": "3", "p2": "4"}, "no idea"  # the noiseless oracle scores these 1 and 0
# final-iteration (iter3) answers per alpha and seed: True = right, for p1 and p2; and the r* the run's
# eval.json records, chosen to disagree with the answers' external reward
SEL_ANSWERS = {"0.0": [(True, False), (True, False)], "0.005": [(True, True), (True, False)],
               "0.1": [(False, False), (True, False)], "1.0": [(True, False), (True, False)]}
SEL_R_STAR = {"0.0": [0.50, 0.50], "0.005": [0.40, 0.42], "0.1": [0.60, 0.62], "1.0": [0.30, 0.30]}


def _selection_runs(root, with_r_star=True, last_iteration=None):
    cells = {}
    for alpha, per_seed in SEL_ANSWERS.items():
        experiment = "main" if alpha in ("0.0", "0.1") else "alpha"
        cells.setdefault(experiment, []).append(float(alpha))
        for seed, (ok1, ok2), r_star in zip((1, 2), per_seed, SEL_R_STAR[alpha]):
            run = root / "runs" / experiment / f"tiny-sft/alpha{alpha}" / f"seed{seed}"
            for t in range(1, (last_iteration or {}).get((alpha, seed), 3) + 1):
                it = run / f"iter{t}"
                (it / "model").mkdir(parents=True)
                (it / "model" / "config.json").write_text("{}")
                answers = {"p1": RIGHT["p1"] if ok1 else WRONG, "p2": RIGHT["p2"] if ok2 else WRONG}
                if t < 3:  # earlier iterations: all wrong, so only the final one can decide
                    answers = {p: WRONG for p in answers}
                (it / "eval_answers.jsonl").write_text("".join(json.dumps({"prompt_id": p, "answer": a}) + "\n"
                                                               for p, a in answers.items()))
                (it / "eval.json").write_text(json.dumps({"mean_reward": r_star} if with_r_star else {"n": 2}))
            (run / "config.json").write_text(json.dumps({"ranker": {"name": "oracle", "noise": 0.0, "salt": "r"}}))
    spec = OmegaConf.create({"bases": ["tiny-sft"], "seeds": [1, 2], "experiments": {
        e: {"alphas": alphas, "cells": {"tiny-sft": {"model": "tiny-sft"}}} for e, alphas in cells.items()}})
    fig = OmegaConf.create({"cells": [f"{'main' if a in ('0.0', '0.1') else 'alpha'}/tiny-sft/alpha{a}"
                                      for a in SEL_ANSWERS], "shift_cell": "main/tiny-sft/alpha0.1"})
    return spec, fig


def test_alpha_selection_by_external_reward_against_the_true_reward(tmp_path, monkeypatch):
    from selm.rankers import get_ranker

    monkeypatch.chdir(tmp_path)
    spec, fig = _selection_runs(tmp_path)
    ranker = get_ranker(OmegaConf.create({"name": "oracle", "noise": 0.0, "salt": "r"}))
    sel = analyze.alpha_selection(spec, fig, SEL_TEST, ranker)
    ext = {a: e["external_reward"] for a, e in sel["alphas"].items()}
    # per-seed means of the two prompts: alpha 0.005: 1.0 and 0.5 -> 0.75, sd 0.353553, ci95 =
    # t(0.975, 1) 12.706205 * 0.353553 / sqrt 2 = 3.176551; alpha 0.1: 0 and 0.5 -> 0.25; alphas 0 and 1: 0.5 twice
    assert ext["0.005"] == {"mean": 0.75, "ci95": pytest.approx(3.17655, abs=1e-5), "n": 2}
    assert ext["0.1"]["mean"] == 0.25 and ext["1.0"] == {"mean": 0.5, "ci95": 0.0, "n": 2} and ext["0.0"]["mean"] == 0.5
    assert {a: e["iteration"] for a, e in sel["alphas"].items()} == {a: 3 for a in SEL_ANSWERS}
    # argmax over the searched alphas (> 0): 0.005; second 1.0 (0.5 > 0.25)
    assert (sel["selected"], sel["runner_up"], sel["searched"]) == (0.005, 1.0, [0.005, 0.1, 1.0])
    # r*: alpha 0.1's 0.60, 0.62 is the best (mean 0.61, ci95 12.706205 * 0.0141421 / sqrt 2 = 0.127062):
    # selection by the external reward disagrees with selection by r*
    assert sel["alphas"]["0.1"]["r_star"] == {"mean": 0.61, "ci95": pytest.approx(0.12706, abs=1e-5), "n": 2}
    assert sel["best_r_star"] == 0.1 and sel["agree"] is False
    # no r* (the paper scale): the selection alone
    (tmp_path / "paper").mkdir()
    monkeypatch.chdir(tmp_path / "paper")
    spec, fig = _selection_runs(tmp_path / "paper", with_r_star=False)
    sel = analyze.alpha_selection(spec, fig, SEL_TEST, ranker)
    assert sel["selected"] == 0.005 and "best_r_star" not in sel and "r_star" not in sel["alphas"]["0.005"]


def test_alpha_selection_needs_one_final_iteration_per_cell_and_an_alpha_above_zero(tmp_path, monkeypatch):
    from selm.rankers import get_ranker

    monkeypatch.chdir(tmp_path)
    ranker = get_ranker(OmegaConf.create({"name": "oracle", "noise": 0.0, "salt": "r"}))
    spec, fig = _selection_runs(tmp_path, last_iteration={("0.1", 2): 2})  # seed 2 of alpha 0.1 stopped at iter2
    with pytest.raises(ValueError, match=r"main/tiny-sft/alpha0.1: the seeds' last trained iterations differ"):
        analyze.alpha_selection(spec, fig, SEL_TEST, ranker)
    only_dpo = OmegaConf.create({"cells": ["main/tiny-sft/alpha0.0"]})
    with pytest.raises(ValueError, match="no cell with alpha > 0"):
        analyze.alpha_selection(spec, only_dpo, SEL_TEST, ranker)


def test_implicit_rewards_on_two_worker_processes_equal_the_serial_path(tmp_path, monkeypatch, tiny_model):
    """Figures 4-5 with their (base, seed) units on a spawned pool give exactly the serial numbers."""
    from selm.tiny import build_tiny_model

    monkeypatch.chdir(tmp_path)
    other = build_tiny_model(tmp_path / "other", size="113k", seed=1)
    config = {"train": {"beta": 0.1, "max_length": 64, "max_prompt_length": 32, "precision": "fp32"},
              "scale": {"max_new_tokens": 6}}
    spec = OmegaConf.create({"bases": ["tiny-sft"], "seeds": [1, 2], "experiments": {
        "main": {"alphas": [0.0, 0.5], "cells": {"tiny-sft": {"model": "tiny-sft"}}}}})
    test = [{"prompt": f"reverse: ab{c}", "chosen": [{"role": "assistant", "content": f"{c}ba"}],
             "rejected": [{"role": "assistant", "content": f"ab{c}"}]} for c in "cdef"]
    fig4 = OmegaConf.create({"experiment": "main", "selm_alpha": 0.5, "iteration": 1})
    fig5 = OmegaConf.create({"experiment": "main", "selm_alpha": 0.5, "iteration": 2, "samples": 3})
    for seed, (dpo, selm) in zip((1, 2), ((tiny_model, other), (other, tiny_model))):
        _make_run(tmp_path, "main", "tiny-sft/alpha0.0", seed, 0.5, dpo, config)
        _make_run(tmp_path, "main", "tiny-sft/alpha0.5", seed, 0.5, selm, config)
    monkeypatch.setattr(analyze, "IMPLICIT_THREADS", 1)  # the workers' threads: this test's one
    serial = analyze.implicit_rewards(spec, fig4, fig5, test, workers=1)
    pooled = analyze.implicit_rewards(spec, fig4, fig5, test, workers=2)
    assert pooled == serial
    # the two seeds swap the models: Figure 4's per-prompt difference averages to exactly 0 (up to rounding)
    assert max(abs(x) for x in serial[0]["tiny-sft"]["chosen_sorted"]) <= 1e-5
    assert serial[0]["tiny-sft"]["seeds"] == [1, 2]


def test_parallel_map_keeps_the_order_of_the_units():
    units = [(i, 10 - i) for i in range(7)]
    assert analyze.parallel_map(divmod, units, workers=2) == [divmod(a, b) for a, b in units]
    assert analyze.parallel_map(divmod, units, workers=1) == [divmod(a, b) for a, b in units]
