"""Identities: a finished iteration or evaluation is reused only when everything it depends on is
unchanged (config, data content, base checkpoint, code), and iteration 0 is trained once and shared.

Three tiny runs are made once (two bases x the world's corpus, and base A on a second corpus file);
each test copies them, changes one input and counts the trainings a rerun does.
"""

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

import selm.provenance
import selm.train
from selm.config import compose_config
from selm.loop import run_loop

ROOT = Path(__file__).resolve().parents[1]
RUNS = {"a_world": ("bases/a", "world/train_prefs.jsonl"), "b_world": ("bases/b", "world/train_prefs.jsonl"),
        "a_other": ("bases/a", "world/other_prefs.jsonl")}


def small_cfg(run: str, base: str, prefs: str, *overrides: str):
    """A one-iteration loop on 4 pairs, all paths relative to the current folder."""
    cfg = compose_config("loop", [
        f"model.path={base}", f"data.train_prefs={prefs}", "data.test_prefs=world/test_prefs.jsonl",
        "data.slice_size=4", "eval.n_prompts=2", "logger=none", f"run_dir=runs/{run}", "paths.ref_cache_dir=cache",
        "train.global_batch_size=4", "train.per_device_batch_size=4", "scale.max_new_tokens=4",
        "train.warmup_ratio=0", "train.learning_rates.1=1e-3",  # one step that moves the weights
        "model.offline_dpo_iteration=false", "model.iterations=[1]", "train.alpha=0.1", *overrides])
    return cfg


def run_all() -> None:
    for run, (base, prefs) in RUNS.items():
        run_loop(small_cfg(run, base, prefs))


@pytest.fixture(scope="module")
def golden(tmp_path_factory, tiny_model):
    from selm.tiny import build_tiny_model
    from selm.world.build import build_world

    root = tmp_path_factory.mktemp("identity")
    build_world(root / "world", seed=0, n_sft=10, n_train_prefs=8, n_test_prefs=4, n_eval=4, n_mt_bench=2, n_lmeval=4)
    shutil.copy(root / "world" / "train_prefs.jsonl", root / "world" / "other_prefs.jsonl")
    shutil.copytree(tiny_model, root / "bases" / "a")
    build_tiny_model(root / "bases" / "b", size="113k", seed=1)
    old = os.getcwd()
    os.chdir(root)
    try:
        run_all()
    finally:
        os.chdir(old)
    return root


@pytest.fixture
def copy(golden, tmp_path, monkeypatch):
    """A copy of the golden folder as the current folder, and a counter of trainings (run folders)."""
    work = tmp_path / "work"
    shutil.copytree(golden, work)
    monkeypatch.chdir(work)
    trained = []
    real = selm.train.train_iteration

    def counting(cfg, *args, **kwargs):
        trained.append(Path(cfg.output_dir).parts[1])
        return real(cfg, *args, **kwargs)

    monkeypatch.setattr(selm.train, "train_iteration", counting)
    return work, trained


def weights(work: Path, run: str) -> bytes:
    return (work / "runs" / run / "iter1" / "model" / "model.safetensors").read_bytes()


def package_copy(tmp_path: Path, monkeypatch) -> Path:
    """A copy of the source tree that the code fingerprints read (what an edit of the package does)."""
    src = tmp_path / "src" / "selm"
    shutil.copytree(ROOT / "src" / "selm", src, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "README.md", tmp_path / "src" / "README.md")
    monkeypatch.setattr(selm.provenance, "PACKAGE_ROOT", src, raising=False)
    return src


def test_unchanged_inputs_and_a_readme_edit_redo_nothing(copy, tmp_path, monkeypatch):
    work, trained = copy
    src = package_copy(tmp_path, monkeypatch)
    run_all()
    (src.parent / "README.md").write_text("edited\n")
    run_all()
    assert trained == []
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert not [name for name, stage in stages.items() if "README.md" in json.dumps(stage)]


@pytest.mark.slow
def test_a_changed_loss_redoes_every_run_and_an_evaluation_only_edit_none(copy, golden, tmp_path, monkeypatch):
    import selm.trainer

    work, trained = copy
    src = package_copy(tmp_path, monkeypatch)
    with (src / "benchmarks" / "alpaca.py").open("a") as f:  # a module the loop does not import
        f.write("\n# edited\n")
    run_all()
    assert trained == []
    real = selm.trainer.selm_loss

    def swapped(pc, pr, resp, ref_c, ref_r, ref_resp, **kwargs):  # prefers the rejected answer
        return real(pr, pc, resp, ref_r, ref_c, ref_resp, **kwargs)

    monkeypatch.setattr(selm.trainer, "selm_loss", swapped)
    with (src / "losses.py").open("a") as f:  # the edit that made the loss behave so
        f.write("\n# chosen and rejected swapped\n")
    run_all()
    assert sorted(trained) == sorted(RUNS)
    assert all(weights(work, run) != weights(golden, run) for run in RUNS)


def test_one_byte_of_train_prefs_redoes_only_the_runs_that_read_it(copy, golden):
    work, trained = copy
    prefs = work / "world" / "train_prefs.jsonl"
    lines = prefs.read_text().splitlines(keepends=True)
    first = json.loads(lines[0])
    answer = first["chosen"][-1]["content"]
    at = lines[0].index(json.dumps(answer)) + 1  # the first character of the chosen answer (slice 0)
    lines[0] = lines[0][:at] + ("x" if lines[0][at] != "x" else "y") + lines[0][at + 1:]
    prefs.write_text("".join(lines))
    run_all()
    assert sorted(trained) == ["a_world", "b_world"]
    assert weights(work, "a_other") == weights(golden, "a_other")
    assert weights(work, "a_world") != weights(golden, "a_world")


def test_a_retrained_base_redoes_only_its_runs(copy, golden):
    from selm.tiny import build_tiny_model

    work, trained = copy
    build_tiny_model(work / "bases" / "a", size="113k", seed=2)  # the SFT stage ran again, other weights
    run_all()
    assert sorted(trained) == ["a_other", "a_world"]
    assert weights(work, "b_world") == weights(golden, "b_world")
    base_eval = json.loads((work / "runs" / "a_world" / "base" / "eval_identity.json").read_text())
    assert base_eval["checkpoint"] != json.loads(
        (golden / "runs" / "a_world" / "base" / "eval_identity.json").read_text())["checkpoint"]


def iteration0_experiment(work: Path, workers: int) -> None:
    """An experiment of two cells (alpha 0 and 0.5) of a base with the offline-DPO iteration 0 only."""
    from selm.experiments import run_experiment

    params = {"train": {"global_batch_size": 4, "per_device_batch_size": 4},
              "data": {"train_prefs": "world/train_prefs.jsonl", "test_prefs": "world/test_prefs.jsonl",
                       "slice_size": 4},
              "eval": {"n_prompts": 2}, "scale": {"max_new_tokens": 4}, "paths": {"ref_cache_dir": "cache"}}
    cell = {"model": "tiny-sft", "model.path": "bases/a", "model.offline_dpo_iteration": True,
            "model.iterations": [], "logger.wandb": False}
    spec = {"seeds": [7], "experiments": {"e": {"eval": [], "alphas": [0.0, 0.5], "cells": {"c": cell}}}}
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    (work / "spec.yaml").write_text(yaml.safe_dump(spec))
    run_experiment("e", work / "spec.yaml", work / "params.yaml", workers=workers)


def test_iteration0_is_trained_once_and_shared_by_every_alpha(copy):
    """Zephyr's offline-DPO iteration 0 does not depend on alpha: the DPO and SELM cells start from
    one checkpoint, trained once (on GPUs two trainings would give two different models)."""
    work, trained = copy
    iteration0_experiment(work, workers=1)
    assert len(trained) == 1
    dpo, selm = (work / "runs" / "e" / "c" / f"alpha{a}" / "seed7" / "iter0" for a in ("0.0", "0.5"))
    weights_dpo, weights_selm = dpo / "model" / "model.safetensors", selm / "model" / "model.safetensors"
    assert weights_dpo.read_bytes() == weights_selm.read_bytes()
    assert os.path.samefile(weights_dpo, weights_selm)  # hard links of one shared checkpoint
    assert (dpo / "eval.json").exists() and (selm / "eval.json").exists()
    iteration0_experiment(work, workers=1)
    assert len(trained) == 1


def test_an_evaluation_is_redone_when_its_checkpoint_or_data_change(golden, tmp_path, monkeypatch):
    """Same path, same settings: a retrained checkpoint or an edited question file is evaluated again."""
    import selm.evaluate
    from selm.evaluate import evaluate_checkpoint
    from selm.tiny import build_tiny_model

    world = tmp_path / "world"
    shutil.copytree(golden / "world", world)
    model = tmp_path / "model"
    shutil.copytree(golden / "bases" / "b", model)
    cfg = compose_config("loop", [
        f"eval.alpaca_eval.data={world}/alpaca_eval.jsonl", f"eval.mt_bench.questions={world}/mt_bench.jsonl",
        "eval.mt_bench.limit=1", "eval.mt_bench.judge_runs=1", "eval.lmeval.config=null", "eval.parts=[mt_bench]",
        "scale.max_new_tokens=4", "logger=none"])
    graded = []
    real = selm.evaluate.mt_bench
    monkeypatch.setattr(selm.evaluate, "mt_bench", lambda *a, **k: graded.append(1) or real(*a, **k))
    evaluate_checkpoint(cfg, model, tmp_path / "ev", "m")
    evaluate_checkpoint(cfg, model, tmp_path / "ev", "m")
    assert len(graded) == 1  # unchanged inputs: read back
    build_tiny_model(model, size="113k", seed=3)
    evaluate_checkpoint(cfg, model, tmp_path / "ev", "m")
    assert len(graded) == 2  # the checkpoint changed under the same path
    questions = world / "mt_bench.jsonl"
    questions.write_text(questions.read_text().replace('"reference": ["', '"reference": ["9', 1))
    evaluate_checkpoint(cfg, model, tmp_path / "ev", "m")
    assert len(graded) == 3  # a reference answer of the questions file changed


# What a `python -m selm.cli.stage <subcommand>` stage runs (selm.cli.stage itself imports every
# subcommand's modules, lazily, so its own closure would name the whole package).
SUBCOMMANDS = {"sft": ("selm.sft", "selm.tiny", "selm.workers"), "eval-base": ("selm.evaluate", "selm.workers"), "loop": ("selm.loop",),
               "experiment": ("selm.experiments",)}


def stage_code(cmd: str) -> tuple[set[str], bool]:
    """The files of src/selm a stage command executes (relative to the repository root), and
    whether it composes a Hydra config from conf/."""
    from selm.provenance import PACKAGE_ROOT, module_closure

    words = cmd.split()
    module, wrapper = words[words.index("-m") + 1], set()
    # `python -m selm.stagelog run -- python -m <module> ...` (the stage timer) and `python -m
    # selm.judge_server ... -- python -m <module> ...` (a judge server for the command's life): both run
    if module in ("selm.stagelog", "selm.judge_server"):
        wrapper = set(module_closure(module))
        words = words[words.index("--") + 1:]
        module = words[words.index("-m") + 1]
    if module == "selm.cli.stage":
        sub = next(w for w in words[words.index("-m") + 2:] if w in SUBCOMMANDS)
        files = set(module_closure("selm.config", "selm.compose", "selm.stagelog", *SUBCOMMANDS[sub]))
        files |= {PACKAGE_ROOT / "cli" / "__init__.py", PACKAGE_ROOT / "cli" / "stage.py"}
    else:
        files = set(module_closure(module))
    files |= wrapper
    composes = PACKAGE_ROOT / "config.py" in files
    return {str(Path("src", "selm", p.relative_to(PACKAGE_ROOT))) for p in files}, composes


@pytest.mark.parametrize("pipeline", ["dvc.yaml", "scales/paper/dvc.yaml", "scales/evalcheck/dvc.yaml", "scales/rehearsal/dvc.yaml",
                                      "experiments/controls/dvc.yaml"])
def test_every_stage_depends_on_the_code_and_config_it_reads(pipeline):
    """A stage whose code changed must rerun (its identities then decide what is redone): its deps
    cover every module its command imports, conf/ where it composes a config, the lm-eval suites
    where it evaluates; README.md is nobody's dependency."""
    from dvc.repo import Repo

    problems = []
    for stage in Repo(str(ROOT)).stage.collect(pipeline):
        if "python -m selm." not in stage.cmd:
            continue
        deps = [Path(d.fs_path).relative_to(ROOT) for d in stage.deps]
        covered = lambda f: any(Path(f) == d or d in Path(f).parents for d in deps)  # noqa: E731
        code, composes = stage_code(stage.cmd)
        needed = sorted(code)
        if composes:  # the entry config, and the model group (all of it, or the stage's own base)
            needed.append("conf/loop.yaml")
            if not any(d in (Path("conf"), Path("conf/model")) or d.parent == Path("conf/model") for d in deps):
                needed.append("conf/model")
        words = stage.cmd.split()
        if {"eval-base", "experiment"} & set(words) or "selm.cli.evaluate" in words:  # lm-eval suites by name
            needed += ["eval/lmeval/toy.yaml", "eval/lm_eval_tasks/utils.py"]
        problems += [f"{pipeline}:{stage.name} reads {f}, not in its deps" for f in needed if not covered(f)]
        problems += [f"{pipeline}:{stage.name} depends on README.md" for d in deps if d.name == "README.md"]
    assert not problems, "\n".join(problems)


@pytest.mark.slow
def test_parallel_runs_wait_for_the_one_training_iteration0(copy):
    """Two worker processes that need the same iteration 0 at once: one trains it, the other waits
    (a lock) and links the same checkpoint."""
    work = copy[0]
    iteration0_experiment(work, workers=2)
    dpo, selm = (work / "runs" / "e" / "c" / f"alpha{a}" / "seed7" / "iter0" / "model" / "model.safetensors"
                 for a in ("0.0", "0.5"))
    assert os.path.samefile(dpo, selm)
    assert len(list((work / "runs" / "shared" / "tiny-sft").glob("iter0-*/model"))) == 1


def test_a_checkpoint_is_hashed_once_per_file_set_across_processes(golden, tmp_path):
    """The fingerprint memo in the cache folder stands for the hash while the files are untouched
    (name, device, inode, size, mtime); touching a file makes it hash again."""
    import selm.logps
    from selm.logps import model_fingerprint

    model = tmp_path / "model"
    shutil.copytree(golden / "bases" / "b", model)
    first = model_fingerprint(model, tmp_path / "memo")
    (memo,) = (tmp_path / "memo" / "fingerprints").iterdir()
    assert memo.read_text().strip() == first
    memo.write_text("f" * 64 + "\n")  # what a later process finds there is taken as is
    selm.logps._FINGERPRINTS.clear()  # as in a new process
    assert model_fingerprint(model, tmp_path / "memo") == "f" * 64
    weights = model / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 1))
    assert model_fingerprint(model, tmp_path / "memo") == first  # the file set changed: hashed again
