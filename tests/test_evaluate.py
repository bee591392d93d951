"""Per-checkpoint evaluation (AlpacaEval + MT-Bench with the toy judge) and the result tables."""

import json
import math

import pytest

from selm.config import compose_config
from selm.evaluate import evaluate_checkpoint
from selm.report.eval_tables import collect, table1_markdown
from selm.report.stats import mean_ci


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from selm.world.build import build_world

    out = tmp_path_factory.mktemp("world")
    build_world(out, seed=0, n_sft=10, n_train_prefs=10, n_test_prefs=4, n_eval=12, n_mt_bench=4, n_lmeval=4)
    return out


def test_evaluate_checkpoint_end_to_end_and_skips_when_done(tiny_model, world, tmp_path):
    cfg = compose_config("loop", [
        f"eval.alpaca_eval.data={world}/alpaca_eval.jsonl", f"eval.mt_bench.questions={world}/mt_bench.jsonl",
        f"eval.lmeval.world={world}",
        "scale.max_new_tokens=6", "logger=none",
    ])
    metrics = evaluate_checkpoint(cfg, tiny_model, tmp_path / "ev", "tiny/base")
    assert 0 <= metrics["alpaca_win_rate"] <= 100 and 0 <= metrics["alpaca_lc_win_rate"] <= 100
    assert 1 <= metrics["mt_bench_average"] <= 10 and metrics["mt_bench_runs"] == 3
    assert metrics["decoding"]["do_sample"] is False
    assert set(metrics) >= {"lmeval_selm_toy_mc", "lmeval_selm_toy_gen", "lmeval_mean"}
    record = json.loads((tmp_path / "ev" / "lmeval.json").read_text())
    assert record["harness"]["version"] == "0.4.13"
    outputs = json.loads((tmp_path / "ev" / "alpaca_outputs.json").read_text())
    assert len(outputs) == 12 and all(o["generator"] == "tiny/base" for o in outputs)
    judgments = (tmp_path / "ev" / "mt_bench_judgments.jsonl").read_text().splitlines()
    assert len(judgments) == 4 * 2 * 3  # questions x turns x judge runs
    # a finished evaluation is read back, not recomputed
    (tmp_path / "ev" / "alpaca_outputs.json").unlink()
    assert evaluate_checkpoint(cfg, tiny_model, tmp_path / "ev", "tiny/base") == metrics


def test_mean_ci_by_hand():
    mean, half = mean_ci([1.0, 2.0, 3.0])
    assert mean == 2.0
    assert half == pytest.approx(4.302653 * 1.0 / math.sqrt(3), rel=1e-6)  # t(0.975, df=2) = 4.302653 (tables)
    assert mean_ci([5.0]) == (5.0, None)  # one seed has no interval (not "± 0.00")


def test_table1_groups_seeds(tmp_path):
    def put(rel, lc, mt):
        path = tmp_path / rel / "metrics.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({"alpaca_lc_win_rate": lc, "alpaca_win_rate": lc, "alpaca_avg_length": 5,
                                    "mt_bench_average": mt, "mt_bench_turn_1": mt, "mt_bench_turn_2": mt,
                                    "judge": "j", "model": rel}))

    put("base/b", 30.0, 4.0)
    put("main/b/alpha0.0/seed1/iter1", 40.0, 5.0)
    put("main/b/alpha0.0/seed2/iter1", 42.0, 5.0)
    rows = collect(tmp_path)
    assert [(r["method"], r["iteration"], r["seed"]) for r in rows] == [
        ("SFT base", "base", None), ("iterative DPO", "iter1", 1), ("iterative DPO", "iter1", 2)]
    text = table1_markdown(rows)
    lines = text.splitlines()[2:]
    assert lines[0].startswith("| b | SFT base | base | 30.00 |")
    half = 12.706 * math.sqrt(2.0) / math.sqrt(2)  # sd of (40, 42) is sqrt(2); t(0.975, df=1)
    assert f"41.00 ± {half:.2f}" in lines[1] and lines[1].endswith("| 2 |")


def test_changed_settings_reevaluate_but_keep_the_judge_cache(tiny_model, world, tmp_path):
    base = [f"eval.alpaca_eval.data={world}/alpaca_eval.jsonl", f"eval.mt_bench.questions={world}/mt_bench.jsonl",
            f"eval.lmeval.world={world}", "scale.max_new_tokens=6", "eval.lmeval.config=null"]
    first = evaluate_checkpoint(compose_config("loop", base), tiny_model, tmp_path / "ev", "m")
    cache = (tmp_path / "ev" / "judge_cache.jsonl").read_text()
    assert "lmeval_mean" not in first
    second = evaluate_checkpoint(compose_config("loop", base + ["eval.lmeval.config=toy"]), tiny_model,
                                 tmp_path / "ev", "m")
    assert "lmeval_mean" in second  # not the stale metrics.json of the other settings
    assert second["alpaca_win_rate"] == first["alpaca_win_rate"]
    assert (tmp_path / "ev" / "judge_cache.jsonl").read_text() == cache  # nothing judged twice


class LmEvalStarted(Exception):
    """Raised by the stand-in lm-eval run: the test only needs to know what happened before it."""


def test_generation_backend_is_closed_before_lm_eval_loads_its_model(tiny_model, world, tmp_path, monkeypatch):
    import selm.benchmarks.lmeval
    import selm.generation

    events, backends = [], []
    make_backend = selm.generation.backend_from_config

    def recording_backend(cfg, model_dir):
        backend = make_backend(cfg, model_dir)
        close = backend.close
        backend.close = lambda: (events.append("close"), close())[1]
        backends.append(backend)
        return backend

    def lm_eval(*args, **kwargs):
        events.append(("lm-eval", backends[0].model is None))
        raise LmEvalStarted

    monkeypatch.setattr(selm.generation, "backend_from_config", recording_backend)
    monkeypatch.setattr(selm.benchmarks.lmeval, "run_suite", lm_eval)
    cfg = compose_config("loop", [f"eval.alpaca_eval.data={world}/alpaca_eval.jsonl", f"eval.lmeval.world={world}",
                                  f"eval.mt_bench.questions={world}/mt_bench.jsonl", "scale.max_new_tokens=4",
                                  "logger=none", "eval.parts=[mt_bench,lmeval]"])
    with pytest.raises(LmEvalStarted):
        evaluate_checkpoint(cfg, tiny_model, tmp_path / "ev", "m")
    assert events == ["close", ("lm-eval", True)]  # closed once, model released, then lm-eval


def test_tables_filter_bases_and_mark_missing_tasks(tmp_path):
    from selm.report.eval_tables import table2_markdown

    for base, task in (("toy", "lmeval_selm_toy_mc"), ("smollm2", "lmeval_selm_toy_mc_chatml")):
        path = tmp_path / "base" / base / "metrics.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({task: 40.0, "lmeval_mean": 40.0}))
    assert [r["base"] for r in collect(tmp_path, ["toy"])] == ["toy"]
    text = table2_markdown(collect(tmp_path))
    # columns: selm_toy_mc | selm_toy_mc_chatml | mean
    assert "| smollm2 | SFT base | base | n/a | 40.0 | 40.0 |" in text
    assert "| toy | SFT base | base | 40.0 | n/a | 40.0 |" in text
