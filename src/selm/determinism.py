"""The numerical mode: which code paths the numerical libraries may take on this CPU.

The same code, data and config give the same bytes on any x86-64 CPU with AVX2 and FMA (Intel or AMD,
with or without AVX-512 or AMX) only if every library computes along the same path on each of them.
By default they do not: each picks kernels for the CPU it finds (ATen and numpy take AVX-512 where it
exists, MKL takes a vendor-specific path, OpenBLAS one per core type), and thread counts that follow
the number of cores change the order of reductions. `SELM_NUMERICS` chooses:

- `portable` (the default): the paths below, pinned in the environment before torch or numpy is
  imported. Importing `selm` applies it, so every `python -m selm...` stage and its worker processes
  run in it;
- `native`: nothing pinned, each library's fastest path on this CPU (same bytes only on the same CPU
  model and core count).

What `portable` pins, and why each is needed:

- ATEN_CPU_CAPABILITY=avx2: ATen's vectorised kernels (elementwise math, softmax, norms, reductions,
  random normal init) use their AVX2 build on every CPU; AVX-512 kernels sum in another order;
- MKL_CBWR=COMPATIBLE: MKL (the BLAS of torch's CPU wheel) in conditional numerical reproducibility
  mode on the one branch its documentation guarantees on Intel and non-Intel CPUs alike (the AVX2
  branch is honoured on Intel only; AMD then silently gets the automatic, vendor-specific path);
- ONEDNN_MAX_CPU_ISA=AVX2: the same cap for oneDNN's kernels;
- NPY_DISABLE_CPU_FEATURES (numpy's AVX-512 targets) and OPENBLAS_CORETYPE=Haswell: numpy's own
  SIMD loops and its OpenBLAS (and scipy's) take their AVX2 kernels, as on an AVX2-only CPU;
- OMP_NUM_THREADS, MKL_NUM_THREADS, OPENBLAS_NUM_THREADS = 1: one thread per process, so no
  reduction is split by the number of cores (the stages already run one process per core).

Cost, measured side by side on one machine: docs/performance.md ("Numerical modes"). Not covered:
another torch, MKL or numpy build (the locks pin them), another architecture (ARM), CPUs without AVX2
and FMA (a warning says so), GPUs, and vLLM's own CPU kernels (the rehearsal's generation).
"""

from __future__ import annotations

import os
import sys
import warnings

ENV_FLAG = "SELM_NUMERICS"
MODES = ("portable", "native")
DEFAULT = "portable"
# numpy 2.x's dispatch targets above AVX2 (pinned by requirements.lock); disabling one the CPU lacks is a no-op
NUMPY_AVX512 = "AVX512F AVX512CD AVX512_KNL AVX512_KNM AVX512_SKX AVX512_CLX AVX512_CNL AVX512_ICL AVX512_SPR"
PORTABLE = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "MKL_CBWR": "COMPATIBLE",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "NPY_DISABLE_CPU_FEATURES": NUMPY_AVX512,
    "OPENBLAS_CORETYPE": "Haswell",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
}
REQUIRED_FLAGS = ("avx2", "fma")


def mode(environ=os.environ) -> str:
    """The mode `environ` asks for; a typo or the retired SELM_DETERMINISTIC is an error that says what to set."""
    if "SELM_DETERMINISTIC" in environ:
        raise ValueError("SELM_DETERMINISTIC is retired: the portable numerical mode is now the default "
                         "(SELM_NUMERICS=portable); unset SELM_DETERMINISTIC, or set SELM_NUMERICS=native for "
                         "the fastest, machine-specific paths")
    value = environ.get(ENV_FLAG, "") or DEFAULT
    if value not in MODES:
        raise ValueError(f"{ENV_FLAG}={value!r}: expected one of {', '.join(MODES)}")
    return value


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU's feature flags (from /proc/cpuinfo; empty where it cannot be read)."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:
            return set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def apply(environ=os.environ) -> str:
    """Pin the portable settings in `environ` unless SELM_NUMERICS=native; returns the mode.

    A variable the user set to another value is not overridden: that is an error naming it. Applied to
    this process after torch or numpy was imported it could not take effect, so it warns instead."""
    chosen = mode(environ)
    if chosen == "native":
        return chosen
    for key, value in PORTABLE.items():
        if environ.get(key, value) != value:
            raise ValueError(f"{ENV_FLAG}=portable needs {key}={value}, but the environment sets "
                             f"{environ[key]!r}: unset it, or set {ENV_FLAG}=native")
    if environ is os.environ:
        late = [m for m in ("torch", "numpy") if m in sys.modules]
        unpinned = [k for k in PORTABLE if k not in environ]
        if late and unpinned:
            warnings.warn(f"{' and '.join(late)} {'was' if len(late) == 1 else 'were'} imported before selm: the portable numerical mode cannot "
                          f"pin {', '.join(unpinned)} in this process; import selm first", RuntimeWarning,
                          stacklevel=3)
        flags = cpu_flags()
        if flags and not set(REQUIRED_FLAGS) <= flags:
            warnings.warn(f"this CPU lacks {', '.join(sorted(set(REQUIRED_FLAGS) - flags))}: the portable "
                          "numerical mode needs AVX2 and FMA, so results here will differ from the "
                          "recorded ones", RuntimeWarning, stacklevel=3)
    environ.update(PORTABLE)
    return chosen
