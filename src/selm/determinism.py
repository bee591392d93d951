"""Deterministic mode: the numerical settings under which the toy pipeline's floating point does
not depend on the CPU's vector extensions or the thread count.

Set `SELM_DETERMINISTIC=1` in the environment (e.g. `SELM_DETERMINISTIC=1 dvc repro dvc.yaml`). The
stage entry points (the `selm.cli` package) then, before torch is imported, pin:

- ATEN_CPU_CAPABILITY=default: ATen's own kernels use their portable code path, not the AVX2/AVX-512
  one chosen by the CPU it runs on;
- MKL_CBWR=COMPATIBLE: MKL's conditional numerical reproducibility, the same code path on every
  x86-64 CPU (MKL does the BLAS of the CPU torch wheel);
- ONEDNN_MAX_CPU_ISA=SSE41: the same cap for oneDNN's kernels;
- one thread (OMP_NUM_THREADS / MKL_NUM_THREADS=1; torch starts with one): reductions sum in one order.

Worker processes inherit the environment. (`python -m selm.sft` and other modules run outside
`selm.cli` do not apply it: set the variables above yourself there.)

What it can and cannot guarantee: it removes the differences that come from the code path (vector
width, FMA use, blocking by thread count) on x86-64 CPUs running the same pinned wheels, and the
measurements in the README say how far that was checked. It cannot cover another torch/MKL build,
another OS libm, or another architecture (ARM), and it is slower (one thread, no AVX kernels).
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
