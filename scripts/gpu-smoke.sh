#!/usr/bin/env bash
# GPU smoke test: the rehearsal scale's stages (scales/rehearsal/dvc.yaml) on ONE CUDA GPU with the
# paper's GPU paths switched on (conf/loop_gpu_smoke.yaml): bf16, generation through vLLM on CUDA,
# training launched as DeepSpeed ZeRO-3 with 1 process (conf/accelerate/zero3_1gpu.yaml), PairRM and
# lm-eval on the GPU, and vLLM at gpu_memory_utilization 0.85, so an engine whose memory is not
# released before training (or before the next engine) makes that stage fail.
#
#   pip install -e '.[gpu]'        # once (vllm, deepspeed: CUDA builds)
#   scripts/gpu-smoke.sh [WORKDIR] # default: a fresh temporary folder; budget 10 minutes
#
# Prints one line per stage: `<stage> <seconds>s OK|FAIL`, then the log file of a failed stage, and
# exits non-zero if any stage failed. Stages run in WORKDIR (the fixtures, the paper's numbers and the
# grid are copied there; every output lands under it), so the repository itself is not written; code
# and conf/ are the repository's. No network is needed if data/rehearsal/mt_bench exists in the
# repository (the rehearsal's mt_bench_data stage wrote it): it is copied instead of fetched.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="${1:-$(mktemp -d -t selm-gpu-smoke.XXXXXX)}"
PY="${PYTHON:-python}"
BUDGET_S="${GPU_SMOKE_BUDGET_S:-600}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE="${WANDB_MODE:-offline}"
export DVC_NO_ANALYTICS=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"

mkdir -p "$WORK/logs" "$WORK/experiments" "$WORK/tests/fixtures" "$WORK/results" "$WORK/data/rehearsal"
cp -r "$ROOT/tests/fixtures/rehearsal" "$WORK/tests/fixtures/"
cp -r "$ROOT/paper" "$WORK/"
ln -sfn "$ROOT/conf" "$WORK/conf"   # the launcher names conf/accelerate/zero3_1gpu.yaml, relative to where stages run
[[ -f "$ROOT/data/rehearsal/mt_bench/question.jsonl" ]] && cp -r "$ROOT/data/rehearsal/mt_bench" "$WORK/data/rehearsal/"
# the rehearsal's grid, composed with the GPU entry config instead of the CPU one
"$PY" - "$ROOT/experiments/rehearsal.yaml" "$WORK/experiments/gpu-smoke.yaml" <<'PYEOF' || exit 1
import sys
from omegaconf import OmegaConf
spec = OmegaConf.load(sys.argv[1])
spec.config_name = "loop_gpu_smoke"
OmegaConf.save(spec, sys.argv[2])
PYEOF
cd "$WORK" || exit 1
SPEC=experiments/gpu-smoke.yaml
CONFIG=loop_gpu_smoke
START=$(date +%s)
FAILED=0

gpu_memory() {  # MiB in use on the GPU, for the log (vLLM's memory must be gone before training)
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits 2>/dev/null | head -1
}

stage() {  # stage NAME COMMAND...: run, time, print one line; later stages still run after a failure
  local name="$1"; shift
  local t0=$(date +%s) log="logs/${name//[@\/]/_}.log"
  echo "\$ $*  (GPU memory before: $(gpu_memory) MiB)" > "$log"
  if (( t0 - START > BUDGET_S )); then
    printf '%-34s %5ss FAIL (over the %ss budget, not run)\n' "$name" 0 "$BUDGET_S"; FAILED=1; return
  fi
  if "$@" >> "$log" 2>&1; then status=OK; else status=FAIL; FAILED=1; fi
  echo "(GPU memory after: $(gpu_memory) MiB)" >> "$log"
  printf '%-34s %5ss %s\n' "$name" "$(( $(date +%s) - t0 ))" "$status"
  [[ $status == OK ]] || { echo "  log: $WORK/$log"; tail -n 15 "$log" | sed 's/^/  | /'; }
}

judged() {  # the stage's command with the fallback judge server at judge.base_url
  "$PY" -m selm.judge_server --config-name "$CONFIG" -- "$@"
}

echo "GPU smoke test in $WORK ($(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo 'no nvidia-smi'))"
stage check_cuda "$PY" -c "import torch, vllm, deepspeed; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0), vllm.__version__, deepspeed.__version__)"
(( FAILED == 0 )) || { echo "no CUDA GPU with vllm and deepspeed: nothing else can run"; exit 1; }
stage ultrafeedback "$PY" -m selm.ultrafeedback --out data/rehearsal/ultrafeedback --source tests/fixtures/rehearsal/ultrafeedback
stage alpaca_data "$PY" -m selm.benchmarks.alpaca_data --out data/rehearsal/alpaca_eval --source tests/fixtures/rehearsal/alpaca_eval
if [[ -f data/rehearsal/mt_bench/question.jsonl ]]; then
  printf '%-34s %5ss %s\n' mt_bench_data 0 "OK (copied from the repository's data/rehearsal/mt_bench)"
else
  stage mt_bench_data "$PY" -m selm.cli.fetch mt-bench --out data/rehearsal/mt_bench --version 26.3
fi
# STAND-INS: the models stage of scales/rehearsal/dvc.yaml
stage models@rehearsal-zephyr "$PY" -m selm.standins zephyr models/rehearsal-zephyr
stage models@rehearsal-llama3 "$PY" -m selm.standins llama3 models/rehearsal-llama3
stage pairrm "$PY" -m selm.pairrm --build-tiny models/rehearsal-pairrm --seed 0
stage experiment@rehearsal_main judged "$PY" -m selm.cli.stage experiment rehearsal_main --spec "$SPEC"
stage experiment@rehearsal_ablations judged "$PY" -m selm.cli.stage experiment rehearsal_ablations --spec "$SPEC"
stage eval_base@rehearsal-zephyr judged "$PY" -m selm.cli.evaluate --config-name "$CONFIG" --base preset=rehearsal_zephyr
stage eval_base@rehearsal-llama3 judged "$PY" -m selm.cli.evaluate --config-name "$CONFIG" --base preset=rehearsal_llama3
stage analyze judged "$PY" -m selm.report.analyze --spec "$SPEC" --out results/rehearsal/analysis
stage report "$PY" -m selm.report.build --spec "$SPEC" --scale rehearsal --report results/REPORT-gpu-smoke.md
echo "total $(( $(date +%s) - START ))s; report: $WORK/results/REPORT-gpu-smoke.md"
exit $FAILED
