#!/usr/bin/env bash
# Install mlr-kernels into .venv, then run the ML-LR pipeline end to end on the embedded default.
# Extra arguments go to `mlr run` (e.g. --quick, --out DIR).
set -euo pipefail
MLR_EXTRAS=triton . "$(dirname "$0")/install.sh"
mlr run "$@"
