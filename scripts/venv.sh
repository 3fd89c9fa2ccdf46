#!/usr/bin/env bash
# Create .venv (if missing) and install btu_twisted into it, non-editable, so
# the twistd plugin ships exactly as `pip install .` ships it.
set -eu
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/pip install --quiet --upgrade pip >/dev/null 2>&1 || true
.venv/bin/pip install --quiet ".[test]" 2>&1 | grep -v -E '^WARNING: (Location|Skipping)' || true
.venv/bin/python -c "import btu_twisted, txredisapi, croniter, rq, treq" 
