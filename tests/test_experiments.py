"""Named experiments: expansion into runs, per-run configs, the worker pool, and a run killed with
SIGKILL mid-stage that ends identical to an uninterrupted one."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf
from conftest import run_experiment_in

from selm import layout
from selm.experiments import expand, load_experiments, run_experiment, run_experiments
from selm.stagelog import take_counts

ROOT = Path(__file__).resolve().parents[1]


def test_toy_spec_expands_every_cell_alpha_and_seed():
    spec = load_experiments(ROOT / "experiments" / "toy.yaml")
    main = expand(spec, "main")
    assert len(main) == 2 * 2 * 3  # cells x alphas x seeds
    assert [r.cell for r in main[:4]] == ["tiny-sft/alpha0.0"] * 3 + ["tiny-sft/alpha0.1"]
    assert str(main[0].run_dir) == "runs/main/tiny-sft/alpha0.0/seed42"
    assert all(len(set(r.seed for r in expand(spec, n))) >= 3 for n in spec.experiments)  # >= 3 seeds everywhere
    with pytest.raises(KeyError, match=r"no experiment 'mian'; known: \['ablations', 'alpha', 'main', 'regimes'\]"):
        expand(spec, "mian")


def test_figure_inputs_name_existing_cells():
    spec = load_experiments(ROOT / "experiments" / "toy.yaml")
    cells = {f"{n}/{r.cell}" for n in spec.experiments for r in expand(spec, n)}
    f = spec.figures
    named = [*f.figure3_alpha.cells, f.figure3_alpha.shift_cell, f.figure6_ablations.iterative,
             *f.figure6_ablations.variants, f.regime_map.baseline.dpo, *f.regime_map.baseline.selm]
    assert set(named) <= cells, set(named) - cells



def test_toy_figures_3_and_6_have_the_papers_grid_and_panels():
    """Figure 3: the paper's largest searched alpha 0.005 beside the toy's; Figure 6: the paper's batch,
    schedule and iteration-count panels (batch 2x main's, peak lr decaying 5:3:1 with cosine kept, 6
    iterations) besides its label- and dataset-update ones."""
    spec = load_experiments(ROOT / "experiments" / "toy.yaml")
    params = ROOT / "params.yaml"
    fig3 = {float(p.rsplit("alpha", 1)[1]) for p in spec.figures.figure3_alpha.cells}
    assert fig3 == {0.0, 0.005, 0.01, 0.1, 0.3, 1.0}
    cfg = {r.cell.split("/")[0]: r.config(params) for r in expand(spec, "ablations") if r.seed == 42}
    main = next(r.config(params) for r in expand(spec, "main") if r.cell == "tiny-sft/alpha0.0" and r.seed == 42)
    assert "constant_lr" not in cfg  # the old constant_with_warmup cell was not the paper's panel
    assert list(main.train.learning_rates) == [3e-5] * 4  # main: the same peak every iteration
    assert list(cfg["decaying_lr"].train.learning_rates) == pytest.approx([3e-5, 3e-5, 1.8e-5, 6e-6])  # 5:3:1 x 6e-6
    assert cfg["decaying_lr"].train.lr_scheduler == main.train.lr_scheduler == "cosine"
    assert cfg["batch32"].train.global_batch_size == 2 * main.train.global_batch_size
    assert list(cfg["six_iterations"].model.iterations) == [1, 2, 3, 4, 5, 6]
    variants = {p.split("/")[1] for p in spec.figures.figure6_ablations.variants}
    assert {"batch32", "decaying_lr", "six_iterations"} <= variants and variants == set(cfg)

def test_a_group_key_that_is_not_a_group_is_refused():
    spec = OmegaConf.create({"seeds": [1], "experiments": {"x": {"alphas": [0.0], "cells": {
        "c": {"model": "tiny-sft", "generation": "sampled"}}}}})
    with pytest.raises(KeyError, match=r"experiments.x.cells.c: \['generation'\] are not config groups"):
        expand(spec, "x", "spec.yaml")


def test_run_config_applies_groups_values_and_names(tmp_path):
    spec = load_experiments(ROOT / "experiments" / "toy.yaml")
    stepwise = next(r for r in expand(spec, "ablations") if r.cell == "stepwise/alpha0.0")
    cfg = stepwise.config(ROOT / "params.yaml")
    assert (cfg.variant.name, cfg.variant.pairs, cfg.run_dir) == ("stepwise", "original",
                                                                  "runs/ablations/stepwise/alpha0.0/seed42")
    assert list(cfg.eval.parts) == ["mt_bench"]
    assert cfg.logger.group == "ablations/stepwise/alpha0.0"
    assert OmegaConf.merge(cfg, {"iteration": 2}).logger.name == "tiny-sft/stepwise/alpha0.0/iter2/seed42"
    hard = next(r for r in expand(spec, "regimes") if r.cell == "hard_tasks/alpha1.0")
    cfg = hard.config(ROOT / "params.yaml")
    assert list(cfg.data.families) == ["add", "count", "rotate", "sort"] and cfg.train.alpha == 1.0
    sampled = next(r for r in expand(spec, "regimes") if r.cell.startswith("sampled_y_ref"))
    # a cell's values win over params.yaml's shared sections (which say greedy)
    assert sampled.config(ROOT / "params.yaml").generation.do_sample is True


@pytest.fixture(scope="module")
def mini(tmp_path_factory, tiny_model):
    """A tiny world, params.yaml and experiments spec: 1 cell x 2 alphas x 2 seeds, 2 iterations."""
    from selm.world.build import build_world

    root = tmp_path_factory.mktemp("mini")
    world = root / "world"
    build_world(world, seed=0, n_sft=10, n_train_prefs=24, n_test_prefs=6, n_eval=4, n_mt_bench=2, n_lmeval=4)
    params = {
        "train": {"global_batch_size": 4, "per_device_batch_size": 4},
        "data": {"train_prefs": str(world / "train_prefs.jsonl"), "test_prefs": str(world / "test_prefs.jsonl"),
                 "slice_size": 8},
        "eval": {"n_prompts": 4, "coverage_samples": 2},
        "scale": {"max_new_tokens": 6},
        "paths": {"ref_cache_dir": str(root / "cache"), "shared_runs": "shared"},  # one store per folder run in
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    cell = {"model": "tiny-sft", "model.path": str(tiny_model), "model.offline_dpo_iteration": False,
            "model.iterations": [1, 2], "logger.wandb": False}
    spec = {"seeds": [1, 2], "workers": 2, "experiments": {"e": {"eval": [], "alphas": [0.0, 0.5],
                                                                 "cells": {"c": cell}}}}
    (root / "spec.yaml").write_text(yaml.safe_dump(spec))
    return root


def _results(root: Path) -> dict:
    out = {}
    for path in sorted((root / "runs").rglob("eval.json")):
        out[str(path.relative_to(root))] = json.loads(path.read_text())
    for path in sorted((root / "runs").rglob("model.safetensors")):
        out[str(path.relative_to(root))] = path.read_bytes()
    return out


def _run_in(cwd: Path, mini: Path, workers: int) -> None:
    run_experiment_in(cwd, mini / "spec.yaml", mini / "params.yaml", workers=workers)


@pytest.fixture(scope="module")
def serial(mini, tmp_path_factory):
    """The mini experiment run on one process (in this one): its results and what the stage counted."""
    cwd = tmp_path_factory.mktemp("serial")
    take_counts()
    _run_in(cwd, mini, workers=1)
    return _results(cwd), take_counts()


def test_worker_count_does_not_change_results(mini, serial, tmp_path):
    take_counts()
    _run_in(tmp_path, mini, workers=2)
    counts_two = take_counts()
    one, counts_one = serial
    assert len(one) == 4 * 3 + 4 * 2  # 4 runs x (base, iter1, iter2) evals + 4 runs x 2 checkpoints
    assert _results(tmp_path) == one
    # the base's evaluation is shared by the 4 runs; each run's iter1 and iter2 are its own
    for counts in (counts_one, counts_two):
        assert (counts["runs"], counts["r* evaluations computed"], counts["r* evaluations linked"]) == (4, 1 + 8, 3)


def test_a_failing_run_is_reported_and_the_others_finish(mini, tmp_path):
    spec = yaml.safe_load((mini / "spec.yaml").read_text())
    spec["experiments"]["e"]["cells"]["bad"] = {**spec["experiments"]["e"]["cells"]["c"],
                                                "model.path": str(tmp_path / "missing")}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    old = os.getcwd()
    os.chdir(tmp_path)
    try:
        with pytest.raises(RuntimeError, match=r"4 of 8 runs of experiment 'e' failed:[\s\S]*model.path="):
            run_experiment("e", tmp_path / "spec.yaml", mini / "params.yaml", workers=1)
    finally:
        os.chdir(old)
    assert len(list((tmp_path / "runs" / "e" / "c").rglob("summary.json"))) == 4  # the good runs finished


def test_several_experiments_run_in_one_pool_and_keep_their_own_manifests(mini, tmp_path):
    spec = yaml.safe_load((mini / "spec.yaml").read_text())
    spec["experiments"]["e"]["alphas"], spec["experiments"]["e"]["seeds"] = [0.5], [1]  # one good run
    good = spec["experiments"]["e"]["cells"]["c"]
    spec["experiments"]["f"] = {"eval": [], "alphas": [0.0], "seeds": [1],
                                "cells": {"bad": {**good, "model.path": str(tmp_path / "missing")}}}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    old = os.getcwd()
    os.chdir(tmp_path)
    try:
        with pytest.raises(RuntimeError, match=r"1 of 2 runs of experiments 'e', 'f' failed:[\s\S]*f/bad/alpha0.0/seed1"):
            run_experiments(["e", "f"], tmp_path / "spec.yaml", mini / "params.yaml", workers=2)
        manifests = {name: json.loads(layout.experiment_manifest(name).read_text()) for name in "ef"}
    finally:
        os.chdir(old)
    assert [r["ok"] for r in manifests["e"]["runs"]] == [True] and [r["ok"] for r in manifests["f"]["runs"]] == [False]
    assert len(list((tmp_path / "runs" / "e").rglob("summary.json"))) == 1  # e's run finished beside f's failure


@pytest.mark.parametrize("argv, message", [
    (["experiment"], "name the experiments, or give --all"),
    (["experiment", "main", "--all"], "name the experiments, or give --all"),
    (["experiment", "mian"], "error: experiment mian: .*no experiment 'mian'; known: \\['ablations', 'alpha', 'main', 'regimes'\\]"),
])
def test_the_experiment_stage_refuses_unclear_names(argv, message, capsys):
    from selm.cli.stage import main

    with pytest.raises(SystemExit) as exit_:
        main(["--params", str(ROOT / "params.yaml"), *argv, "--spec", str(ROOT / "experiments" / "toy.yaml")])
    assert __import__("re").search(message, str(exit_.value.code) + capsys.readouterr().err)


@pytest.mark.slow
def test_sigkill_mid_stage_then_rerun_equals_an_uninterrupted_run(mini, serial, tmp_path):
    """What `kill -9` of `dvc repro` in the middle of a stage does: the stage's process dies with a
    half-written iteration; rerunning the stage finishes with bit-identical checkpoints."""
    killed = tmp_path / "killed"
    killed.mkdir()
    cmd = [sys.executable, "-m", "selm.cli.stage", "--params", str(mini / "params.yaml"), "experiment", "e",
           "--spec", str(mini / "spec.yaml"), "--workers", "1"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen(cmd, cwd=killed, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    target = killed / "runs" / "e" / "c" / "alpha0.0" / "seed2" / "iter1" / "model"  # the 2nd run, mid-way
    deadline = time.time() + 120
    while not target.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the stage ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "runs" / "e" / "c" / "alpha0.5").exists() or \
        len(list((killed / "runs").rglob("summary.json"))) < 4  # it really was interrupted
    subprocess.run(cmd, cwd=killed, env=env, check=True, capture_output=True)
    assert _results(killed) == serial[0]  # the same stage uninterrupted


def test_evaluations_reach_wandb_once(tmp_path, monkeypatch):
    """A rerun of an experiment stage reuses finished evaluations and must not log them again."""
    import selm.evaluate
    from selm.experiments import evaluate_run

    run = tmp_path / "run"
    for t in (1, 2):
        (run / f"iter{t}" / "model").mkdir(parents=True)
        (run / f"iter{t}" / "model" / "config.json").write_text("{}")

    def fake_evaluate(cfg, model_dir, out, model_id):
        path = Path(out) / "metrics.json"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"alpaca_lc_win_rate": 1.0}))
        return json.loads(path.read_text())

    logged = []
    monkeypatch.setattr(selm.evaluate, "evaluate_checkpoint", fake_evaluate)
    monkeypatch.setattr(selm.evaluate, "log_eval_to_wandb", lambda cfg, t, metrics: logged.append(t))
    cfg = OmegaConf.create({"run_dir": str(run), "run": {"experiment": "e", "cell": "c"}, "train": {"seed": 1}})
    evaluate_run(cfg, tmp_path / "evals")
    evaluate_run(cfg, tmp_path / "evals")
    assert logged == [1, 2]


def _worker_pid() -> int:
    return os.getpid()


@pytest.mark.slow
def test_workers_exit_when_their_stage_is_killed(tmp_path):
    """kill -9 of the stage (dvc repro) must not leave its worker processes behind, idle and holding memory."""
    script = tmp_path / "stage.py"
    script.write_text(
        "import os, sys, time\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "from selm.workers import spawn_pool\n"
        "from test_experiments import _worker_pid\n"
        "if __name__ == '__main__':\n"
        "    pool = spawn_pool(1, 1)\n"
        "    print(pool.submit(_worker_pid).result(), flush=True)\n"
        "    time.sleep(600)\n")
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT / 'tests'}"}
    proc = subprocess.Popen([sys.executable, str(script), str(ROOT / "tests")], env=env, stdout=subprocess.PIPE, text=True)
    worker = int(proc.stdout.readline())
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 120  # a bound on a stuck worker, not a speed: its watch polls each second
    while time.time() < deadline:
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    os.kill(worker, signal.SIGKILL)
    pytest.fail(f"worker {worker} outlived its killed parent")


def test_a_run_starts_with_the_heap_frozen():
    """Before each run the objects alive (the imported stack) leave the cyclic collector's scans,
    so the ~10 gc.collect() calls of a run do not rescan half a million module objects."""
    import gc

    from selm.experiments import freeze_heap

    gc.unfreeze()
    alive = len(gc.get_objects())
    try:
        freeze_heap()
        assert gc.get_freeze_count() >= alive * 0.9  # what gc.collect() had freed is not alive
        assert len(gc.get_objects()) < alive * 0.1  # what a collection still scans
    finally:
        gc.unfreeze()


def test_the_stage_process_checks_its_inputs_without_importing_torch(tmp_path):
    """The experiment stage's own process only checks inputs and hands runs to workers: importing
    torch, transformers and trl there (~10 s of CPU) would delay every worker's start."""
    root = Path(__file__).parents[1]
    code = ("import sys\n"
            "from selm.cli.stage import preflight\n"
            f"try:\n    preflight('main', {str(root / 'experiments/toy.yaml')!r}, {str(root / 'params.yaml')!r})\n"
            "except FileNotFoundError as e:\n    print('refused:', e)\n"
            "print('torch imported:', 'torch' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert done.stdout.splitlines() == ["refused: model.path=models/tiny-sft: not a model checkpoint (no config.json "
                                        "there)", "torch imported: False"]


def test_a_cell_may_run_its_own_seeds():
    spec = OmegaConf.create({"seeds": [1, 2], "experiments": {"x": {"alphas": [0.0, 0.5], "cells": {
        "a": {"model": "tiny-sft"}, "b": {"model": "tiny-sft", "seeds": [7], "alphas": [0.1]}}}}})
    runs = [(r.cell, r.seed) for r in expand(spec, "x")]
    assert runs == [("a/alpha0.0", 1), ("a/alpha0.0", 2), ("a/alpha0.5", 1), ("a/alpha0.5", 2), ("b/alpha0.1", 7)]
    assert all("seeds" not in r.values for r in expand(spec, "x"))  # not a config value of the run


def test_controls_spec_expands_and_names_existing_cells():
    spec = load_experiments(ROOT / "experiments" / "toy_controls.yaml")
    toy = load_experiments(ROOT / "experiments" / "toy.yaml")
    cells = {f"{n}/{r.cell}" for s in (spec, toy) for n in s.experiments for r in expand(s, n)}
    c = spec.controls
    named = [x for item in [*c.positive, *c.power, *c.screening] for key in ("dpo", "explorer", "selm")
             for x in item.get(key, [])]
    assert named and set(named) <= cells, set(named) - cells
    for n in spec.experiments:
        for r in {r.cell: r for r in expand(spec, n)}.values():  # one seed per cell x alpha: seeds only set train.seed
            r.config(ROOT / "params.yaml")  # every cell composes and validates
