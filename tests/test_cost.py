"""The paper scale's cost in one place (selm.cost): a small grid priced by hand with round
assumptions, iteration 0 shared by the cells whose iteration-0 settings agree, and the docs quoting
the figure the function computes for experiments/paper.yaml."""

import re
from pathlib import Path

import yaml

from selm.cost import grid_cost

ROOT = Path(__file__).resolve().parents[1]
# Round numbers: on Zephyr's slice of 15,283 rows, training costs 1 node-hour per sequence per pair,
# y_ref's generation 1, PairRM 0.5, the fixed part 0.25.
ASSUMPTIONS = {
    "gpus_per_node": 8, "node_flops": 15283, "tokens_per_sequence": 1, "flops_per_token_parameter": 1,
    "parameters": {"zephyr-7b-sft": 3600}, "generated_tokens_per_row": 3600, "node_generated_tokens_per_s": 15283,
    "pairrm_node_hours_per_1k_rows": 500 / 15283, "fixed_node_hours_per_iteration": 0.25,
    "evaluation": {"alpaca_node_hours": 0.5, "mt_bench_node_hours": 0.25, "lmeval_gpu_hours": 1.0},
}


def write(tmp_path, experiments) -> tuple[Path, Path]:
    grid = {"config_name": "loop_paper", "params": False, "bases": ["zephyr-7b-sft"], "seeds": [42], "workers": 1,
            "experiments": experiments}
    (tmp_path / "grid.yaml").write_text(yaml.safe_dump(grid, sort_keys=False))  # experiments in this order
    (tmp_path / "cost.yaml").write_text(yaml.safe_dump(ASSUMPTIONS))
    return tmp_path / "grid.yaml", tmp_path / "cost.yaml"


def test_a_grid_priced_by_hand(tmp_path):
    main = {"eval": ["lmeval"], "alphas": [0.0, 0.001], "cells": {"z": {"preset": "paper_zephyr"}}}
    # the same iteration-0 learning rate (5e-7), other later ones: iteration 0 is shared
    lr = {"eval": ["mt_bench"], "alphas": [0.0],
          "cells": {"z": {"preset": "paper_zephyr", "train.learning_rates": [5.0e-7, 5.0e-7, 5.0e-7, 5.0e-7]}}}
    # another slice size: its own iteration 0; original pairs (stepwise): no generation, no ranking
    other = {"eval": [], "alphas": [0.001],
             "cells": {"z": {"preset": "paper_zephyr", "variant": "stepwise", "data.slice_size": 15283 * 2}}}
    cost = grid_cost(*write(tmp_path, {"main": main, "lr": lr, "other": other}))
    # main: iteration 0 (2 sequences, nothing generated) 2.25; DPO 3 x (2 + 0.25 + 1 + 0.5); SELM 3 x (3 + ...)
    assert cost.loops["main"] == (2.25 + 3 * 3.75 + 3 * 4.75) * 8
    assert cost.loops["lr"] == 3 * 3.75 * 8  # iteration 0 already trained
    # twice the rows: 2 sequences (original pairs, whatever alpha) x 2 + 0.25, for iteration 0 and 3 iterations
    assert cost.loops["other"] == 4 * 4.25 * 8
    # lm-eval (1 GPU-h) of 7 checkpoints (the shared iteration 0 once); MT-Bench (2 GPU-h) of the lr cell's
    # 4 (its iteration 0 has no MT-Bench yet); the base: 4 + 2 + 1
    assert cost.evaluations == {"main": 7.0, "lr": 8.0, "other": 0.0, "bases": 7.0}
    assert cost.total() == (2.25 + 11.25 + 14.25 + 11.25 + 17) * 8 + 22
    assert cost.rounded() == 5 * round(cost.total() / 5)


def test_the_docs_quote_the_computed_cost():
    figure = grid_cost().rounded()
    paper_scale = (ROOT / "docs" / "paper-scale.md").read_text()
    scales = (ROOT / "docs" / "scales.md").read_text()
    assert re.findall(r"about \*\*(\d+) GPU-hours\*\*", paper_scale) == [str(figure)]
    assert re.findall(r"~(\d+) GPU-hours", scales) == [str(figure)]
    for text in (paper_scale, scales):  # no other total left standing
        assert set(re.findall(r"(\d+) GPU-hours", text)) == {str(figure)}
