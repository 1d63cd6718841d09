#!/usr/bin/env bash
# The device check, run on a lent GPU machine in one call (its steps' limits add up to 570 s): the card, the
# CUDA tests, workload W3 (W1 on CUDA with 2.5e8 draws: eager, fused, fused float32, fused at larger chunks, a
# profile of the fused run, and per estimator), W4 (the exact gradient of 24, 28 and 30 binary units on the
# device, against 24 on this machine's CPU) and the own-model benchmark (GradientStats' compiled sums against
# the device's memory roofline, with a profile of the update and its fixed cost a chunk: on 2026-12-04 it ran at
# 0.012 of the H200's roofline; then the eager sums, one round), printing their figures. Each step has its own
# time limit and a failed step does not stop the others. The machine's python3 already holds torch, pandas,
# seaborn, scipy, hypothesis, tqdm, pytest. (On 2026-12-04 W3 at 1e9 draws did not end inside its 240 s on a
# fresh machine, and the run's printed output was lost with it: hence the log below and the smaller W3.)
set -uo pipefail
cd "$(dirname "$0")/.."
# `bash benchmarks/gpu_check.sh byom` runs the CUDA tests and the own-model steps alone (about 330 s of limits).
WHICH="${1:-all}"
case "$WHICH" in all|byom) ;; *) echo "usage: bash benchmarks/gpu_check.sh [all|byom]" >&2; exit 2 ;; esac
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1
# Each benchmark's record (benchmarks/_record.py) goes to $OUT when the device machine gives one (its files come
# back), else to benchmarks/results; copy them into benchmarks/results and run benchmarks/report.py.
RESULTS="${OUT:-benchmarks/results}"
mkdir -p "$RESULTS"
status=0
# Everything printed also goes to $RESULTS/gpu_check.log as it is printed, so that a run killed at a time
# limit still leaves what it printed.
LOG="$RESULTS/gpu_check.log"
exec > >(tee -a "$LOG") 2>&1
step() {
  local limit=$1; shift
  echo "== $* (limit ${limit} s)"
  local start=$SECONDS
  timeout "$limit" "$@" || { echo "!! step failed (exit $?): $*"; status=1; }
  echo "== $((SECONDS - start)) s"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name(), "cpus", torch.get_num_threads())'
step 150 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py
if [ "$WHICH" = all ]; then
  step 60 python3 benchmarks/exact_device.py --device cuda --units 24,28,30 --cpu-units 24 --threads 16 --budget 60 \
    --json "$RESULTS/exact_device_cuda.json"
  step 180 python3 benchmarks/montecarlo.py --device cuda --draws 2.5e8 --chunk-size 4194304 --vmap-draws 1048576 \
    --estimator-draws 6.25e7 --threads 16 --fused st,noisy_rectifier,reinforce,disarm \
    --fused-chunks 16777216,33554432 --profile --json "$RESULTS/montecarlo_cuda.json"
fi
step 120 python3 benchmarks/byom.py --device cuda --draws 16384 --chunk 256 --loop-draws 128 --repeats 3 --profile \
  --json "$RESULTS/byom_cuda.json"
# the update's sums eagerly on the same device, one round: which of the two torch paths an accelerator should take
step 60 python3 benchmarks/byom.py --device cuda --sums eager --draws 4096 --chunk 256 --loop-draws 32 --repeats 1 \
  --profile --json "$RESULTS/byom_eager_cuda.json"
exit $status
