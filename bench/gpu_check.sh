#!/usr/bin/env bash
# The prepared GPU run (H200/H100), sized for a 15-minute device lease that includes the machine's
# start: every step is capped and the caps add up to at most 7 minutes, Triton's first compiles
# included. Benchmarks run first, then the checks and the tests (no -x: every result is kept).
#
#   OUT=/tmp/gpu bash bench/gpu_check.sh     # on the device machine
#   bash bench/gpu_check.sh --dry-run         # anywhere, CI included: checks the plan, caps and files
#
# Writes under $OUT (the device tool returns at most 8 files): build.log, bench-fp32.log,
# compare-fp32.json, bench-bf16.log, compare-bf16.json, checks.log, tests.log and, last,
# summary.txt (each step's command, exit code and seconds, the GPU clocks before and after).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=python3
BUDGET_S=420
DRY_RUN=0
[ "${1:-}" = --dry-run ] && DRY_RUN=1
OUT=${OUT:-out/gpu}
export PYTHONPATH="$PWD:$PWD/python${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

# name | cap in seconds | log | command. A step's log gets its output; the JSON tables are written
# by compare_optimizers.py itself.
PLAN=(
  "build|90|build.log|$PY setup.py build_ext --inplace --parallel 4"
  "library|20|build.log|$PY -c 'from mlr_kernels.backends import cuda, unavailable_reason as u; import torch, triton; print(torch.cuda.get_device_name(), torch.__version__, torch.version.cuda, triton.__version__); r = {n: u(n, \"cuda\") for n in (\"cuda\", \"triton\")}; print(r); assert r[\"cuda\"] is None, r'"
  "bench-fp32|80|bench-fp32.log|$PY bench/compare_optimizers.py --device cuda --dtype fp32 --workloads llama-1b,lora,small --rounds 10 --json $OUT/compare-fp32.json"
  "bench-bf16|70|bench-bf16.log|$PY bench/compare_optimizers.py --device cuda --dtype bf16 --workloads llama-1b,lora,small --rounds 10 --json $OUT/compare-bf16.json"
  "checks|50|checks.log|$PY bench/gpu_checks.py"
  "tests|105|tests.log|$PY -m pytest -q -p no:cacheprovider tests/test_kernel_cuda.py tests/test_kernel_triton.py tests/test_optimizer_cuda.py"
)
FILES=(build.log bench-fp32.log compare-fp32.json bench-bf16.log compare-bf16.json checks.log tests.log summary.txt)

check_plan() {  # the caps fit the budget, the scripts and tests exist, the outputs fit the tool's 8 files
  local total=0 entry name cap log cmd
  for entry in "${PLAN[@]}"; do
    IFS='|' read -r name cap log cmd <<<"$entry"
    total=$((total + cap))
    case " ${FILES[*]} " in *" $log "*) ;; *) echo "plan: $name writes $log, not in FILES"; return 1 ;; esac
    echo "plan: $name, at most ${cap} s: $cmd"
  done
  echo "plan: caps add up to ${total} s of ${BUDGET_S} s; ${#FILES[@]} files under \$OUT"
  [ "$total" -le "$BUDGET_S" ] || { echo "plan: over budget"; return 1; }
  [ "${#FILES[@]}" -le 8 ] || { echo "plan: more than 8 files"; return 1; }
  command -v "$PY" >/dev/null || { echo "plan: $PY not found"; return 1; }
  $PY bench/gpu_checks.py --dry-run || return 1
  $PY -c "import sys; sys.path.insert(0, 'bench'); from workloads import GPU_WORKLOADS as w; \
[w[n] for n in ('llama-1b', 'lora', 'small')]" || return 1
  $PY -m pytest -q -p no:cacheprovider --collect-only tests/test_kernel_cuda.py tests/test_kernel_triton.py \
    tests/test_optimizer_cuda.py | tail -n 1 || return 1
}

if [ "$DRY_RUN" = 1 ]; then
  check_plan
  exit $?
fi

mkdir -p "$OUT"
SUMMARY="$OUT/summary.txt.part"  # renamed to summary.txt last
: >"$SUMMARY"
clocks() { nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv,noheader 2>&1; }
echo "clocks before: $(clocks)" >>"$SUMMARY"
START=$SECONDS
for entry in "${PLAN[@]}"; do
  IFS='|' read -r name cap log cmd <<<"$entry"
  began=$SECONDS
  echo "\$ $cmd" >>"$OUT/$log"
  timeout "$cap" bash -c "$cmd" >>"$OUT/$log" 2>&1
  rc=$?
  echo "$name: rc=$rc, $((SECONDS - began)) s of ${cap} s" | tee -a "$SUMMARY"
  if [ "$rc" -ne 0 ] && { [ "$name" = build ] || [ "$name" = library ]; }; then
    echo "stopped: without the CUDA library nothing after $name can run" | tee -a "$SUMMARY"
    tail -n 30 "$OUT/$log"
    break
  fi
done
echo "clocks after: $(clocks)" >>"$SUMMARY"
echo "total: $((SECONDS - START)) s" >>"$SUMMARY"
for log in bench-fp32.log bench-bf16.log checks.log; do
  [ -f "$OUT/$log" ] && { echo "--- $log"; grep -E "PASS|FAIL|MLRAdamW|torch AdamW|ceilings" "$OUT/$log"; } >>"$SUMMARY"
done
[ -f "$OUT/tests.log" ] && { echo "--- tests.log"; tail -n 15 "$OUT/tests.log"; } >>"$SUMMARY"
mv "$SUMMARY" "$OUT/summary.txt"
cat "$OUT/summary.txt"
