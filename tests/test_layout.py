"""selm.layout: every path and name written out by hand (the folder names of the runs on disk must not
change), the parsers read them back, and "finished" means the checkpoint's config.json exists."""

import re
from pathlib import Path

import pytest

from selm import layout
from selm.experiments import expand
from omegaconf import OmegaConf


@pytest.mark.parametrize("alpha, name", [(0, "alpha0.0"), (0.0, "alpha0.0"), (0.1, "alpha0.1"), (1, "alpha1.0"),
                                         (1.0, "alpha1.0"), (0.01, "alpha0.01"), (0.3, "alpha0.3"),
                                         (0.001, "alpha0.001"), (0.0001, "alpha0.0001"), (0.0005, "alpha0.0005"),
                                         (3.0, "alpha3.0")])
def test_alpha_names_are_the_folder_names_on_disk(alpha, name):
    assert layout.alpha_name(alpha) == name
    assert layout.parse_alpha_name(name) == float(alpha)


@pytest.mark.parametrize("bad", ["alpha1", "alpha", "alphax", "alpha0.10", "beta0.1", "alpha.1"])
def test_a_non_canonical_alpha_name_is_refused(bad):
    with pytest.raises(ValueError, match=re.escape(repr(bad))):
        layout.parse_alpha_name(bad)


def test_run_and_eval_folders():
    cell = layout.cell_path("tiny-sft", 0.1)
    assert cell == "tiny-sft/alpha0.1"
    assert layout.run_dir("main", cell, 42) == Path("runs/main/tiny-sft/alpha0.1/seed42")
    assert layout.eval_dir("main", cell, 42) == Path("evals/main/tiny-sft/alpha0.1/seed42")
    assert layout.eval_dir_of("runs/main/tiny-sft/alpha0.1/seed42") == Path("evals/main/tiny-sft/alpha0.1/seed42")
    assert layout.base_eval_dir("tiny-sft") == Path("evals/base/tiny-sft")
    assert layout.experiment_manifest("alpha") == Path("evals/alpha/experiment.json")
    assert layout.run_name("ablations", "stepwise/alpha0.0", 44) == "ablations/stepwise/alpha0.0/seed44"
    assert layout.checkpoint_id("main", "tiny-sft/alpha0.0", 3, 43) == "main/tiny-sft/alpha0.0/iter3/seed43"
    with pytest.raises(ValueError, match="run_dir=elsewhere/x: expected a folder under runs/"):
        layout.eval_dir_of("elsewhere/x")


def test_iteration_folders_and_files():
    run = Path("runs/main/tiny-sft/alpha0.1/seed42")
    assert layout.iteration_name(0) == "iter0"
    assert layout.iteration_dir(run, 2) == Path("runs/main/tiny-sft/alpha0.1/seed42/iter2")
    assert layout.model_dir(run, 2) == Path("runs/main/tiny-sft/alpha0.1/seed42/iter2/model")
    assert layout.model_dir(run / "iter2") == Path("runs/main/tiny-sft/alpha0.1/seed42/iter2/model")
    assert layout.iteration_dir(Path("evals/main/tiny-sft/alpha0.1/seed42"), 1) / layout.EVAL_METRICS == \
        Path("evals/main/tiny-sft/alpha0.1/seed42/iter1/metrics.json")
    assert [run / f for f in (layout.RUN_CONFIG, layout.SUMMARY)] == [run / "config.json", run / "summary.json"]
    assert (layout.PAIRS, layout.RESPONSES, layout.LOOP_EVAL, layout.TRAIN_METRICS) == \
        ("pairs.jsonl", "responses.jsonl", "eval.json", "train_metrics.json")
    assert layout.shared_iteration0_dir("runs/shared", "tiny-sft", 42, "0123456789abcdef0123") == \
        Path("runs/shared/tiny-sft/iter0-seed42-0123456789abcdef")
    assert [layout.parse_iteration_name(n) for n in ("iter0", "iter12", "base", "iter", "iter1.partial")] == \
        [0, 12, None, None, None]


def test_figure_references_round_trip():
    ref = layout.parse_figure_ref("main/tiny-sft/alpha0.1")
    assert (ref.experiment, ref.cell, ref.alpha, ref.cell_path) == ("main", "tiny-sft", 0.1, "tiny-sft/alpha0.1")
    assert layout.figure_ref("alpha", "tiny-sft", 0.01) == "alpha/tiny-sft/alpha0.01"
    for text in ("main/tiny-sft/alpha0.0", "ablations/rank_w_ref/alpha0.0", "regimes/hard_tasks/alpha1.0",
                 "paper_alpha/zephyr-7b-sft/alpha0.0005"):
        r = layout.parse_figure_ref(text)
        assert layout.figure_ref(r.experiment, r.cell, r.alpha) == text
    for bad in ("main/tiny-sft", "main/tiny-sft/alpha1", "main//alpha0.1"):
        with pytest.raises(ValueError, match=re.escape(repr(bad))):
            layout.parse_figure_ref(bad)


def test_the_cells_of_an_experiment_are_the_figure_references():
    """expand() names a run's cell as `figures:` refers to it, and its folders follow the layout."""
    spec = OmegaConf.create({"seeds": [42, 43], "experiments": {"alpha": {"alphas": [0.01, 1], "cells": {
        "tiny-sft": {"model": "tiny-sft"}}}}})
    runs = expand(spec, "alpha")
    assert [(r.cell, r.seed) for r in runs] == [("tiny-sft/alpha0.01", 42), ("tiny-sft/alpha0.01", 43),
                                                ("tiny-sft/alpha1.0", 42), ("tiny-sft/alpha1.0", 43)]
    assert runs[3].run_dir == Path("runs/alpha/tiny-sft/alpha1.0/seed43")
    assert runs[3].eval_dir == Path("evals/alpha/tiny-sft/alpha1.0/seed43")
    assert runs[3].name == "alpha/tiny-sft/alpha1.0/seed43"
    assert layout.parse_figure_ref("alpha/tiny-sft/alpha1.0").cell_path == runs[3].cell


def _checkpoint(it_dir: Path, done: bool = True) -> None:
    model = it_dir / ("model" if done else "model.partial")
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")


def test_finished_iterations_are_those_with_a_checkpoint_config(tmp_path):
    run = tmp_path / "runs/main/tiny-sft/alpha0.0/seed42"
    for t in (0, 1, 2, 10):
        _checkpoint(run / f"iter{t}")
    _checkpoint(run / "iter3", done=False)            # interrupted: model.partial
    (run / "iter4").mkdir()                            # pairs only
    (run / "iter5" / "model").mkdir(parents=True)      # a model folder without config.json
    (run / "base").mkdir()
    (run / "iter1.lock").write_text("")
    assert layout.finished_iterations(run) == [0, 1, 2, 10]
    assert sorted(layout.iteration_dirs(run)) == [0, 1, 2, 3, 4, 5, 10]
    assert layout.is_trained(run / "iter2") and not layout.is_trained(run / "iter3")
    assert layout.finished_iterations(tmp_path / "nothing") == []


def test_run_folders_parse_back(tmp_path):
    for exp, cell, alpha, seed in [("main", "tiny-sft", 0.1, 43), ("main", "tiny-sft", 0.0, 42),
                                   ("main", "tiny-instruct", 0.1, 42)]:
        d = layout.run_dir(exp, layout.cell_path(cell, alpha), seed, root=tmp_path / "runs")
        d.mkdir(parents=True)
        if seed == 42:
            (d / "summary.json").write_text("{}")
    found = layout.experiment_runs(tmp_path / "runs" / "main")
    assert [(r.experiment, r.cell, r.alpha, r.seed) for r in found] == [
        ("main", "tiny-instruct", 0.1, 42), ("main", "tiny-sft", 0.0, 42), ("main", "tiny-sft", 0.1, 43)]
    assert found[2].path == tmp_path / "runs/main/tiny-sft/alpha0.1/seed43"
    assert found[2].cell_path == "tiny-sft/alpha0.1"
    assert [r.seed for r in layout.experiment_runs(tmp_path / "runs" / "main", having="summary.json")] == [42, 42]
    assert layout.cell_runs(tmp_path / "runs/main/tiny-sft/alpha0.1") == [(43, found[2].path)]
    with pytest.raises(ValueError, match=r"x/alphaX/seed1: not a run folder"):
        layout.parse_run_dir("runs/main/x/alphaX/seed1")


def test_evaluations_parse_back_in_file_name_order(tmp_path):
    evals = tmp_path / "evals"
    for base in ("tiny-sft", "tiny-instruct"):
        (evals / "base" / base).mkdir(parents=True)
        (evals / "base" / base / "metrics.json").write_text("{}")
    for t in (2, 10, 1):
        d = layout.iteration_dir(layout.eval_dir("main", "tiny-sft/alpha0.1", 44, root=evals), t)
        d.mkdir(parents=True)
        (d / "metrics.json").write_text("{}")
    assert layout.evaluated_bases(evals) == [("tiny-instruct", evals / "base/tiny-instruct/metrics.json"),
                                             ("tiny-sft", evals / "base/tiny-sft/metrics.json")]
    found = [(r.cell, r.alpha, r.seed, t, p.relative_to(evals).as_posix())
             for r, t, p in layout.evaluated_checkpoints(evals / "main")]
    assert found == [("tiny-sft", 0.1, 44, 1, "main/tiny-sft/alpha0.1/seed44/iter1/metrics.json"),
                     ("tiny-sft", 0.1, 44, 10, "main/tiny-sft/alpha0.1/seed44/iter10/metrics.json"),
                     ("tiny-sft", 0.1, 44, 2, "main/tiny-sft/alpha0.1/seed44/iter2/metrics.json")]
