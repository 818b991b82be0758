#!/usr/bin/env bash
# Install what the tests need into .venv, then run them. Extra arguments go to pytest.
set -euo pipefail
. "$(dirname "$0")/install.sh"
python -m pytest -q "$@"
