"""The deterministic mode pins the numerical settings before torch is imported."""

import os
import subprocess
import sys

import pytest

from selm import determinism


def test_apply_sets_the_pins_only_when_asked():
    env = {}
    assert determinism.apply(env) is False and env == {}
    env = {"SELM_DETERMINISTIC": "1"}
    assert determinism.apply(env) is True
    assert env["ATEN_CPU_CAPABILITY"] == "default" and env["MKL_CBWR"] == "COMPATIBLE" and env["OMP_NUM_THREADS"] == "1"
    with pytest.raises(ValueError, match="needs OMP_NUM_THREADS=1, but the environment sets '4'"):
        determinism.apply({"SELM_DETERMINISTIC": "1", "OMP_NUM_THREADS": "4"})  # a contradiction is not overridden
    with pytest.raises(ValueError, match="expected 0 or 1"):
        determinism.apply({"SELM_DETERMINISTIC": "yes"})


def test_entry_points_apply_it_before_torch():
    env = {**os.environ, "SELM_DETERMINISTIC": "1"}
    for key in determinism.SETTINGS:
        env.pop(key, None)
    code = "import selm.cli, torch; print(torch.backends.cpu.get_cpu_capability(), torch.get_num_threads())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["DEFAULT", "1"]


# A stand-in for "another CPU model": the ISA each library may use, capped below what this CPU has.
# ATEN_CPU_CAPABILITY caps ATen's kernels, MKL_ENABLE_INSTRUCTIONS MKL's, ONEDNN_MAX_CPU_ISA oneDNN's.
TRAIN_STEPS = """
import hashlib, sys
import selm.cli  # applies SELM_DETERMINISTIC before torch is imported
import torch
from transformers import LlamaConfig, LlamaForCausalLM
torch.manual_seed(0)
model = LlamaForCausalLM(LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64))
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
for step in range(15):
    ids = torch.randint(0, 96, (8, 48), generator=torch.Generator().manual_seed(step))
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward(); opt.step(); opt.zero_grad()
print(hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in model.parameters())).hexdigest())
"""
CAPPED = {"ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2", "ONEDNN_MAX_CPU_ISA": "SSE41"}


def _weights_after_training(deterministic: bool, capped: bool) -> str:
    env = {k: v for k, v in os.environ.items()
           if k not in set(determinism.SETTINGS) | set(CAPPED) | {"SELM_DETERMINISTIC"}}
    env["SELM_DETERMINISTIC"] = "1" if deterministic else "0"
    if not deterministic:
        env["OMP_NUM_THREADS"] = "1"  # one thread in both: only the vector code paths differ
    if capped:
        env.update(CAPPED if not deterministic else {"MKL_ENABLE_INSTRUCTIONS": "SSE4_2"})
    out = subprocess.run([sys.executable, "-c", TRAIN_STEPS], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip()


def test_deterministic_mode_gives_the_same_bits_on_a_cpu_with_fewer_vector_extensions():
    """15 AdamW steps of a small Llama: by default, capping the libraries' ISA (as a CPU without AVX2
    would) changes the weights' bits; in deterministic mode the capped and uncapped runs are identical.
    This emulates CPUs with fewer extensions than this one; a CPU with more (AVX-512) is not tested."""
    assert _weights_after_training(False, False) != _weights_after_training(False, True)
    assert _weights_after_training(True, False) == _weights_after_training(True, True)
