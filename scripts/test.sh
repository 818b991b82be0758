#!/usr/bin/env bash
# Install what the tests need into .venv, then run them. Extra arguments go to pytest.
set -euo pipefail
. "$(dirname "$0")/install.sh"
# The optimizer's per-step reads must run in C++ here (an error if the install did not build them);
# tests that compare the two paths set it per test.
MLR_HOST_READS=c++ python -m pytest -q "$@"
