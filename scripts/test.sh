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
# One trial temp directory per checkout: two checkouts testing at once would
# otherwise refuse each other's busy directory.
tmp="${TMPDIR:-/tmp}/btu_trial_temp-$(pwd | md5sum | cut -c1-8)"
exec .venv/bin/python -m twisted.trial --temp-directory="$tmp" "${args[@]}"
