#!/usr/bin/env bash
# The demo: a Frappe-shaped database with sample schedules, the btu daemon
# under twistd, and a real `rq worker` printing the jobs as they run.
# DEMO_SECONDS (default 70) bounds the run; Ctrl-C stops it early.
# DEMO_SOURCE=file: no Frappe, no MariaDB schema: the schedules come from a
# schedules_file, and the config has no mysql_* key at all.
# The demo starts a redis-server of its own on a free port and stops it at the
# end; DEMO_REDIS_URL=redis://host:port/db uses that Redis instead (nothing in it
# is flushed or deleted: the demo only adds its own keys and jobs).  Its MariaDB
# database is btu_demo, the only one it creates or drops.
set -u
cd "$(dirname "$0")/.."
ROOT=$(pwd)
SECONDS_TO_RUN=${DEMO_SECONDS:-70}
SOURCE=${DEMO_SOURCE:-mariadb}
WORK=${DEMO_WORK:-/tmp/btu_demo}
DB=btu_demo
REDIS_DB=1
case "$SOURCE" in
  mariadb|file) ;;
  *) echo "DEMO_SOURCE must be 'mariadb' (default) or 'file', not '$SOURCE'" >&2; exit 2 ;;
esac
bash scripts/services.sh || exit 1
bash scripts/venv.sh || exit 1
mkdir -p "$WORK"

cleanup_redis() { :; }
if [ -n "${DEMO_REDIS_URL:-}" ]; then
  REDIS_URL=$DEMO_REDIS_URL
  echo "== using the Redis at $REDIS_URL (nothing in it is flushed)"
else
  REDIS_PORT=$(.venv/bin/python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  mkdir -p "$WORK/redis"
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
    --dir "$WORK/redis" --logfile "$WORK/redis/redis.log" --daemonize no &
  REDIS_PID=$!
  cleanup_redis() { kill "$REDIS_PID" 2>/dev/null; wait "$REDIS_PID" 2>/dev/null; }
  trap cleanup_redis EXIT
  for _ in $(seq 1 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
  REDIS_URL="redis://127.0.0.1:$REDIS_PORT/$REDIS_DB"
  echo "== a redis-server of the demo's own on port $REDIS_PORT (stopped at the end)"
fi

# What both variants' configs share; each adds where its schedules come from.
cat > "$WORK/btu_scheduler.toml" <<TOML
name = "demo"
environment_name = "demo"
full_refresh_internal_secs = 600
scheduler_polling_interval = 30
time_zone_string = "UTC"
tracing_level = "INFO"
rq_url = "$REDIS_URL"
socket_path = "$WORK/btu_scheduler.sock"
TOML
chmod 600 "$WORK/btu_scheduler.toml"

if [ "$SOURCE" = file ]; then
echo "== demo schedules file $WORK/schedules.toml (no MariaDB: the config has no mysql_* key)"
cat > "$WORK/schedules.toml" <<'TOML'
[[schedule]]
name = "demo-every-5-seconds"
cron = "*/5 * * * * * *"
function = "demo_tasks.ping_now"
description = "ping every 5 s"

[[schedule]]
name = "demo-every-minute"
cron = "* * * * *"
function = "demo_tasks.ping_with_wait"
kwargs = { seconds_to_wait = 1 }
timeout = 30
overlap = "skip"
TOML
cat "$WORK/schedules.toml"
echo "schedules_file = \"$WORK/schedules.toml\"" >> "$WORK/btu_scheduler.toml"
else
echo "== demo database '$DB' (Frappe's BTU tables, sample rows, demo schedules)"
mysql -uroot -e "DROP DATABASE IF EXISTS $DB; CREATE DATABASE $DB CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
mysql -uroot "$DB" < tests/fixtures/frappe_schema.sql
mysql -uroot "$DB" <<'SQL'
-- The sample tasks call BTU's manual tests; point them at stand-ins a plain rq worker can import.
UPDATE `tabBTU Task` SET function_string = REPLACE(function_string, 'btu.manual_tests.', 'demo_tasks.');
UPDATE `tabBTU Task Schedule` SET queue_name = 'default';
INSERT INTO `tabBTU Task Schedule` (name, task, task_description, enabled, queue_name, argument_overrides, cron_string)
VALUES ('DEMO-EVERY-5-SECONDS', 'BTU-00001', 'Ping Now', 1, 'default', NULL, '*/5 * * * * * *'),
       ('DEMO-EVERY-MINUTE', 'BTU-00002', 'Ping With Wait', 1, 'default', '{''seconds_to_wait'': 1}', '* * * * *');
SQL
mysql -uroot "$DB" -e "SELECT name, cron_string, enabled, queue_name FROM \`tabBTU Task Schedule\` ORDER BY name"
cat >> "$WORK/btu_scheduler.toml" <<TOML
startup_without_database_connections = false
mysql_user = "root"
mysql_password = ""
mysql_host = "127.0.0.1"
mysql_port = 3306
mysql_database = "$DB"
job_builder = "function"
TOML
fi

echo "== starting the daemon: twistd -n btu --config $WORK/btu_scheduler.toml (log: $WORK/daemon.log)"
( cd "$WORK" && exec "$ROOT/.venv/bin/twistd" -n --pidfile= btu --config "$WORK/btu_scheduler.toml" ) >"$WORK/daemon.log" 2>&1 &
DAEMON=$!
echo "== starting a real rq worker on queue 'default' for ${SECONDS_TO_RUN} s"
( cd "$WORK" && PYTHONPATH="$ROOT/scripts" exec "$ROOT/.venv/bin/rq" worker --url "$REDIS_URL" default ) &
WORKER=$!
cleanup() { kill "$WORKER" "$DAEMON" 2>/dev/null; wait "$WORKER" "$DAEMON" 2>/dev/null; cleanup_redis; }
trap cleanup EXIT INT TERM

for _ in $(seq 1 50); do [ -S "$WORK/btu_scheduler.sock" ] && break; sleep 0.2; done
echo "== ping over the socket, as the BTU app does: $("$ROOT/.venv/bin/btu" --config "$WORK/btu_scheduler.toml" ping)"
"$ROOT/.venv/bin/btu" --config "$WORK/btu_scheduler.toml" show-scheduled || true
if [ "$SOURCE" = file ]; then
  HALF=$((SECONDS_TO_RUN / 2))
  sleep "$HALF"
  cat >> "$WORK/schedules.toml" <<'TOML'

[[schedule]]
name = "demo-added-every-3-seconds"
cron = "*/3 * * * * * *"
function = "demo_tasks.ping_now"
TOML
  echo "== added demo-added-every-3-seconds to the file; btu reload: $("$ROOT/.venv/bin/btu" --config "$WORK/btu_scheduler.toml" reload)"
  sleep $((SECONDS_TO_RUN - HALF))
else
  sleep "$SECONDS_TO_RUN"
fi
echo "== daemon status"
"$ROOT/.venv/bin/btu" --config "$WORK/btu_scheduler.toml" status || true
if [ "$SOURCE" = file ]; then SHOWN=demo-every-5-seconds; else SHOWN=DEMO-EVERY-5-SECONDS; fi
echo "== run history of $SHOWN (btu history, newest first, with each job's status now)"
"$ROOT/.venv/bin/btu" --config "$WORK/btu_scheduler.toml" history "$SHOWN" -n 5 || true
echo "== last daemon log lines"
tail -n 8 "$WORK/daemon.log"
