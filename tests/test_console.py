"""The stages' console (selm.console): one progress bar of real work and a summary line, no library
bars or info logs, full errors, and everything back with SELM_VERBOSE=1."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
LIBRARY_NOISE = ("Loading weights", "Writing model shards")


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "SELM_VERBOSE"}
    return {**env, "PYTHONPATH": str(ROOT / "src"), **extra}


def _python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], env=_env(**env), capture_output=True, text=True, timeout=120)


BARS = """
from selm import console
console.setup()
from tqdm import tqdm
from tqdm.auto import tqdm as auto_tqdm
for _ in tqdm(range(3), desc="library-bar"): pass
for _ in auto_tqdm(range(3), desc="auto-bar", disable=False): pass
with console.progress(5, "outer", "runs") as bar:
    for item in console.track(range(2), "inner", "iterations"):
        pass
    bar.update(5)
import logging
logging.getLogger("transformers.modeling_utils").info("library-info")
logging.getLogger("transformers.modeling_utils").warning("library-warning")
"""


def test_library_bars_are_off_and_the_stage_bar_is_drawn():
    quiet = _python(BARS)
    assert quiet.returncode == 0, quiet.stderr
    assert "library-bar" not in quiet.stderr and "auto-bar" not in quiet.stderr
    assert "inner" not in quiet.stderr  # only the outermost bar of a process draws
    assert re.search(r"outer: 5/5 runs \|#+\| \d\d:\d\d elapsed, 00:00 left", quiet.stderr), quiet.stderr
    assert "library-warning" in quiet.stderr and "library-info" not in quiet.stderr
    loud = _python(BARS + "logging.basicConfig(level=logging.INFO)\n"
                   "logging.getLogger('transformers.modeling_utils').info('library-info')\n", SELM_VERBOSE="1")
    assert loud.returncode == 0, loud.stderr
    assert "library-bar" in loud.stderr and "auto-bar" in loud.stderr and "library-info" in loud.stderr


def test_an_import_time_print_is_silenced_only_in_quiet_mode(tmp_path):
    (tmp_path / "chatty.py").write_text("print('[INFO] imported')\nVALUE = 3\n")
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from selm import console; "
            "console.PRINTS_ON_IMPORT.add('chatty'); console.setup(); import chatty; print('value', chatty.VALUE)")
    quiet = subprocess.run([sys.executable, "-c", code, str(tmp_path)], env=_env(), capture_output=True, text=True)
    assert quiet.stdout == "value 3\n", quiet.stderr
    loud = subprocess.run([sys.executable, "-c", code, str(tmp_path)], env=_env(SELM_VERBOSE="1"),
                          capture_output=True, text=True)
    assert loud.stdout == "[INFO] imported\nvalue 3\n", loud.stderr


def test_duration_reads_like_a_clock():
    from selm.console import duration

    assert [duration(s) for s in (4.4, 65, 3599.6, 3725)] == ["4 s", "1 min 05 s", "1 h 00 min", "1 h 02 min"]


@pytest.mark.slow
def test_experiment_stage_console(tiny_model, tmp_path):
    """A real experiment stage (two worker processes: one good run, one asking for more data than there is):
    no transformers bars, the runs bar and summary with the right total, the failure's full
    traceback; with SELM_VERBOSE=1 the library bars are back."""
    from selm.world.build import build_world

    world = tmp_path / "world"
    build_world(world, seed=0, n_sft=10, n_train_prefs=8, n_test_prefs=4, n_eval=4, n_mt_bench=2, n_lmeval=4)
    params = {"train": {"global_batch_size": 4, "per_device_batch_size": 4},
              "data": {"train_prefs": str(world / "train_prefs.jsonl"), "test_prefs": str(world / "test_prefs.jsonl"),
                       "slice_size": 8},
              "eval": {"n_prompts": 2, "coverage_samples": 0}, "scale": {"max_new_tokens": 4},
              "paths": {"ref_cache_dir": str(tmp_path / "cache"), "shared_runs": str(tmp_path / "shared")}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    good = {"model": "tiny-sft", "model.path": str(tiny_model), "model.offline_dpo_iteration": False,
            "model.iterations": [1], "logger.wandb": False}
    bad = {**good, "data.slice_size": 100}  # more rows than train_prefs has: fails inside its run
    spec = {"seeds": [1], "workers": 2, "experiments": {"e": {"eval": [], "alphas": [0.5],
                                                              "cells": {"good": good, "bad": bad}}}}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    cmd = [sys.executable, "-m", "selm.cli.stage", "--params", str(tmp_path / "params.yaml"), "experiment", "e",
           "--spec", str(tmp_path / "spec.yaml")]

    def run(folder: str, *args: str, **env) -> subprocess.CompletedProcess:
        (tmp_path / folder).mkdir()
        return subprocess.run([*cmd, *args], cwd=tmp_path / folder, env=_env(**env), capture_output=True, text=True,
                              timeout=600)

    quiet = run("quiet")
    console = quiet.stdout + quiet.stderr
    assert quiet.returncode != 0  # the bad run fails the stage
    assert not [n for n in LIBRARY_NOISE if n in console], console
    assert re.search(r"experiment e: 2/2 runs \|#+\| \d\d:\d\d elapsed", quiet.stderr), quiet.stderr
    assert re.search(r"^experiment e: 1/2 runs done, 1 failed in \d+ (s|min \d\d s)$", quiet.stdout, re.M), quiet.stdout
    assert "failed: e/bad/alpha0.5/seed1 (traceback when the stage ends)" in quiet.stderr  # named at once
    assert "Traceback (most recent call last)" in quiet.stderr
    assert re.search(r"DataError: \S*train_prefs.jsonl: slice 0 needs rows 0..99 but there are only 8", quiet.stderr)
    assert (tmp_path / "quiet" / "runs" / "e" / "good" / "alpha0.5" / "seed1" / "summary.json").is_file()

    loud = run("verbose", "--workers", "1", SELM_VERBOSE="1")  # in-process: the library bars come back here too
    assert "Loading weights" in loud.stderr, loud.stderr
    assert re.search(r"^experiment e: 1/2 runs done, 1 failed", loud.stdout, re.M)


@pytest.mark.parametrize("pipeline", ["dvc.yaml", "scales/evalcheck/dvc.yaml"])
def test_no_stage_depends_on_an_empty_file(pipeline):
    """DVC prints "WARNING: '<file>' is empty." for each empty dependency at every stage it checks
    (33 lines of a `make repro` console for two empty __init__.py files)."""
    from dvc.repo import Repo

    empty = sorted({str(Path(d.fs_path).relative_to(ROOT)) for stage in Repo(str(ROOT)).stage.collect(pipeline)
                    for d in stage.deps if Path(d.fs_path).is_file() and Path(d.fs_path).stat().st_size == 0})
    assert empty == []


def test_a_silenced_library_bar_still_counts_and_times():
    """Quiet mode sends a library's bar to os.devnull but leaves it live: libraries read its counts and
    elapsed time back (vLLM divides its token counts by the elapsed time; a disabled bar says 0).
    `file` given by position is replaced too; a bar its library disables stays disabled."""
    code = """
from selm import console
console.setup()
import time
from tqdm import tqdm
bar = tqdm(total=3, desc="library-bar")
time.sleep(0.01)
bar.update(2)
print("live", bar.n, bar.format_dict["elapsed"] > 0, bar.disable, getattr(bar.fp, "_wrapped", bar.fp).name)
bar.close()
import sys
positional = tqdm(range(2), "positional-bar", 2, True, sys.stderr)
print("positional", list(positional), getattr(positional.fp, "_wrapped", positional.fp).name)
print("disabled", tqdm(total=2, disable=True).disable)
"""
    quiet = _python(code)
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stdout.splitlines() == [f"live 2 True False {os.devnull}",
                                            f"positional [0, 1] {os.devnull}", "disabled True"]
    assert "library-bar" not in quiet.stderr and "positional-bar" not in quiet.stderr
