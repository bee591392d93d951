"""AlpacaEval 2.0 data export (selm.benchmarks.alpaca_data) from a 3-row local fixture, and the LC wiring."""

import inspect
import json

import pandas as pd
import pytest
from omegaconf import OmegaConf

from selm.config import compose_config
from selm.benchmarks.alpaca import compute_metrics
from selm.benchmarks.alpaca_data import CONFIG, GLM_FILE, REFERENCE_FILE, REPO, export, glm_data, main
from selm.io import DataError, read_jsonl

ROWS = [
    {"instruction": "Name a colour.", "output": "Blue.", "generator": "gpt4_1106_preview", "dataset": "helpful_base"},
    {"instruction": "Add 2 and 3.", "output": "2 + 3 = 5.", "generator": "gpt4_1106_preview", "dataset": "oasst"},
    {"instruction": "Say hi in French.", "output": "Bonjour !", "generator": "gpt4_1106_preview", "dataset": "koala"},
]


def gamed_table(n: int) -> pd.DataFrame:
    """df_gamed.csv's layout: per gamed baseline (verbose, concise), one row per instruction 0..n-1."""
    parts = []
    for name, sign in (("gpt4_1106_preview_verbose", 1.0), ("gpt4_1106_preview_concise", -1.0)):
        parts.append(pd.DataFrame({
            "index": range(n), "instruction_difficulty": [0.1 * (i % 3) - 0.1 for i in range(n)], "model": name,
            "preference": [0.5 + sign * (0.1 + 0.02 * i) for i in range(n)],
            "std_delta_len": [-sign * (0.5 + 0.1 * i) for i in range(n)], "not_gamed_baseline": False,
        }))
    return pd.concat(parts, ignore_index=True)


@pytest.fixture
def source(tmp_path):
    root = tmp_path / "alpaca_eval"
    root.mkdir()
    (root / REFERENCE_FILE).write_text(json.dumps(ROWS))   # a JSON list, as on the hub
    (root / "alpaca_eval.json").write_text(json.dumps(ROWS[:1]))  # AlpacaEval 1.0's file: must not be read
    gamed_table(3).to_csv(root / GLM_FILE, index=False)
    return root


def test_names_match_alpaca_eval():
    """The dataset, config and GLM file alpaca_eval 0.6.6 itself uses for AlpacaEval 2.0."""
    from alpaca_eval import constants
    from alpaca_eval.metrics import glm_winrate

    assert inspect.signature(constants.get_alpaca_eval_data).parameters["dataset"].default == CONFIG
    assert constants.ALPACAEVAL_REFERENCE_OUTPUTS_2 is constants.get_alpaca_eval_data
    assert f'"{REPO}"' in inspect.getsource(constants.get_alpaca_eval_data)
    source = inspect.getsource(glm_winrate._get_featurized_data)
    assert f'repo_id="{REPO}"' in source and f'filename="{GLM_FILE}"' in source


def test_export_writes_eval_rows_in_order_and_the_glm_table(source, tmp_path):
    out = tmp_path / "out"
    manifest = export(out, str(source), cache_dir=str(tmp_path / "cache"))
    rows = read_jsonl(out / "alpaca_eval.jsonl")
    assert rows == ROWS                                     # order kept: the GLM looks difficulty up by position
    assert manifest["files"]["alpaca_eval.jsonl"]["rows"] == 3
    assert manifest["generators"] == ["gpt4_1106_preview"] and manifest["revision"] is None
    assert pd.read_csv(out / GLM_FILE).equals(pd.read_csv(source / GLM_FILE))


def test_bad_row_and_mismatched_glm_table_are_named(source, tmp_path):
    bad = [dict(r) for r in ROWS]
    bad[1]["output"] = None
    (source / REFERENCE_FILE).write_text(json.dumps(bad))
    with pytest.raises(DataError, match=rf"{REFERENCE_FILE} row 1: key 'output' must be str"):
        export(tmp_path / "out", str(source), cache_dir=str(tmp_path / "cache1"))
    (source / REFERENCE_FILE).write_text(json.dumps(ROWS))
    gamed_table(2).to_csv(source / GLM_FILE, index=False)
    code = main(["--out", str(tmp_path / "out"), "--source", str(source), "--cache-dir", str(tmp_path / "cache2")])
    assert code == 1 and not (tmp_path / "out" / "alpaca_eval.jsonl").exists()


def test_glm_data_key_feeds_alpaca_evals_lc(tmp_path):
    """eval.alpaca_eval.glm_data = a df_gamed.csv: LC is length_controlled_v1 on that table;
    null or absent (toy) = neutral difficulties; a missing file is an error before any generation."""
    assert glm_data(OmegaConf.create({"data": "x", "glm_data": None})) is None
    with pytest.raises(FileNotFoundError, match="eval.alpaca_eval.glm_data=nowhere.csv"):
        glm_data(OmegaConf.create({"glm_data": "nowhere.csv"}))
    n = 8  # alpaca_eval's GLM cross-validates in 5 folds: it needs at least 5 annotations
    gamed_table(n).to_csv(tmp_path / GLM_FILE, index=False)
    data = glm_data(OmegaConf.create({"glm_data": str(tmp_path / GLM_FILE)}))
    assert data.glm_name == "length_controlled_v1"
    table = pd.DataFrame({
        "instruction": [f"q{i}" for i in range(n)], "output_1": ["reference answer"] * n,
        "output_2": ["x" * (5 + 7 * i) for i in range(n)], "generator_1": "gpt4_1106_preview",
        "generator_2": "model", "annotator": "test", "preference": [1.0, 2.0] * (n // 2), "error": None,
    })
    metrics = compute_metrics(table, data)
    assert "length_controlled_v1" in metrics["lc_note"] and f"file {tmp_path / GLM_FILE}" in metrics["lc_note"]
    assert 0 < metrics["length_controlled_winrate"] < 100


def test_paper_eval_config_points_at_the_exported_files():
    cfg = compose_config("loop_paper", ["preset=paper_zephyr"])
    e = cfg.eval
    assert e.alpaca_eval.data == "data/alpaca_eval/alpaca_eval.jsonl"
    assert e.alpaca_eval.glm_data == f"data/alpaca_eval/{GLM_FILE}"
    assert e.mt_bench.questions == "data/mt_bench/question.jsonl"
    assert e.mt_bench.references == "data/mt_bench/reference_answer/gpt-4.jsonl"
    assert e.mt_bench.judge_runs == 3 and e.lmeval.config == "paper"
    assert list(e.parts) == ["alpaca", "mt_bench", "lmeval"] and e.n_prompts == 2000  # the whole test split, answered each iteration
    assert cfg.judge.name == "openai" and cfg.scale.max_new_tokens == 1024
    toy = compose_config("loop").eval                      # the same keys as the toy evaluation, plus glm_data
    assert set(e) == set(toy) and set(e.alpaca_eval) == set(toy.alpaca_eval) | {"glm_data"}
