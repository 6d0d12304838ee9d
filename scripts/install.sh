#!/usr/bin/env bash
# Fresh virtual environment in .venv with every pinned dependency and the package (with its build).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -r requirements.txt
.venv/bin/python -m pip install -q --no-build-isolation -e .
.venv/bin/python -c "import mentormix_fast as m; print('mentormix_fast', m.__version__, m.backends())"
