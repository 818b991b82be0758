#!/usr/bin/env bash
# Install mlr-kernels into .venv, then run the ML-LR pipeline end to end on the embedded default.
# Extra arguments go to `mlr run` (e.g. --quick, --out DIR), and relative paths in them are taken
# from the directory this is run from; the report goes to --out (default ./mlr_run/report.md).
# With MLR_REAL=1, or when the arguments name the preset smollm2-135m-instruct, it also installs
# what that real model needs (install.sh).
set -euo pipefail
for arg in "$@"; do
  case "$arg" in
    smollm2-135m-instruct | --model=smollm2-135m-instruct) MLR_REAL=1 ;;
  esac
done
here=$PWD
MLR_EXTRAS=triton MLR_REAL="${MLR_REAL:-0}" . "$(dirname "$0")/install.sh"  # cds to the repository
repo=$PWD
cd "$here"
mlr run "$@"
echo "mlr is installed in $repo/.venv; to use it in your shell: . $repo/.venv/bin/activate"
