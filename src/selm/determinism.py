"""Deterministic mode: the numerical settings under which the toy pipeline's floating point does
not depend on the CPU's vector extensions or the thread count.

Set `SELM_DETERMINISTIC=1` in the environment (e.g. `SELM_DETERMINISTIC=1 dvc repro scales/toy/dvc.yaml`). The
stage entry points (the `selm.cli` package) then, before torch is imported, pin:

- ATEN_CPU_CAPABILITY=default: ATen's own kernels use their portable code path, not the AVX2/AVX-512
  one chosen by the CPU it runs on;
- MKL_CBWR=COMPATIBLE: MKL's conditional numerical reproducibility, the same code path on every
  x86-64 CPU (MKL does the BLAS of the CPU torch wheel);
- ONEDNN_MAX_CPU_ISA=SSE41: the same cap for oneDNN's kernels;
- one thread (OMP_NUM_THREADS / MKL_NUM_THREADS=1; torch starts with one): reductions sum in one order.

Worker processes inherit the environment. (`python -m selm.sft` and other modules run outside
`selm.cli` do not apply it: set the variables above yourself there.)

What it can and cannot guarantee. Measured on one 2-core AMD EPYC (AVX2), 40 SFT steps of the toy
tiny-sft stage: the same settings twice give bit-identical weights; 1 vs 2 threads give identical
weights by default, but ATen's AVX2 vs default kernels, and MKL with vs without MKL_CBWR, each give
different bits (max |weight difference| 2.4e-7 after 40 steps, which the full SFT grows into a
different base). So a CPU with another vector width (AVX-512) takes another code path by default;
the mode pins ATen's and MKL's paths to ones every x86-64 CPU has, which removes that source.
Tested (tests/test_determinism.py) by emulating a CPU with fewer extensions: capping ATen, MKL and
oneDNN below AVX2 changes the weights of 15 training steps by default and leaves them bit-identical in
this mode. A CPU with more extensions (AVX-512) or another CPU model was not available. It cannot cover another
torch/MKL build, another OS libm, or another architecture (ARM). Cost: ~2x CPU per SFT step
(45-50 ms at one AVX2 thread vs 94-115 ms in this mode).
"""

from __future__ import annotations

import os
import sys

ENV_FLAG = "SELM_DETERMINISTIC"
SETTINGS = {
    "ATEN_CPU_CAPABILITY": "default",
    "MKL_CBWR": "COMPATIBLE",
    "ONEDNN_MAX_CPU_ISA": "SSE41",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}


def enabled(environ=os.environ) -> bool:
    value = environ.get(ENV_FLAG, "")
    if value not in ("", "0", "1"):
        raise ValueError(f"{ENV_FLAG}={value!r}: expected 0 or 1")
    return value == "1"


def apply(environ=os.environ) -> bool:
    """Pin the settings in `environ` when SELM_DETERMINISTIC=1; must run before torch is imported
    (an import after it would be too late for ATen and MKL, so that is refused). Returns whether on."""
    if not enabled(environ):
        return False
    if "torch" in sys.modules and environ is os.environ:
        raise RuntimeError(f"{ENV_FLAG}=1 must be applied before torch is imported")
    for key, value in SETTINGS.items():
        if environ.get(key, value) != value:
            raise ValueError(f"{ENV_FLAG}=1 needs {key}={value}, but the environment sets {environ[key]!r}")
        environ[key] = value
    return True
