"""Shared fixtures. Everything is local: no hub, no W&B service, no network."""

import json
import os
import random
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

from selm.config import compose_config  # noqa: E402
from selm.tiny import build_tiny_model  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A randomly initialised tiny Llama + char tokenizer, built once per test session."""
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny", size="113k", seed=0)


def venv_env(**extra) -> dict:
    """This environment plus `extra`, with the running interpreter's bin folder first on PATH: where a
    stage command's `python`, `accelerate` and `dvc` are found, as under make (which puts .venv/bin first)."""
    env = {**os.environ, **extra}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return env


def run_experiment_in(cwd: Path, spec: Path, params: Path, **kwargs) -> Path:
    """selm.experiments.run_experiment of experiment `e` from `cwd` (a stage runs from the repository
    root, so its runs land under cwd); returns cwd."""
    from selm.experiments import run_experiment

    old = os.getcwd()
    os.chdir(cwd)
    try:
        run_experiment("e", spec, params, **kwargs)
    finally:
        os.chdir(old)
    return cwd


def vary_weights(model):
    """A copy of `model` with every non-norm weight drawn at std 0.3 (seed 0): freshly initialised (std
    0.02) a tiny model answers every prompt with the same token, which would hide a padding or ordering bug."""
    import copy

    import torch

    model = copy.deepcopy(model)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" not in name:
                param.normal_(0.0, 0.3)
    return model


def make_pairs(n: int, seed: int = 0, with_response: bool = True) -> list[dict]:
    """Reverse-a-string pairs: chosen is right, rejected copies the input, y_ref is half right."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        word = "".join(rng.choice("abcdefgh") for _ in range(rng.randint(3, 8)))
        row = {"prompt": f"reverse: {word}", "chosen": word[::-1], "rejected": word, "prompt_id": f"p{i}"}
        if with_response:
            row["response"] = word[::-1][: len(word) // 2] + "x"
        rows.append(row)
    return rows


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture
def pairs_file(tmp_path):
    return write_jsonl(tmp_path / "pairs.jsonl", make_pairs(16))


def train_cfg(tiny_model, pairs, tmp_path, *overrides):
    """A composed `selm-train` config shrunk to the tiny model, with outputs under tmp_path."""
    return compose_config(
        "train",
        [
            f"init_checkpoint={tiny_model}",
            f"pairs={pairs}",
            f"output_dir={tmp_path}/out",
            f"paths.ref_cache_dir={tmp_path}/cache",
            "logger=none",
            "train.global_batch_size=4",
            "train.per_device_batch_size=4",
            "train.learning_rates.1=1e-3",
            *overrides,
        ],
    )


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models and ops: one torch thread is faster, and steady on a shared machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_terminal_summary(terminalreporter):
    """Facts a passing test recorded for the log (record_property "portable_bytes": on which CPU the
    recorded bytes were reproduced), printed at the end of the run, also from xdist workers."""
    for report in terminalreporter.stats.get("passed", []):
        for name, value in getattr(report, "user_properties", []):
            if name == "portable_bytes":
                terminalreporter.write_line(f"portable bytes: {value}")
