"""The numerical mode (selm.determinism): portable by default, pinned before torch or numpy is imported."""

import os
import subprocess
import sys

import pytest

from selm import determinism

MODE_VARS = set(determinism.PORTABLE) | {"SELM_NUMERICS", "SELM_DETERMINISTIC", "MKL_ENABLE_INSTRUCTIONS"}


def clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in MODE_VARS}
    env.update(extra)
    return env


def test_portable_is_the_default_and_native_pins_nothing():
    env = {}
    assert determinism.apply(env) == "portable"
    assert env["ATEN_CPU_CAPABILITY"] == "avx2" and env["MKL_CBWR"] == "COMPATIBLE"
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == env["OPENBLAS_NUM_THREADS"] == "1"
    assert "AVX512F" in env["NPY_DISABLE_CPU_FEATURES"].split() and env["OPENBLAS_CORETYPE"] == "Haswell"
    env = {"SELM_NUMERICS": "native"}
    assert determinism.apply(env) == "native" and env == {"SELM_NUMERICS": "native"}


def test_bad_settings_are_errors_that_say_what_to_set():
    with pytest.raises(ValueError, match="needs OMP_NUM_THREADS=1, but the environment sets '4'"):
        determinism.apply({"OMP_NUM_THREADS": "4"})  # a contradiction is not overridden
    determinism.apply({"SELM_NUMERICS": "native", "OMP_NUM_THREADS": "4"})  # native leaves it to the user
    with pytest.raises(ValueError, match="expected one of portable, native"):
        determinism.apply({"SELM_NUMERICS": "fast"})
    with pytest.raises(ValueError, match="SELM_DETERMINISTIC is retired"):
        determinism.apply({"SELM_DETERMINISTIC": "1"})


def test_cpu_flags_are_read_from_cpuinfo():
    info = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n"
    assert determinism.cpu_flags(info) == {"fpu", "sse2", "avx", "avx2", "fma"}
    assert determinism.cpu_flags("no flags line") == set()


PROBE = ("import selm, torch, numpy\n"
         "from numpy._core._multiarray_umath import __cpu_features__ as f\n"
         "print(torch.backends.cpu.get_cpu_capability(), torch.get_num_threads(), f['AVX512F'])")


def test_importing_selm_pins_torch_and_numpy_before_they_load():
    """`import selm` first: ATen runs its AVX2 kernels, one thread, numpy without its AVX-512 loops.
    (This machine kind has AVX2; an AVX-512 CPU shows the pin, an AVX2-only one shows it holds.)"""
    out = subprocess.run([sys.executable, "-c", PROBE], env=clean_env(), capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["AVX2", "1", "False"]
    late = subprocess.run([sys.executable, "-W", "always", "-c", "import torch, selm"], env=clean_env(),
                          capture_output=True, text=True, check=True)
    assert "torch and numpy were imported before selm" in late.stderr


# 15 AdamW steps of a small Llama; prints the weights' sha256. `import selm` first applies the mode.
TRAIN_STEPS = """
import hashlib
import selm
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


def _weights(**env) -> str:
    out = subprocess.run([sys.executable, "-c", TRAIN_STEPS], env=clean_env(**env), capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip()


@pytest.mark.slow
def test_the_portable_mode_does_not_follow_the_vector_extensions_the_libraries_see():
    """A second check beside the recorded checksums (test_portability.py), on one machine: capping what
    MKL and oneDNN may use changes the weights natively (the probe sees code paths) and leaves them
    bit-identical in the portable mode, where MKL's branch and ATen's kernels are fixed."""
    native = dict(SELM_NUMERICS="native", OMP_NUM_THREADS="1")
    capped = dict(MKL_ENABLE_INSTRUCTIONS="SSE4_2", ONEDNN_MAX_CPU_ISA="SSE41")
    assert _weights(**native) != _weights(**native, **capped, ATEN_CPU_CAPABILITY="default")
    assert _weights() == _weights(MKL_ENABLE_INSTRUCTIONS="AVX2") == _weights(MKL_ENABLE_INSTRUCTIONS="SSE4_2")
