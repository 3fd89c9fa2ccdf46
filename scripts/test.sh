#!/usr/bin/env bash
# The whole test suite: services up, fresh install into .venv, then trial.
# Extra arguments go to trial (e.g. a module name).
set -u
cd "$(dirname "$0")/.."
bash scripts/services.sh || exit 1
bash scripts/venv.sh || exit 1
# Imported from the checkout (python -m puts it first on sys.path).
args=("$@")
[ ${#args[@]} -eq 0 ] && args=(tests)
exec .venv/bin/python -m twisted.trial --temp-directory=/tmp/btu_trial_temp "${args[@]}"
