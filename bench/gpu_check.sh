#!/usr/bin/env bash
# One prepared GPU run (H100/H200): build, GPU tests, benchmarks; logs and tables under $OUT.
#
#   OUT=/tmp/gpu bash bench/gpu_check.sh      # on the device machine: about 6-8 minutes
#
# Steps run in order and the script stops at the first that fails, keeping what was written.
# Output goes to five logs, two JSON tables and summary.txt (the device tool returns 8 files).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/gpu}
mkdir -p "$OUT"
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"
export PYTHONPATH="$PWD:$PWD/python${PYTHONPATH:+:$PYTHONPATH}"

step() {  # step LOG TIMEOUT_S COMMAND...: run, append to $OUT/LOG.log, stop the script on failure
  local name=$1 log="$OUT/$1.log" limit=$2
  shift 2
  local start=$SECONDS
  echo "\$ $*" >>"$log"
  timeout "$limit" "$@" >>"$log" 2>&1
  local rc=$?
  echo "$name: $* -> rc=$rc, $((SECONDS - start)) s" | tee -a "$SUMMARY"
  if [ "$rc" -ne 0 ]; then
    tail -n 40 "$log"
    exit "$rc"
  fi
}

# 1. Build the C++ and CUDA extensions (nvcc: sm_80, sm_90 and PTX) and say what runs them.
step 1-build 300 python setup.py build_ext --inplace
step 1-build 60 python -c "
import torch, triton
from mlr_kernels.backends import unavailable_reason
print(torch.cuda.get_device_name(), 'torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)
print({name: unavailable_reason(name, 'cuda') for name in ('cuda', 'triton')})"

# 2. GPU tests: both kernels against the reference (CUDA-graph replay included), and the
#    optimizer contract on CUDA tensors (model.to('cuda') after construction, a captured step()).
step 2-tests 240 python -m pytest -x -q tests/test_kernel_cuda.py tests/test_kernel_triton.py
step 2-tests 300 python -m pytest -x -q tests/test_optimizer_cuda.py

# 3. MLRAdamW (cuda, triton) against torch AdamW fused and foreach, one group and one per module,
#    GB/s against a device-to-device copy timed in the same run, launches per step.
step 3-bench 420 python bench/compare_optimizers.py --device cuda --dtype fp32 \
  --workloads llama-125m,llama-1b --rounds 20 --json "$OUT/compare-fp32.json"
step 3-bench 420 python bench/compare_optimizers.py --device cuda --dtype bf16 \
  --workloads llama-125m,llama-1b --rounds 20 --json "$OUT/compare-bf16.json"

# 4. The capture hook, then (if time remains) the whole training step.
step 4-capture 300 python bench/bench_capture.py --device cuda
step 5-train-step 300 python bench/train_step.py --device cuda --layers 12 --hidden 768 \
  --vocab 32000 --batch 8 --seq 512
