#!/usr/bin/env bash
# Make sure the PostgreSQL, Redis and RabbitMQ the tests use are up; start them if they are installed but down.
set -euo pipefail

wait_for() {  # name, check command; up to 30 s
  local name=$1; shift
  for _ in $(seq 1 60); do
    if "$@" >/dev/null 2>&1; then echo "$name: up"; return 0; fi
    sleep 0.5
  done
  echo "$name: still down after 30 s" >&2
  return 1
}

if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
  if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
    echo "PostgreSQL is down; starting it"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
  else
    echo "PostgreSQL is not running on 127.0.0.1:5432 and is not installed here: install and start it" >&2
    exit 1
  fi
fi
wait_for PostgreSQL pg_isready -q -h 127.0.0.1 -p 5432

if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  if command -v redis-server >/dev/null; then
    echo "Redis is down; starting it"
    mkdir -p /var/lib/redis /var/log/redis
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
      --dir /var/lib/redis --logfile /var/log/redis/ci.log
  else
    echo "Redis is not running on 127.0.0.1:6379 and is not installed here: install and start it" >&2
    exit 1
  fi
fi
wait_for Redis redis-cli -h 127.0.0.1 -p 6379 ping

# RabbitMQ: the integration suite runs a subset on it (each test in a vhost of its own).
if command -v rabbitmqctl >/dev/null; then
  if ! rabbitmqctl -q status >/dev/null 2>&1; then
    echo "RabbitMQ is down; starting it"
    rabbitmq-server -detached
  fi
  rabbitmqctl -q await_startup --timeout 60 >/dev/null && echo "RabbitMQ: up"
else
  echo "RabbitMQ is not installed: its tests are skipped (and fail under CI=true)" >&2
fi
