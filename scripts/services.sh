#!/usr/bin/env bash
# Start MariaDB and Redis if they are not answering (the commands this machine
# kind uses), then wait until both answer.  Safe to run when they are up.
set -u

redis_up() { redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; }
mariadb_up() { mysqladmin -uroot --protocol=tcp -h127.0.0.1 ping >/dev/null 2>&1 || mysql -uroot -e 'select 1' >/dev/null 2>&1; }

if ! redis_up; then
  echo "starting Redis"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
fi
if ! mariadb_up; then
  echo "starting MariaDB"
  mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld 2>/dev/null || true
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
fi
for _ in $(seq 1 60); do
  if redis_up && mariadb_up; then exit 0; fi
  sleep 1
done
echo "MariaDB or Redis did not come up within 60 s" >&2
exit 1
