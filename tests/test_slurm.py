"""The grid on Slurm (selm.slurm, conf/hydra/launcher/, docs/cluster.md), against a real one-node
Slurm started on 127.0.0.1 for the session (tests/slurm_cluster.py): the experiment stage's runs as
Slurm jobs give the local pool's bytes, a failed job is named with its log, a job preempted or
requeued in the middle of iteration 2 resumes and ends with the same bytes, and a `selm-loop -m`
sweep through hydra/launcher=slurm_cpu gives the runs of the same sweep made without Slurm.

Without Slurm and without a way to install it (no apt-get, not root) the cluster tests skip with the
reason; with SELM_REQUIRE_SLURM=1 (CI) they fail instead. Every wait polls a state with a generous
deadline; nothing asserts a duration.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import slurm_cluster
from conftest import run_experiment_in
from selm.slurm import STEP_MARK, accelerate_command, executor_name, hostnames, job_settings, step_command

ROOT = Path(__file__).resolve().parents[1]
DEADLINE = 600  # seconds any single wait may take on a loaded machine before the test fails


# --- without a cluster ----------------------------------------------------------------------------

MULTINODE = yaml.safe_load((ROOT / "conf" / "accelerate" / "zero3_multinode.yaml").read_text())


def test_each_node_launches_accelerate_with_its_rank_and_the_first_node_as_main():
    env = {"SLURM_NNODES": "2", "SLURM_NODEID": "1", "SLURM_JOB_NODELIST": "gpu[07-08]"}
    argv = ["--config_file", "conf/accelerate/zero3_multinode.yaml", "-m", "selm.train", "--config", "run/iter1/t.yaml"]
    assert accelerate_command(argv, env, ["gpu07", "gpu08"], MULTINODE) == [
        "accelerate", "launch", "--config_file", "conf/accelerate/zero3_multinode.yaml", "--num_machines", "2",
        "--num_processes", "16", "--machine_rank", "1", "--main_process_ip", "gpu07",
        "-m", "selm.train", "--config", "run/iter1/t.yaml"]
    # a job of 3 nodes keeps the config's 8 processes per node
    three = {**env, "SLURM_NNODES": "3", "SLURM_NODEID": "0"}
    command = accelerate_command(argv, three, ["a", "b", "c"], MULTINODE)
    assert command[command.index("--num_processes") + 1] == "24" and command[command.index("--machine_rank") + 1] == "0"
    # the job's first process runs one task per node, each this launcher again
    assert step_command(argv, env, "/venv/bin/python") == [
        "srun", "--overlap", "--nodes=2", "--ntasks=2", "--ntasks-per-node=1", "--kill-on-bad-exit=1",
        f"--export=ALL,{STEP_MARK}=1", "/venv/bin/python", "-m", "selm.slurm", *argv]


@pytest.mark.parametrize("env, hosts, message", [
    ({"SLURM_NNODES": "2"}, ["a", "b"], "SLURM_NODEID is not set: multi-node training runs inside a Slurm job"),
    ({"SLURM_NNODES": "2", "SLURM_NODEID": "x"}, ["a", "b"], "SLURM_NODEID='x' is not an integer"),
    ({"SLURM_NNODES": "2", "SLURM_NODEID": "0"}, ["a"], r"names 1 hosts \(\['a'\]\) but SLURM_NNODES=2"),
    ({"SLURM_NNODES": "2", "SLURM_NODEID": "2"}, ["a", "b"], "SLURM_NODEID=2 is not a node of SLURM_NNODES=2"),
])
def test_a_wrong_slurm_environment_is_named(env, hosts, message):
    with pytest.raises((KeyError, ValueError), match=message):
        accelerate_command(["--config_file", "x.yaml"], env, hosts, MULTINODE)


def test_the_spec_chooses_the_executor_and_names_a_wrong_setting():
    assert executor_name({}, "spec.yaml") == "local"
    assert executor_name({"executor": "slurm"}, "spec.yaml") == "slurm"
    with pytest.raises(ValueError, match=r"spec.yaml: executor='slurmm' is not one of \['local', 'slurm'\]"):
        executor_name({"executor": "slurmm"}, "spec.yaml")
    with pytest.raises(KeyError, match=r"spec.yaml: slurm.gpus is not a job setting"):
        job_settings({"slurm": {"gpus": 8}}, "spec.yaml")
    spec = yaml.safe_load((ROOT / "experiments" / "paper.yaml").read_text())
    assert executor_name(spec, "paper.yaml") == "local"  # the default stays this machine
    assert job_settings(spec, "paper.yaml")["gpus_per_node"] == 8  # a run's job is the paper's node


def test_the_launcher_configs_set_a_jobs_resources_from_the_command_line():
    from hydra import compose, initialize_config_dir

    from selm.config import CONF_DIR

    def launcher(*overrides):
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose("loop", list(overrides), return_hydra_config=True).hydra.launcher

    paper = launcher("hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.account=proj")
    assert (paper.gpus_per_node, paper.partition, paper.account, paper.nodes) == (8, "gpu", "proj", 1)
    assert paper._target_.endswith("SlurmLauncher") and paper.additional_parameters.requeue is True
    cpu = launcher("hydra/launcher=slurm_cpu", "hydra.launcher.mem_gb=4")
    assert (cpu.gpus_per_node, cpu.cpus_per_task, cpu.mem_gb) == (None, 1, 4)


# --- the cluster ----------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """A one-node Slurm for the session (SLURM_CONF set for this process and its children)."""
    reason = slurm_cluster.install()
    if reason:
        if os.environ.get("SELM_REQUIRE_SLURM") == "1":
            pytest.fail(f"SELM_REQUIRE_SLURM=1, but no Slurm can run here: {reason}")
        pytest.skip(reason)
    cluster = slurm_cluster.start(tmp_path_factory.mktemp("slurm"))
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(cluster.conf)
    try:
        yield cluster
    finally:
        cluster.stop()
        if old is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old


def wait_for(what: str, condition, deadline: float = DEADLINE, every: float = 0.1):
    end = time.monotonic() + deadline
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > end:
            pytest.fail(f"waited {deadline} s for {what}")
        time.sleep(every)


def test_slurm_expands_a_node_list(slurm):
    assert hostnames("gpu[07-08],cpu1") == ["gpu07", "gpu08", "cpu1"]


@pytest.fixture(scope="module")
def mini(tmp_path_factory, tiny_model):
    """A tiny world, params.yaml and spec: 1 cell x 2 alphas x 1 seed, 2 iterations of 8 pairs."""
    from selm.world.build import build_world

    root = tmp_path_factory.mktemp("mini")
    world = root / "world"
    build_world(world, seed=0, n_sft=10, n_train_prefs=16, n_test_prefs=4, n_eval=4, n_mt_bench=2, n_lmeval=4)
    params = {
        "train": {"global_batch_size": 4, "per_device_batch_size": 4},
        "data": {"train_prefs": str(world / "train_prefs.jsonl"), "test_prefs": str(world / "test_prefs.jsonl"),
                 "slice_size": 8},
        "eval": {"n_prompts": 4, "coverage_samples": 0},
        "scale": {"max_new_tokens": 6},
        "paths": {"ref_cache_dir": "cache", "shared_runs": "shared"},
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    cell = {"model": "tiny-sft", "model.path": str(tiny_model), "model.offline_dpo_iteration": False,
            "model.iterations": [1, 2], "logger.wandb": False}
    spec = {"seeds": [1], "experiments": {"e": {"eval": [], "alphas": [0.0, 0.5], "cells": {"c": cell}}},
            "slurm": {"cpus_per_task": 1, "timeout_min": 30, "poll_s": 0.5, "signal_delay_s": 30}}
    (root / "local.yaml").write_text(yaml.safe_dump({**spec, "workers": 1}))
    (root / "slurm.yaml").write_text(yaml.safe_dump({**spec, "executor": "slurm"}))
    return root


def files(root: Path, runs: str = "runs/e") -> dict[str, object]:
    """Every file of the runs under `root`, by path: its bytes, except the wall-clock times of a
    checkpoint's train_metrics.json (its other keys are compared)."""
    found = {}
    for path in sorted((root / runs).rglob("*")):
        if path.is_file() and path.name == "train_metrics.json":
            found[str(path.relative_to(root))] = {k: v for k, v in json.loads(path.read_text()).items()
                                                  if not k.endswith("seconds")}
        elif path.is_file():
            found[str(path.relative_to(root))] = path.read_bytes()
    return found


@pytest.fixture(scope="module")
def local(mini, tmp_path_factory):
    """The mini experiment through the local pool: every file of its runs."""
    cwd = run_experiment_in(tmp_path_factory.mktemp("local"), mini / "local.yaml", mini / "params.yaml")
    found = files(cwd)
    assert len([p for p in found if p.endswith("model.safetensors")]) == 4  # 2 runs x 2 iterations
    return found


@pytest.mark.slow
def test_the_experiment_through_slurm_is_the_local_pools_and_a_failed_job_names_itself(slurm, mini, local, tmp_path):
    """Each run its own Slurm job: the same files as the local pool, byte for byte; a run whose job
    fails fails the stage with the job's id and the tail of its log, and the other runs finish."""
    from selm.experiments import run_experiments

    spec = yaml.safe_load((mini / "slurm.yaml").read_text())
    cells = spec["experiments"]["e"]["cells"]
    cells["bad"] = {**cells["c"], "data.slice_size": 1000}  # fails inside the job, at iteration 1
    spec["experiments"]["e"]["cells"]["bad"]["alphas"] = [0.0]
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    old = os.getcwd()
    os.chdir(tmp_path)
    try:
        with pytest.raises(RuntimeError) as failed:
            run_experiments(["e"], tmp_path / "spec.yaml", mini / "params.yaml")
        manifest = json.loads((tmp_path / "evals" / "e" / "experiment.json").read_text())
    finally:
        os.chdir(old)
    message = str(failed.value)
    assert message.startswith("1 of 3 runs of experiment 'e' failed:\n--- e/bad/alpha0.0/seed1\nSlurm job ")
    job_id = message.split("Slurm job ")[1].split()[0]
    assert f"Slurm job {job_id} failed (FAILED):" in message  # its id and Slurm's state
    log = tmp_path / "runs" / ".slurm" / job_id / f"{job_id}_0_log.err"
    assert "--- last " in message and str(log) in message  # the log's tail, under its path
    assert "slice 0 needs rows 0..999 but there are only 16" in message  # the job's own error, from its log
    assert {r["run"]: r["ok"] for r in manifest["runs"]} == {
        "e/bad/alpha0.0/seed1": False, "e/c/alpha0.0/seed1": True, "e/c/alpha0.5/seed1": True}
    assert {k: v for k, v in files(tmp_path).items() if not k.startswith("runs/e/bad/")} == local


def job_field(job_id: str, key: str) -> str | None:
    """One field of `scontrol show job` (JobState, Restarts, ...)."""
    out = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True, check=False).stdout
    for word in out.split():
        if word.startswith(f"{key}="):
            return word.split("=", 1)[1]
    return None


GATE = f"{sys.executable} {ROOT / 'tests' / 'slurm_gate.py'}"  # holds iteration 2 while SELM_TEST_GATE is closed


@pytest.fixture(scope="module")
def gated(mini, tmp_path_factory):
    """One run (alpha 0.5) whose training goes through tests/slurm_gate.py, and its files made by the
    local pool with the gate never closed."""
    spec = yaml.safe_load((mini / "local.yaml").read_text())
    spec["experiments"]["e"]["alphas"] = [0.5]
    spec["experiments"]["e"]["cells"]["c"]["train.launcher"] = GATE
    (mini / "gated_local.yaml").write_text(yaml.safe_dump(spec))
    (mini / "gated_slurm.yaml").write_text(yaml.safe_dump({**spec, "executor": "slurm"}))
    return files(run_experiment_in(tmp_path_factory.mktemp("gated_local"), mini / "gated_local.yaml", mini / "params.yaml"))


@pytest.mark.slow
def test_a_job_preempted_then_requeued_in_iteration_2_resumes_and_ends_identical(slurm, mini, gated, tmp_path):
    """The stage as DVC runs it, with executor: slurm, one run. In iteration 2 (after y_ref, pairs
    and the reference log-probs, before training) its job first gets Slurm's preemption signal
    (SIGUSR2, also sent before the time limit: submitit checkpoints and requeues the job), then,
    restarted and in iteration 2 again, is requeued by hand (`scontrol requeue`: killed and queued
    again). Each restart keeps iteration 1; the run ends with the uninterrupted run's bytes."""
    gate = tmp_path / "gate"
    gate.mkdir()
    env = {**os.environ, "SELM_TEST_GATE": str(gate),
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    stage = subprocess.Popen([sys.executable, "-m", "selm.cli.stage", "--params", str(mini / "params.yaml"),
                              "experiment", "e", "--spec", str(mini / "gated_slurm.yaml")],
                             cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    run = tmp_path / "runs" / "e" / "c" / "alpha0.5" / "seed1"
    try:
        jobs = tmp_path / "runs" / ".slurm"
        # the job's folder is named by its id; submitit's pickles beside it have hex names that may start with a digit
        job_id = wait_for("the run's job", lambda: next((p.name for p in jobs.iterdir() if p.is_dir() and p.name.isdigit()), None)
                          if jobs.is_dir() else None)
        iteration1 = None
        for restarts, interrupt in enumerate([["scancel", "--signal=USR2", job_id], ["scontrol", "requeue", job_id]]):
            waiting = wait_for("iteration 2 at the gate", lambda: list(gate.glob("waiting.*")) or stage.poll() is not None)
            assert stage.poll() is None, "the stage ended before its job reached iteration 2"
            assert job_field(job_id, "Restarts") == str(restarts)
            inode = (run / "iter1" / "model" / "model.safetensors").stat().st_ino
            assert iteration1 in (None, inode), "iteration 1 was trained again after the restart"
            iteration1 = inode
            for marker in waiting:
                marker.unlink()
            subprocess.run(interrupt, check=True, capture_output=True)
            wait_for(f"job {job_id} requeued", lambda: job_field(job_id, "Restarts") == str(restarts + 1) and
                     job_field(job_id, "JobState") == "PENDING")
            # Slurm holds a requeued job ~2 minutes (its BeginTime); let it start now
            subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=True, capture_output=True)
        wait_for("iteration 2 at the gate", lambda: list(gate.glob("waiting.*")) or stage.poll() is not None)
        assert (run / "iter1" / "model" / "model.safetensors").stat().st_ino == iteration1
        (gate / "open").write_text("")
        out, _ = stage.communicate(timeout=DEADLINE)
    finally:
        if stage.poll() is None:
            stage.kill()
    assert stage.returncode == 0, out
    assert job_field(job_id, "Restarts") == "2"
    logs = "".join(p.read_text() for p in (tmp_path / "runs" / ".slurm" / job_id).glob("*_log.*"))
    assert "this job is preempted" in logs and f"Requeued job {job_id}" in logs  # submitit's checkpoint and requeue
    assert files(tmp_path) == gated


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, tiny_model):
    """`selm-loop -m train.alpha=0,0.1` on a tiny world: the arguments, and the files of its runs
    made without Slurm (Hydra's basic launcher, one process)."""
    from selm.world.build import build_world

    root = tmp_path_factory.mktemp("sweep")
    build_world(root / "world", seed=0, n_sft=10, n_train_prefs=8, n_test_prefs=4, n_eval=4, n_mt_bench=2, n_lmeval=4)
    args = ["model=tiny-sft", f"model.path={tiny_model}", f"data.train_prefs={root / 'world/train_prefs.jsonl'}",
            f"data.test_prefs={root / 'world/test_prefs.jsonl'}", "data.slice_size=4", "eval.n_prompts=2",
            "eval.coverage_samples=0", "logger=none", "paths.ref_cache_dir=cache", "train.global_batch_size=4",
            "train.per_device_batch_size=4", "scale.max_new_tokens=4", "model.offline_dpo_iteration=false",
            "model.iterations=[1]", "train.alpha=0,0.1"]
    basic = root / "basic"
    basic.mkdir()
    loop(basic, args)
    found = files(basic, "runs/adhoc")
    assert {p.split("/")[4] for p in found} == {"alpha0", "alpha0.1"}  # runs/adhoc/tiny-sft/iterative/alpha<value>
    return args, found


def loop(cwd: Path, args: list[str]) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "selm.cli.loop", "-m", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, check=False, timeout=DEADLINE)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


@pytest.mark.slow
def test_a_sweep_through_slurm_gives_the_runs_made_without_it(slurm, sweep, tmp_path):
    args, basic = sweep
    out = loop(tmp_path, ["hydra/launcher=slurm_cpu", *args])
    assert files(tmp_path, "runs/adhoc") == basic
    logs = list(tmp_path.glob("multirun/loop/*/.submitit/*/*_log.out"))
    assert len(logs) == 2, out  # one Slurm job per alpha


@pytest.mark.slow
def test_a_sweep_through_submitit_local_gives_the_same_runs(sweep, tmp_path):
    """The local launcher (no Slurm needed): one process per value, the same bytes."""
    args, basic = sweep
    loop(tmp_path, ["hydra/launcher=submitit_local", *args])
    assert files(tmp_path, "runs/adhoc") == basic
