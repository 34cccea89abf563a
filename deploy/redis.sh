#!/usr/bin/env bash
# Provision a local Redis for the live fan-out (and its tests): Debian's redis-server,
# daemonized, listening on 127.0.0.1 only, no persistence (no RDB snapshots, AOF off).
#
#   deploy/redis.sh start  [--port P] [--dir D]   start it and wait until PING answers
#   deploy/redis.sh stop   [--port P] [--dir D]   SHUTDOWN NOSAVE, wait for the process to exit
#   deploy/redis.sh status [--port P] [--dir D]   exit 0 if it answers PING, 1 if not
#
# Defaults: port 6379, dir ${TMPDIR:-/tmp}/hopcast-redis-<port> (holds redis.pid, redis.log).
# Install the server with: apt-get install -y redis-server
set -euo pipefail

usage() {
  echo "usage: $0 start|stop|status [--port P] [--dir D]" >&2
  exit 2
}

[[ $# -ge 1 ]] || usage
action=$1
shift
port=6379
dir=
while [[ $# -gt 0 ]]; do
  case $1 in
    --port) port=${2:?--port needs a value}; shift 2 ;;
    --dir) dir=${2:?--dir needs a value}; shift 2 ;;
    *) usage ;;
  esac
done
[[ $port =~ ^[0-9]+$ ]] && ((port >= 1 && port <= 65535)) || { echo "bad port: $port" >&2; exit 2; }
dir=${dir:-${TMPDIR:-/tmp}/hopcast-redis-$port}
pidfile=$dir/redis.pid
logfile=$dir/redis.log

ping() {
  [[ $(redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null) == PONG ]]
}

# A daemonized server is re-parented; where nobody reaps promptly it lingers as a zombie.
alive() {
  [[ -n $1 && -e /proc/$1 ]] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null
}

need() {
  command -v "$1" >/dev/null 2>&1 || {
    echo "$1 not found: install it with 'apt-get install -y redis-server'" >&2
    exit 3
  }
}

case $action in
  start)
    need redis-server
    need redis-cli
    if ping; then
      echo "redis already answering on 127.0.0.1:$port"
      exit 0
    fi
    mkdir -p "$dir"
    rm -f "$pidfile"
    redis-server --bind 127.0.0.1 --port "$port" --daemonize yes \
      --dir "$dir" --pidfile "$pidfile" --logfile "$logfile" \
      --save '' --appendonly no --protected-mode yes \
      --maxclients 10000 --tcp-backlog 511
    for _ in $(seq 1 100); do # up to 10 s
      if ping; then
        echo "redis on 127.0.0.1:$port (dir $dir)"
        exit 0
      fi
      sleep 0.1
    done
    echo "redis did not answer PING on 127.0.0.1:$port within 10 s; log: $logfile" >&2
    tail -n 20 "$logfile" >&2 || true
    exit 1
    ;;
  stop)
    need redis-cli
    pid=
    [[ -f $pidfile ]] && pid=$(cat "$pidfile")
    if ping; then
      redis-cli -h 127.0.0.1 -p "$port" shutdown nosave >/dev/null 2>&1 || true
    elif alive "$pid"; then
      kill -TERM "$pid"
    fi
    for _ in $(seq 1 200); do # up to 10 s
      if ! ping && ! alive "$pid"; then
        rm -f "$pidfile"
        echo "redis on 127.0.0.1:$port stopped"
        exit 0
      fi
      sleep 0.05
    done
    echo "redis on 127.0.0.1:$port did not stop within 10 s" >&2
    exit 1
    ;;
  status)
    need redis-cli
    if ping; then
      echo "redis answering on 127.0.0.1:$port"
      exit 0
    fi
    echo "redis not answering on 127.0.0.1:$port"
    exit 1
    ;;
  *) usage ;;
esac
