#!/usr/bin/env bash
# GPU smoke test: every piece of the paper scale that only a GPU shows, on tiny stand-ins, one cell per
# base model, one iteration, on ONE CUDA GPU (80 GB), within 10 minutes, with no network
# (python -m selm.cli.smoke; docs/paper-scale.md, "Before the paper scale: the smoke test").
#
#   make bundle BUNDLE=/path/to/bundle      # once, on a networked Linux x86-64 machine with `make setup` done
#   make setup-gpu BUNDLE=/path/to/bundle   # on the GPU machine: the CUDA install from the bundle's wheels
#   scripts/gpu-smoke.sh /path/to/bundle [WORKDIR]
#
# Prints one line per step (`<step> <seconds> s OK|FAIL|OVER BUDGET|NOT RUN: <why>`), stops at the
# first failure, writes WORKDIR/smoke.json and WORKDIR/logs/, and exits 0 only if every step passed.
# The budget is hard: each step's process group is killed at the step's budget, the runner's watchdog
# at the total (GPU_SMOKE_BUDGET_S, default 600 s), and `timeout` below stops the runner itself if
# all else fails. `--dry-run` instead of the bundle runs the same steps with their commands replaced
# (CPU, seconds): what tests/test_gpu_smoke.py checks.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
BUDGET_S="${GPU_SMOKE_BUDGET_S:-600}"
if [[ $# -lt 1 ]]; then
  echo "usage: scripts/gpu-smoke.sh BUNDLE|--dry-run [WORKDIR]" >&2; exit 2
fi
if [[ $1 == --dry-run ]]; then SOURCE=(--dry-run); else SOURCE=(--bundle "$1"); fi
WORK=(); [[ $# -ge 2 ]] && WORK=(--work "$2")
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE="${WANDB_MODE:-offline}"
export DVC_NO_ANALYTICS=1 TOKENIZERS_PARALLELISM=false PIP_NO_INDEX=1
# The outer guard: SIGTERM 30 s after the runner's own deadline (it then kills its running step's
# process group and exits 143), SIGKILL 15 s later.
exec timeout --kill-after=15 "$(( BUDGET_S + 30 ))" \
  "$PY" -m selm.cli.smoke run "${SOURCE[@]}" "${WORK[@]}" --total-budget "$BUDGET_S"
