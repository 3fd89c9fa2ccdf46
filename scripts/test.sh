#!/usr/bin/env bash
# The whole test suite: services up, fresh install into .venv, then trial.
# Extra arguments go to trial (e.g. a module name).
set -u
cd "$(dirname "$0")/.."
bash scripts/services.sh || exit 1
bash scripts/venv.sh || exit 1
# The status page's browser test renders it in Debian's chromium: install it
# when absent (CI starts from a clean machine); the test says why it skips if
# this fails.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  apt_get() {
    if [ "$(id -u)" -eq 0 ]; then env DEBIAN_FRONTEND=noninteractive apt-get -q "$@"
    else sudo -n env DEBIAN_FRONTEND=noninteractive apt-get -q "$@"; fi >/dev/null 2>&1
  }
  echo "installing chromium for the status page's browser test"
  apt_get install -y chromium || { apt_get update && apt_get install -y chromium; } \
    || echo "chromium could not be installed: the browser test will be skipped" >&2
fi
# Imported from the checkout (python -m puts it first on sys.path).
args=("$@")
[ ${#args[@]} -eq 0 ] && args=(tests)
# One trial temp directory per checkout: two checkouts testing at once would
# otherwise refuse each other's busy directory.
tmp="${TMPDIR:-/tmp}/btu_trial_temp-$(pwd | md5sum | cut -c1-8)"
exec .venv/bin/python -m twisted.trial --temp-directory="$tmp" "${args[@]}"
