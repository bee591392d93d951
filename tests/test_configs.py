"""Hydra configs: the paper's hyperparameters (docs/paper.md section 2), bad keys, multirun over alpha."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.errors import ConfigCompositionException, MissingConfigException

from conftest import make_pairs, write_jsonl
from selm.config import compose_config
from selm.train import gradient_accumulation_steps, learning_rate_for

# docs/paper.md section 2, typed in by hand from the table.
PAPER = {
    "paper_zephyr": dict(
        model="HuggingFaceH4/mistral-7b-sft-beta", beta=0.01, alpha=0.001,
        lrs={0: 5e-7, 1: 5e-7, 2: 5e-7, 3: 1e-7}, global_batch=256, per_device=8, accum_on_8_gpus=4,
        offline_dpo=True,
    ),
    "paper_llama3": dict(
        model="meta-llama/Meta-Llama-3-8B-Instruct", beta=0.01, alpha=0.0001,
        lrs={1: 5e-7, 2: 3e-7, 3: 1e-7}, global_batch=128, per_device=4, accum_on_8_gpus=4,
        offline_dpo=False,
    ),
}


@pytest.mark.parametrize("experiment", sorted(PAPER))
def test_paper_hyperparameters(experiment):
    want = PAPER[experiment]
    cfg = compose_config("train", [f"preset={experiment}", "pairs=x"])
    t = cfg.train
    assert cfg.model.path == want["model"]
    assert cfg.model.offline_dpo_iteration is want["offline_dpo"]
    assert list(cfg.model.iterations) == [1, 2, 3]
    assert (t.beta, t.alpha) == (want["beta"], want["alpha"])
    for iteration, lr in want["lrs"].items():
        assert learning_rate_for(t, iteration) == lr
    if not want["offline_dpo"]:
        with pytest.raises(KeyError):
            learning_rate_for(t, 0)
    assert t.global_batch_size == want["global_batch"]
    assert t.per_device_batch_size == want["per_device"]
    assert gradient_accumulation_steps(t, world_size=8) == want["accum_on_8_gpus"]
    assert t.epochs == 1
    assert (t.lr_scheduler, t.warmup_ratio) == ("cosine", 0.1)
    assert (t.adam_beta1, t.adam_beta2, t.adam_epsilon, t.weight_decay) == (0.9, 0.999, 1e-8, 0.0)  # HF AdamW
    assert t.max_grad_norm == 1.0
    assert (t.max_length, t.max_prompt_length) == (1024, 512)
    assert t.seed == 42
    assert t.precision == "bf16" and t.gradient_checkpointing is True
    assert cfg.model.system_prompt is None
    assert cfg.scale.name == "paper"


def test_unknown_key_and_group_option_are_named():
    with pytest.raises(ConfigCompositionException, match="train.alpah"):
        compose_config("train", ["train.alpah=0.1"])
    with pytest.raises(MissingConfigException, match="tiny-rnadom"):
        compose_config("train", ["model=tiny-rnadom"])


def test_alpha_is_a_plain_value():
    assert compose_config("train", ["train.alpha=0.0005"]).train.alpha == 0.0005


@pytest.mark.slow
def test_hydra_multirun_over_alpha(tiny_model, tmp_path):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", make_pairs(8))
    env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="offline")
    cmd = [
        sys.executable, "-m", "selm.cli.train", "-m", "train.alpha=0,0.01",
        f"pairs={pairs}", f"init_checkpoint={tiny_model}", "logger=none",
        f"output_dir={tmp_path}/runs/alpha${{train.alpha}}", f"paths.ref_cache_dir={tmp_path}/cache",
        "train.global_batch_size=4", "train.per_device_batch_size=4",
        f"hydra.sweep.dir={tmp_path}/multirun",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for alpha in ("0", "0.01"):
        assert (Path(tmp_path) / "runs" / f"alpha{alpha}" / "model.safetensors").is_file()
    # DPO (alpha 0) drops y_ref, so its reference pass has two columns and its own cache entry; the
    # chosen / rejected reference log-probs are the same numbers in both
    from safetensors.torch import load_file

    cached = sorted((load_file(str(f))["ref_logps"] for f in (tmp_path / "cache").glob("*.safetensors")),
                    key=lambda t: t.shape[1])
    assert [tuple(t.shape) for t in cached] == [(8, 2), (8, 3)]
    assert torch.equal(cached[0], cached[1][:, :2])


def test_cli_error_names_the_missing_pairs(tiny_model, tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, "-m", "selm.cli.train", f"init_checkpoint={tiny_model}", f"pairs={tmp_path}/none.jsonl",
         f"output_dir={tmp_path}/o", "logger=none", f"hydra.run.dir={tmp_path}/h"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode != 0
    assert f"{tmp_path}/none.jsonl: no such file" in proc.stderr
