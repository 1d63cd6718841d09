#!/usr/bin/env bash
# The device check, run on a lent GPU machine in one call: the CUDA tests, then
# workload W3 (W1 on CUDA with 1e8 draws) and the bring-your-own-model benchmark, printing their figures. The machine's
# python3 already holds torch, pandas, seaborn, scipy, hypothesis, tqdm, pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name())'
python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_montecarlo.py tests/test_stats.py tests/test_gradient_stats.py tests/test_conditional.py
python3 benchmarks/montecarlo.py --device cuda --draws 1e8 --chunk-size 4194304 --vmap-draws 1048576
python3 benchmarks/byom.py --device cuda --draws 16384 --chunk 1024 --loop-draws 512
python3 -m gradstats.cli conditional --quick --device cuda
