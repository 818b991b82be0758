#!/usr/bin/env bash
# Install mlr-kernels into .venv, then run the ML-LR pipeline end to end on the embedded default.
# Extra arguments go to `mlr run` (e.g. --quick, --out DIR). With MLR_REAL=1, or when the arguments
# name the preset smollm2-135m-instruct, it also installs what that real model needs (install.sh).
set -euo pipefail
for arg in "$@"; do
  case "$arg" in
    smollm2-135m-instruct | --model=smollm2-135m-instruct) MLR_REAL=1 ;;
  esac
done
MLR_EXTRAS=triton MLR_REAL="${MLR_REAL:-0}" . "$(dirname "$0")/install.sh"
mlr run "$@"
