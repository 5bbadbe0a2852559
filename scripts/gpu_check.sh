#!/usr/bin/env bash
# Issue 17's GPU check, as one prepared script (a lent GPU has 15 minutes in all; run with a timeout that
# leaves room to rerun):
#   1. verify (incremental eviction == dense forward) on CUDA in bfloat16 and float32, and on SmolLM2-135M;
#   2. the SmolLM2 replay benchmark (benchmarks/bench_real.py: cuda + bfloat16 when a GPU is visible);
#   3. a Qwen3-8B-shaped random bfloat16 model replaying a 32K-token trace with memento K/V capture
#      (scripts/gpu_long_replay.py; target memento <= 0.5x vanilla time);
#   4. with more than one GPU: replay sharded over 2 Ray GPU actors (--workers 2 --gpus-per-worker 1).
# Usage: scripts/gpu_check.sh [--dry-run] [OUT_DIR]
#   --dry-run: on CPU, what fits a test: prints every step, runs step 3 on a tiny shape (the same code path).
# Writes one log per step under OUT_DIR (default ${OUT:-/tmp}/gpu_check) and prints a summary.
set -euo pipefail
cd "$(dirname "$0")/.."

DRY=0
if [ "${1:-}" = "--dry-run" ]; then DRY=1; shift; fi
OUT_DIR="${1:-${OUT:-/tmp}/gpu_check}"
mkdir -p "$OUT_DIR"
PY="${PY:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
CLI=("$PY" -m memento_lens.cli)

step() {  # step NAME CMD...: run (or, dry, print) one step, its output to OUT_DIR/NAME.log
  local name="$1"; shift
  if [ "$DRY" = 1 ] && [ "${DRY_RUNS:-}" != "$name" ]; then
    echo "[dry-run] would run $name: $*"
    return 0
  fi
  echo "== $name: $*"
  local t0=$SECONDS
  if "$@" >"$OUT_DIR/$name.log" 2>&1; then
    echo "   ok ($((SECONDS - t0)) s)"; tail -n 3 "$OUT_DIR/$name.log" | sed 's/^/   /'
  else
    echo "   FAILED ($((SECONDS - t0)) s), see $OUT_DIR/$name.log"; tail -n 20 "$OUT_DIR/$name.log" | sed 's/^/   /'
    FAILED=$((FAILED + 1))
  fi
}
FAILED=0

if [ "$DRY" = 1 ]; then
  GPUS=0
  DRY_RUNS=long_replay
  step verify_bf16 "${CLI[@]}" verify --device cuda --dtype bfloat16 --out "$OUT_DIR/verify_bf16.json"
  step verify_fp32 "${CLI[@]}" verify --device cuda --dtype float32 --out "$OUT_DIR/verify_fp32.json"
  step verify_smollm2 "${CLI[@]}" verify --model smollm2-135m --device cuda --dtype bfloat16
  step bench_real "$PY" -m benchmarks.run_all --only real
  step long_replay "$PY" scripts/gpu_long_replay.py --tiny --tokens 600
  step ray_gpu "${CLI[@]}" replay --toy 64 --workers 2 --gpus-per-worker 1 --device cuda --out "$OUT_DIR/ray_run" --overwrite --json
else
  GPUS=$("$PY" -c "import torch; print(torch.cuda.device_count())")
  if [ "$GPUS" -lt 1 ]; then echo "no CUDA device visible; use --dry-run on CPU" >&2; exit 2; fi
  "$PY" -c "import torch; print('GPU:', torch.cuda.get_device_name(0), 'x', torch.cuda.device_count(), 'torch', torch.__version__)"
  step verify_bf16 "${CLI[@]}" verify --device cuda --dtype bfloat16 --out "$OUT_DIR/verify_bf16.json"
  step verify_fp32 "${CLI[@]}" verify --device cuda --dtype float32 --out "$OUT_DIR/verify_fp32.json"
  step verify_smollm2 "${CLI[@]}" verify --model smollm2-135m --device cuda --dtype bfloat16
  step bench_real "$PY" -m benchmarks.run_all --only real
  step long_replay "$PY" scripts/gpu_long_replay.py --tokens 32768 --device cuda --dtype bfloat16
  if [ "$GPUS" -gt 1 ]; then
    step ray_gpu "${CLI[@]}" replay --toy 256 --workers 2 --gpus-per-worker 1 --device cuda --out "$OUT_DIR/ray_run" --overwrite --json
  else
    echo "== ray_gpu: skipped (1 GPU; 2 Ray GPU actors need 2)"
  fi
fi
echo "gpu_check: $FAILED step(s) failed; logs in $OUT_DIR"
[ "$FAILED" = 0 ]
