#!/usr/bin/env bash
# Build the Sphinx site into docs/_build/html with warnings as errors; exit
# non-zero on any warning.  Installs Sphinx (the pinned version of the dev
# extra) into .venv when it is missing.  Extra arguments go to sphinx-build
# (e.g. -E to read every page again).
set -u
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/sphinx-build ]; then
  bash scripts/venv.sh || exit 1   # installs .[test,dev]: Sphinx comes with dev
fi
if [ ! -x .venv/bin/sphinx-build ]; then
  echo "sphinx-build is not in .venv after installing the dev extra" >&2
  exit 1
fi
# PYTHONPATH: document this checkout's btu_twisted, not the copy installed in .venv.
PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}" \
  .venv/bin/sphinx-build -W --keep-going -q -b html "$@" docs docs/_build/html
status=$?
if [ "$status" -ne 0 ]; then
  echo "docs: the build failed or warned (see above)" >&2
  exit "$status"
fi
echo "docs: built docs/_build/html/index.html"
