"""AlpacaEval metrics: alpaca_eval's win rate and LC win rate checked against arithmetic written out
here, the offline GLM data, and the pairwise (heatmap) mode with a symmetric judge."""

import math
import random
import statistics

import numpy as np
import pandas as pd
import pytest

from selm.benchmarks import alpaca
from selm.benchmarks.lc_glm import GLMData, check_lookup
from selm.io import DataError
from selm.judges import get_judge
from selm.world import POLICIES, sample_records
from selm.world.evalsets import alpaca_eval_rows


def table(preferences, len_ref, len_model, generator="model"):
    n = len(preferences)
    return pd.DataFrame({
        "instruction": [f"instruction {i}" for i in range(n)],
        "output_1": ["r" * int(k) for k in len_ref],
        "output_2": ["m" * int(k) for k in len_model],
        "generator_1": "reference",
        "generator_2": generator,
        "annotator": "hand",
        "preference": [float(p) for p in preferences],
        "error": None,
    })


def test_win_rate_and_standard_error_match_hand_arithmetic():
    prefs = [2, 1, 1.5, 2, 1.25, 1.75, 2, 1, 1.9, 1.1]
    len_model = [10, 12, 9, 30, 11, 14, 20, 7, 15, 10]
    metrics = alpaca.compute_metrics(table(prefs, [10] * 10, len_model))
    # win rate: mean of (preference - 1) x 100, a tie (1.5) counting 0.5
    scores = [p - 1 for p in prefs]
    assert metrics["win_rate"] == pytest.approx(100 * sum(scores) / 10)
    assert metrics["standard_error"] == pytest.approx(100 * statistics.stdev(scores) / math.sqrt(10))
    assert (metrics["n_wins"], metrics["n_wins_base"], metrics["n_draws"], metrics["n_total"]) == (5, 4, 1, 10)
    # discrete: each preference rounded to a win (1) / loss (0), ties 0.5
    discrete = [1, 0, 0.5, 1, 0, 1, 1, 0, 1, 0]
    assert metrics["discrete_win_rate"] == pytest.approx(100 * sum(discrete) / 10)
    assert metrics["avg_length"] == int(sum(len_model) / 10)
    assert metrics["n_errors"] == 0


def _soft_logistic_lc(t):
    """LC computed independently: with difficulty 0 and no gamed prior, alpaca_eval's GLM is
    logit P(model wins) = a * tanh(delta_len / sd(delta_len)) + b, fit to the soft preferences; LC is
    the prediction at delta 0, sigmoid(b). Plain Newton on the (unpenalised) soft log loss."""
    d = (t["output_1"].str.len() - t["output_2"].str.len()).to_numpy(float)
    x = np.stack([np.tanh(d / d.std(ddof=1)), np.ones(len(d))], axis=1)
    y = t["preference"].to_numpy() - 1
    w = np.zeros(2)
    for _ in range(50):
        mu = 1 / (1 + np.exp(-x @ w))
        w += np.linalg.solve((x * (mu * (1 - mu))[:, None]).T @ x, x.T @ (y - mu))
    return 100 / (1 + math.exp(-w[1]))


def test_lc_win_rate_matches_an_independent_glm_fit():
    rng = np.random.default_rng(1)
    n = 60
    len_ref, len_model = rng.integers(20, 60, n), rng.integers(20, 60, n)
    z = (len_model - len_ref) / 10 + rng.normal(0, 1, n) + 0.5  # quality plus a length bias
    t = table(1 + 1 / (1 + np.exp(-z)), len_ref, len_model)
    metrics = alpaca.compute_metrics(t)
    assert metrics["length_controlled_winrate"] == pytest.approx(_soft_logistic_lc(t), abs=1.0)
    assert metrics["length_controlled_winrate"] < metrics["win_rate"]  # the length bias is removed
    assert "glm_preference" in t.columns


def test_lc_properties_equal_lengths_and_length_only_wins():
    rng = np.random.default_rng(2)
    prefs = rng.choice([1.0, 2.0], 40, p=[0.3, 0.7])
    equal = alpaca.compute_metrics(table(prefs, [20] * 40, [20] * 40))
    assert equal["length_controlled_winrate"] == equal["win_rate"]
    assert "no variation" in equal["lc_note"]
    # The model wins exactly when its answer is longer (70% of the time): LC goes to ~50.
    longer = rng.random(40) < 0.7
    len_model = np.where(longer, 30, 10) + rng.integers(0, 3, 40)
    only_longer = alpaca.compute_metrics(table(np.where(longer, 1.95, 1.05), [20] * 40, len_model))
    assert abs(only_longer["length_controlled_winrate"] - 50) < abs(only_longer["win_rate"] - 50) / 2


def test_lc_with_gamed_baselines_runs_offline_and_checks_row_order():
    rng = np.random.default_rng(3)
    n = 30
    runs = [table(rng.uniform(1, 2, n), rng.integers(5, 40, n), rng.integers(5, 40, n)) for _ in range(2)]
    gamed = {"verbose": table(rng.uniform(1.4, 2, n), [20] * n, rng.integers(30, 60, n)),
             "concise": table(rng.uniform(1, 1.6, n), [20] * n, rng.integers(2, 15, n))}
    data = GLMData.from_runs(n, runs, gamed)
    assert data.glm_name == "length_controlled_v1" and len(data.frame) == 2 * n
    metrics = alpaca.compute_metrics(runs[0], data)
    assert 0 < metrics["length_controlled_winrate"] < 100 and "length_controlled_v1" in metrics["lc_note"]
    with pytest.raises(ValueError, match="not in instruction order"):
        check_lookup(data.frame.iloc[::-1].reset_index(drop=True), range(n))


def test_malformed_rows_are_excluded_and_counted():
    t = table([2, 1, 2, 2, 1, 2, 1.5], [5, 6, 7, 8, 9, 10, 11], [9, 8, 7, 6, 5, 4, 3])
    t.loc[2, "preference"], t.loc[2, "error"] = np.nan, "unreadable"
    metrics = alpaca.compute_metrics(t)
    assert metrics["n_total"] == 6 and metrics["n_errors"] == 1 and metrics["errors"][0]["index"] == 2
    assert metrics["win_rate"] == pytest.approx(100 * (1 + 0 + 1 + 0 + 1 + 0.5) / 6)


@pytest.fixture(scope="module")
def world_outputs():
    records = sample_records(40, random.Random(0))
    reference = alpaca_eval_rows(records, random.Random(1))
    rng = random.Random(2)
    outputs = {name: [{"instruction": r["prompt"], "output": POLICIES[name](r, rng)} for r in records]
               for name in ("gold", "habit", "noise")}
    return reference, outputs


def test_oracle_evaluation_on_the_toy_world(world_outputs, tmp_path):
    reference, outputs = world_outputs
    judge = get_judge("oracle", alpaca_eval=reference)
    path = tmp_path / "model_outputs.json"
    alpaca.write_outputs(path, [dict(r, generator="gold") for r in outputs["gold"]])
    metrics, table_ = alpaca.evaluate(alpaca.load_outputs(path), reference, judge)
    assert metrics["win_rate"] > 55 and metrics["n_total"] == 40 and metrics["n_errors"] == 0
    alpaca.write_annotations(tmp_path / "annotations.json", table_)
    with pytest.raises(DataError, match="different instructions"):
        alpaca.annotate(outputs["gold"][1:] + outputs["gold"][:1], reference, judge)


def test_pairwise_a_vs_b_and_b_vs_a_sum_to_100(world_outputs):
    reference, outputs = world_outputs
    matrix = alpaca.pairwise_matrix(outputs, get_judge("oracle", alpaca_eval=reference))
    names = list(outputs)
    for a in names:
        assert matrix[a][a]["win_rate"] == 50 and matrix[a][a]["length_controlled_winrate"] == 50
        for b in names:
            assert matrix[a][b]["win_rate"] + matrix[b][a]["win_rate"] == pytest.approx(100, abs=1e-9)
            lc = matrix[a][b]["length_controlled_winrate"] + matrix[b][a]["length_controlled_winrate"]
            assert lc == pytest.approx(100, abs=1.0)
    assert matrix["habit"]["gold"]["win_rate"] > 50  # gold answers beat the habit against it


def test_pairwise_metrics_on_worker_processes_equal_the_serial_matrix(world_outputs):
    """Figure 2's split: the judge's tables here, their GLM fits on a spawned pool, equal to
    pairwise_matrix computed in one go (two matrices, as two seeds would be)."""
    from selm.report.analyze import parallel_map

    reference, outputs = world_outputs
    judge = get_judge("oracle", alpaca_eval=reference)
    reversed_ = {name: outputs[name] for name in reversed(list(outputs))}
    serial = [alpaca.pairwise_matrix(o, judge) for o in (outputs, reversed_)]
    units = [(alpaca.pairwise_tables(o, judge), None) for o in (outputs, reversed_)]
    assert parallel_map(alpaca.tables_metrics, units, workers=2) == serial
    assert serial[0]["gold"]["habit"] == serial[1]["gold"]["habit"]  # a pair's scores do not depend on the order


def test_lookup_check_names_the_instructions_out_of_place():
    data = GLMData.neutral(6)
    check_lookup(data.frame, range(6))  # in order: passes
    moved = data.frame.copy()
    moved["index"] = [0, 1, 3, 2, 4, 5]  # rows 2 and 3 hold each other's instruction
    with pytest.raises(ValueError, match=r"for indices \[2, 3\]"):
        check_lookup(moved, range(6))
    check_lookup(moved, [0, 1, 4])  # the annotations that are looked up are all in place
    with pytest.raises(ValueError, match=r"for indices \[7\]"):
        check_lookup(data.frame, [7])  # no row for instruction 7


def test_generate_outputs_answers_every_instruction(world_outputs, tiny_model):
    from selm.generation import get_backend

    reference, _ = world_outputs
    backend = get_backend("hf", tiny_model, batch_size=4, progress=False)
    rows = alpaca.generate_outputs(backend, reference[:3], generator="tiny", max_new_tokens=4, do_sample=False, seed=0)
    assert [r["instruction"] for r in rows] == [r["instruction"] for r in reference[:3]]
    assert all(r["generator"] == "tiny" and isinstance(r["output"], str) for r in rows)
