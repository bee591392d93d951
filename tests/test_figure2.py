"""Figure 2's pairwise heatmaps are judged and scored as Table 1 is: the evaluation's judge
(selm.evaluate.make_judge) through a cache in the analysis folder, so a rerun asks the judge
nothing, and the LC estimator of eval.alpaca_eval.glm_data (length_controlled_v1 on a df_gamed
table). Judged by a real OpenAI-compatible server on 127.0.0.1 that prefers longer answers, with a
little deterministic noise."""

import hashlib
import json
import math

import pandas as pd
import pytest
from judge_server import JudgeServer, logprob_reply
from omegaconf import OmegaConf
from test_alpaca_data import gamed_table

from selm.config import compose_config
from selm.benchmarks.alpaca import compute_metrics, load_outputs
from selm.evaluate import alpaca_eval, make_judge
from selm.io import read_jsonl
from selm.judges import get_judge
from selm.report import analyze

KEY_ENV = "SELM_TEST_JUDGE_KEY"
N = 10  # instructions (alpaca_eval's GLM cross-validates in 5 folds)
MODELS = [f"SELM iter{t}" for t in (1, 2, 3)] + [f"DPO iter{t}" for t in (1, 2, 3)] + ["SFT base"]


def prefers_longer(body):
    """P(first shown output wins) = sigmoid(length difference / 15 + noise from a hash of the request)."""
    user = body["messages"][1]["content"]
    first, second = [part.split('"""', 1)[0] for part in user.split('"output": """')[1:]]
    noise = int(hashlib.sha256(user.encode()).hexdigest()[:8], 16) / 2**32 * 2 - 1
    p = 1 / (1 + math.exp(-((len(first) - len(second)) / 15 + noise)))
    return logprob_reply({"m": math.log(p), "M": math.log(1 - p)})


def answer(model: int, i: int) -> str:
    """SELM iter2's answers vary in length; every other model's are one constant length (its own),
    so only pairs with SELM iter2 need alpaca_eval's GLM fit (the others' LC is their win rate)."""
    if MODELS[model] == "SELM iter2":
        return " ".join(["word"] * (2 + 5 * i % 9)) + f" (instruction {i})"
    return f"Answer to item {i:02d}" + " more" * model


def make_paper_like(tmp_path, monkeypatch):
    """One base `z` at the paper scale's config (conf/loop_paper.yaml), one seed, DPO and SELM
    iterations 1-3 and the SFT base with AlpacaEval outputs on disk; a df_gamed table as glm_data."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(KEY_ENV, "sk-test")
    instructions = [f"Instruction {i}: explain item {i}." for i in range(N)]
    reference = [{"instruction": q, "output": "reference", "generator": "gpt4_1106_preview", "dataset": "t"}
                 for q in instructions]
    (tmp_path / "alpaca_eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in reference))
    gamed_table(N).to_csv(tmp_path / "df_gamed.csv", index=False)

    def write(folder, k):
        folder.mkdir(parents=True, exist_ok=True)
        rows = [{"instruction": q, "output": answer(k, i), "generator": MODELS[k]} for i, q in enumerate(instructions)]
        (folder / "alpaca_outputs.json").write_text(json.dumps(rows))

    for alpha, first in (("0.0", 3), ("0.001", 0)):
        for t in (1, 2, 3):
            write(tmp_path / "evals" / "m" / f"z/alpha{alpha}" / "seed42" / f"iter{t}", first + t - 1)
    write(tmp_path / "evals" / "base" / "z", 6)

    def spec(base_url):
        cell = {"preset": "paper_zephyr", "alphas": [0.0, 0.001], "judge.base_url": base_url,
                "judge.api_key_env": KEY_ENV, "judge.concurrency": 2,
                "eval.alpaca_eval.data": str(tmp_path / "alpaca_eval.jsonl"),
                "eval.alpaca_eval.glm_data": str(tmp_path / "df_gamed.csv")}
        return OmegaConf.create({"config_name": "loop_paper", "params": False, "bases": ["z"], "seeds": [42],
                                 "experiments": {"m": {"alphas": [0.0], "cells": {"z": cell}}}})

    return spec, OmegaConf.create({"experiment": "m", "selm_alpha": 0.001}), tmp_path


@pytest.fixture
def paper_like(tmp_path, monkeypatch):
    return make_paper_like(tmp_path, monkeypatch)


@pytest.fixture(scope="module")
def judged(tmp_path_factory):
    """Figure 2 computed twice with one cache, and Table 1's code (selm.evaluate.alpaca_eval) for row
    'SELM iter2' with column 'DPO iter1''s outputs as the reference set, all against one judge server."""
    root = tmp_path_factory.mktemp("figure2")
    with pytest.MonkeyPatch.context() as monkeypatch, JudgeServer(default=prefers_longer) as server:
        spec, fig, _ = make_paper_like(root, monkeypatch)
        cache = root / "results" / "analysis" / analyze.FIGURE2_JUDGE_CACHE
        first = analyze.heatmaps(spec(server.base_url), fig, cache)
        asked = len(server.requests)
        again = analyze.heatmaps(spec(server.base_url), fig, cache)
        asked_again = len(server.requests) - asked
        # Table 1's code, on a config composed here: the reference set is DPO iter1's outputs
        cfg = compose_config("loop_paper", ["preset=paper_zephyr"])
        cfg.judge.base_url, cfg.judge.api_key_env = server.base_url, KEY_ENV
        reference = load_outputs(root / "evals/m/z/alpha0.0/seed42/iter1/alpaca_outputs.json")
        (root / "dpo1.jsonl").write_text("".join(json.dumps(dict(r, dataset="t")) + "\n" for r in reference))
        cfg.eval.alpaca_eval.data, cfg.eval.alpaca_eval.glm_data = str(root / "dpo1.jsonl"), str(root / "df_gamed.csv")
        table1_dir = root / "table1"
        table1_dir.mkdir()
        (table1_dir / "alpaca_outputs.json").write_text(
            (root / "evals/m/z/alpha0.001/seed42/iter2/alpaca_outputs.json").read_text())
        table1 = alpaca_eval(cfg, None, make_judge(cfg, table1_dir / "judge_cache.jsonl"), "SELM iter2", table1_dir)
    return {"first": first, "again": again, "asked": asked, "asked_again": asked_again, "cache": cache,
            "table1": table1, "table1_dir": table1_dir}


@pytest.mark.slow  # the shared fixture: two Figure 2 computations (24 GLM fits, 420 judge requests)
def test_a_rerun_of_figure2_asks_the_judge_nothing(judged):
    assert judged["asked_again"] == 0  # the rerun: zero judge calls
    assert judged["asked"] == 7 * 6 * N  # every ordered pair of different models, every instruction, once
    assert judged["again"] == judged["first"]
    assert len(read_jsonl(judged["cache"])) == judged["asked"]


@pytest.mark.slow  # the shared fixture: two Figure 2 computations (24 GLM fits, 420 judge requests)
def test_figure2_lc_is_table1s_estimator_on_the_same_annotations(judged):
    """Row 'SELM iter2' against column 'DPO iter1': the heatmap's LC equals what Table 1's code
    (selm.evaluate.alpaca_eval) computes for SELM iter2's outputs with DPO iter1's as the reference."""
    heat, table1, table1_dir = judged["first"]["z"], judged["table1"], judged["table1_dir"]
    row, col = "SELM iter2", "DPO iter1"
    assert "length_controlled_v1" in table1["lc_note"] and "df_gamed.csv" in heat["lc_glm"]
    value = heat["matrix"][heat["models"].index(row)][heat["models"].index(col)]
    assert value == round(table1["length_controlled_winrate"], 2)
    # what the heatmap computed before: a neutral GLM on the same annotations, a different number
    annotations = json.loads((table1_dir / "alpaca_annotations.json").read_text())
    neutral = compute_metrics(pd.DataFrame(annotations).set_index("index"))["length_controlled_winrate"]
    assert abs(round(neutral, 2) - value) > 0.05


def test_runs_evaluated_with_different_judges_do_not_share_a_heatmap(paper_like):
    spec, fig, root = paper_like
    mixed = spec("http://127.0.0.1:9/v1")
    mixed.experiments.m.cells.z2 = dict(mixed.experiments.m.cells.z, alphas=[0.001])
    mixed.experiments.m.cells.z.alphas = [0.0]
    mixed.experiments.m.cells.z2["judge.model"] = "another-judge"
    mixed.bases = ["z"]
    runs = analyze._runs_by_cell(mixed, "m")
    with pytest.raises(ValueError, match="m/z2/alpha0.001/seed42 and m/z/alpha0.0/seed42 were evaluated with different judge"):
        analyze.alpaca_settings([*runs["z/alpha0.0"], *runs["z2/alpha0.001"]])


def test_oracle_judge_cache_is_not_fsynced_and_an_api_judges_is(tmp_path, monkeypatch):
    """The toy oracle costs nothing to ask again: its cache skips the per-line fsync that keeps
    paid API judgments safe (Figure 2 asks it ~200k times at the toy scale)."""
    monkeypatch.setenv(KEY_ENV, "sk-test")
    oracle = get_judge("oracle", cache=str(tmp_path / "o.jsonl"))
    api = get_judge("openai", base_url="https://judge.invalid/v1", api_key_env=KEY_ENV, cache=str(tmp_path / "a.jsonl"))
    assert oracle.cache.durable is False and api.cache.durable is True
