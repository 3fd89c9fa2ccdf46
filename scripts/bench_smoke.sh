#!/usr/bin/env bash
# The benchmarks' smoke (bench/smoke.py): every bench case, tiny, in about a
# minute and a quarter, so that bench/ does not rot.  Each group of cases runs
# on a private redis-server on a free port (the shared one on 6379 is never
# flushed); in MariaDB it only creates btu_bench_* databases and drops the
# ones it made.  The rq-scheduler anchor makes (once) /tmp/btu-bench-rqscheduler-venv
# with pip.  Exit 1 if any case fails; the logs are then kept and their
# directory printed.
set -u
cd "$(dirname "$0")/.."
command -v redis-server >/dev/null 2>&1 || { echo "bench smoke: no redis-server" >&2; exit 1; }
bash scripts/services.sh || exit 1
[ -x .venv/bin/python ] || bash scripts/venv.sh || exit 1
# Imported from the checkout (python -m puts it first on sys.path).
exec .venv/bin/python -m bench.run --smoke "$@"
