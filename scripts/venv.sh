#!/usr/bin/env bash
# Create .venv (if missing) and install btu_twisted into it, non-editable, so
# the twistd plugin ships exactly as `pip install .` ships it.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv || exit 1
fi
log=$(mktemp)
if ! .venv/bin/pip install --quiet ".[test,dev]" >"$log" 2>&1; then
  cat "$log" >&2
  echo "installing btu_twisted into .venv failed" >&2
  exit 1
fi
rm -f "$log"
# Drop the build tree setuptools leaves behind in the checkout.
rm -rf build btu_twisted.egg-info
.venv/bin/python -c "import btu_twisted, txredisapi, croniter, rq, treq" || exit 1
