#!/usr/bin/env bash
# Provision a local PostgreSQL for CDC (and its tests): Debian's server binaries, a cluster of
# its own (initdb on first start), listening on 127.0.0.1 only, trust authentication (local
# tests only: never expose this cluster), wal_level=logical for logical replication, and
# durability traded for speed (fsync=off: a crash of the machine may lose the cluster).
#
#   deploy/postgres.sh start  [--port P] [--dir D]   initdb if needed, start, wait, print the DSN
#   deploy/postgres.sh stop   [--port P] [--dir D]   fast shutdown, wait for the server to exit
#   deploy/postgres.sh status [--port P] [--dir D]   exit 0 if it accepts connections, 1 if not
#
# Defaults: port 5432, dir ${TMPDIR:-/tmp}/hopcast-postgres-<port> (data/ holds the cluster,
# postgres.log the server log; the Unix socket lives in the dir too). The DSN printed by start
# is postgresql://postgres@127.0.0.1:<port>/postgres. PG_OPTS adds server settings at start
# (e.g. PG_OPTS='-c log_min_messages=debug1'); they win over the ones below.
# PostgreSQL refuses to run as root: as root, the cluster belongs to the 'postgres' user that
# Debian's packages create, and the server runs as that user.
# Install the server with: apt-get install -y postgresql
set -euo pipefail

usage() {
  echo "usage: $0 start|stop|status [--port P] [--dir D]" >&2
  exit 2
}

[[ $# -ge 1 ]] || usage
action=$1
shift
port=5432
dir=
while [[ $# -gt 0 ]]; do
  case $1 in
    --port) port=${2:?--port needs a value}; shift 2 ;;
    --dir) dir=${2:?--dir needs a value}; shift 2 ;;
    *) usage ;;
  esac
done
[[ $port =~ ^[0-9]+$ ]] && ((port >= 1 && port <= 65535)) || { echo "bad port: $port" >&2; exit 2; }
dir=${dir:-${TMPDIR:-/tmp}/hopcast-postgres-$port}
data=$dir/data
logfile=$dir/postgres.log
dsn="postgresql://postgres@127.0.0.1:$port/postgres"

# The newest installed server's binaries (Debian keeps them out of PATH), else PATH.
bindir=${PG_BINDIR:-}
if [[ -z $bindir ]]; then
  for candidate in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    if [[ -x $candidate/postgres ]]; then
      bindir=$candidate
      break
    fi
  done
fi
tool() {
  if [[ -n $bindir && -x $bindir/$1 ]]; then
    echo "$bindir/$1"
  elif command -v "$1" >/dev/null 2>&1; then
    command -v "$1"
  else
    echo "$1 not found: install the server with 'apt-get install -y postgresql'" >&2
    exit 3
  fi
}

# Run a server tool as the cluster's owner: ourselves, or 'postgres' when we are root.
as_owner() {
  if ((EUID == 0)); then
    id postgres >/dev/null 2>&1 || {
      echo "running as root needs the 'postgres' user (apt-get install -y postgresql)" >&2
      exit 3
    }
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

ready() {
  "$(tool pg_isready)" -q -h 127.0.0.1 -p "$port" -d postgres -U postgres >/dev/null 2>&1
}

# How long pg_ctl waits for the server to accept connections: seconds normally; the bound is
# for a machine so busy that recovery and start-up take a while (pg_ctl stops waiting at once
# if the server exits).
START_WAIT_S=120

case $action in
  start)
    pg_ctl=$(tool pg_ctl)
    initdb=$(tool initdb)
    if ready; then
      echo "postgres already accepting connections on 127.0.0.1:$port"
      echo "$dsn"
      exit 0
    fi
    mkdir -p "$dir"
    ((EUID == 0)) && chown postgres: "$dir"
    chmod 700 "$dir"
    if [[ ! -f $data/PG_VERSION ]]; then
      as_owner "$initdb" -D "$data" -U postgres --auth=trust --encoding=UTF8 --locale=C.UTF-8 \
        >"$dir/initdb.log" 2>&1 || {
        echo "initdb failed; log: $dir/initdb.log" >&2
        tail -n 20 "$dir/initdb.log" >&2 || true
        exit 1
      }
    fi
    # Settings on the command line win over postgresql.conf: the cluster stays as initdb made it.
    opts="-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories=$dir"
    opts+=" -c wal_level=logical -c max_replication_slots=20 -c max_wal_senders=20"
    opts+=" -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    opts+=" -c max_connections=100 -c shared_buffers=128MB ${PG_OPTS:-}"
    as_owner "$pg_ctl" -D "$data" -l "$logfile" -o "$opts" -w -t "$START_WAIT_S" start >/dev/null || {
      echo "postgres did not start on 127.0.0.1:$port; log: $logfile" >&2
      tail -n 20 "$logfile" >&2 || true
      exit 1
    }
    for _ in $(seq 1 100); do # up to 10 s
      if ready; then
        echo "postgres on 127.0.0.1:$port (dir $dir)"
        echo "$dsn"
        exit 0
      fi
      sleep 0.1
    done
    echo "postgres did not accept connections on 127.0.0.1:$port within 10 s; log: $logfile" >&2
    tail -n 20 "$logfile" >&2 || true
    exit 1
    ;;
  stop)
    pg_ctl=$(tool pg_ctl)
    if [[ -f $data/postmaster.pid ]]; then
      as_owner "$pg_ctl" -D "$data" -m fast -w -t 30 stop >/dev/null || {
        echo "postgres on 127.0.0.1:$port did not stop within 30 s" >&2
        exit 1
      }
    fi
    echo "postgres on 127.0.0.1:$port stopped"
    ;;
  status)
    if ready; then
      echo "postgres accepting connections on 127.0.0.1:$port"
      echo "$dsn"
      exit 0
    fi
    echo "postgres not accepting connections on 127.0.0.1:$port"
    exit 1
    ;;
  *) usage ;;
esac
