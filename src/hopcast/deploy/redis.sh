#!/usr/bin/env bash
# Provision a local Redis for the live fan-out and the Redis KV backend (and their tests):
# Debian's redis-server, detached, listening on 127.0.0.1 only, no persistence (no RDB
# snapshots, AOF off). Either one server, or a Redis Cluster of N masters (no replicas) on
# consecutive ports, for the scale-out store.
#
#   deploy/redis.sh start  [--port P] [--dir D]   start it and wait until PING answers
#   deploy/redis.sh stop   [--port P] [--dir D]   SHUTDOWN NOSAVE, wait for the process to exit
#   deploy/redis.sh status [--port P] [--dir D]   exit 0 if it answers PING, 1 if not
#
#   deploy/redis.sh cluster-start  [--port P] [--nodes N] [--dir D]
#       start N cluster-enabled servers on ports P .. P+N-1 (cluster bus: port + 10000), join
#       them with `redis-cli --cluster create`, wait until every node says cluster_state:ok
#   deploy/redis.sh cluster-stop   [--port P] [--nodes N] [--dir D]   shut every node down
#   deploy/redis.sh cluster-status [--port P] [--nodes N] [--dir D]
#       one line per node; exit 0 if every node answers with cluster_state:ok, 1 if not
#
# Defaults: port 6379, dir ${TMPDIR:-/tmp}/hopcast-redis-<port> (holds redis.pid, redis.log).
# Cluster: port 7000, 3 nodes (at least 3: Redis Cluster needs 3 masters), dir
# ${TMPDIR:-/tmp}/hopcast-redis-cluster-<port> with one sub-directory per node (redis.pid,
# redis.log, nodes.conf); cluster-start records N there, so stop and status find every node.
# Install the server with: apt-get install -y redis-server
set -euo pipefail

usage() {
  echo "usage: $0 start|stop|status [--port P] [--dir D]" >&2
  echo "       $0 cluster-start|cluster-stop|cluster-status [--port P] [--nodes N] [--dir D]" >&2
  exit 2
}

[[ $# -ge 1 ]] || usage
action=$1
shift
cluster=0
case $action in
  start | stop | status) ;;
  cluster-start | cluster-stop | cluster-status) cluster=1 ;;
  *) usage ;;
esac
port=
nodes=
dir=
while [[ $# -gt 0 ]]; do
  case $1 in
    --port) port=${2:?--port needs a value}; shift 2 ;;
    --dir) dir=${2:?--dir needs a value}; shift 2 ;;
    --nodes)
      ((cluster)) || usage
      nodes=${2:?--nodes needs a value}; shift 2 ;;
    *) usage ;;
  esac
done
if ((cluster)); then
  port=${port:-7000}
else
  port=${port:-6379}
fi
[[ $port =~ ^[0-9]+$ ]] && ((port >= 1 && port <= 65535)) || { echo "bad port: $port" >&2; exit 2; }

ping_port() {
  [[ $(redis-cli -h 127.0.0.1 -p "$1" ping 2>/dev/null) == PONG ]]
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

# Shut the server on port $1 down (pid file $2) and wait up to 10 s for it to be gone.
shutdown_port() {
  local p=$1 pidfile=$2 pid=
  [[ -f $pidfile ]] && pid=$(cat "$pidfile")
  if ping_port "$p"; then
    redis-cli -h 127.0.0.1 -p "$p" shutdown nosave >/dev/null 2>&1 || true
  elif alive "$pid"; then
    kill -TERM "$pid"
  fi
  for _ in $(seq 1 200); do
    if ! ping_port "$p" && ! alive "$pid"; then
      rm -f "$pidfile"
      return 0
    fi
    sleep 0.05
  done
  return 1
}

# How long a start waits for the server to answer PING: a second normally; the bound is for a
# machine so busy that even a small server's start takes a while.
START_WAIT_S=30

# Start redis-server with options "$@" in the background, detached (its own session, no
# terminal), and print its pid. Not --daemonize: with the pid known at once, a server that
# cannot start (its port taken) is seen at once instead of after the whole wait. It still
# writes its --pidfile, which stop and status use.
launch() {
  nohup setsid redis-server "$@" --daemonize no </dev/null >/dev/null 2>&1 &
  echo $!
}

# Wait for PING on port $1 from the server with pid $3 (log $2); if it exits first or does not
# answer within START_WAIT_S, show the log's tail and exit 1.
await_ping() {
  local deadline=$((SECONDS + START_WAIT_S))
  until ping_port "$1"; do
    if ! alive "$3"; then
      echo "redis on 127.0.0.1:$1 exited during its start; log: $2" >&2
      tail -n 20 "$2" >&2 || true
      exit 1
    fi
    if ((SECONDS >= deadline)); then
      echo "redis did not answer PING on 127.0.0.1:$1 within $START_WAIT_S s; log: $2" >&2
      tail -n 20 "$2" >&2 || true
      exit 1
    fi
    sleep 0.1
  done
}

# -- one server ---------------------------------------------------------------------------------

if ((!cluster)); then
  dir=${dir:-${TMPDIR:-/tmp}/hopcast-redis-$port}
  pidfile=$dir/redis.pid
  logfile=$dir/redis.log
  case $action in
    start)
      need redis-server
      need redis-cli
      if ping_port "$port"; then
        echo "redis already answering on 127.0.0.1:$port"
        exit 0
      fi
      mkdir -p "$dir"
      rm -f "$pidfile"
      pid=$(launch --bind 127.0.0.1 --port "$port" \
        --dir "$dir" --pidfile "$pidfile" --logfile "$logfile" \
        --save '' --appendonly no --protected-mode yes \
        --maxclients 10000 --tcp-backlog 511)
      await_ping "$port" "$logfile" "$pid"
      echo "redis on 127.0.0.1:$port (dir $dir)"
      ;;
    stop)
      need redis-cli
      if shutdown_port "$port" "$pidfile"; then
        echo "redis on 127.0.0.1:$port stopped"
        exit 0
      fi
      echo "redis on 127.0.0.1:$port did not stop within 10 s" >&2
      exit 1
      ;;
    status)
      need redis-cli
      if ping_port "$port"; then
        echo "redis answering on 127.0.0.1:$port"
        exit 0
      fi
      echo "redis not answering on 127.0.0.1:$port"
      exit 1
      ;;
  esac
  exit 0
fi

# -- a Redis Cluster ----------------------------------------------------------------------------

dir=${dir:-${TMPDIR:-/tmp}/hopcast-redis-cluster-$port}
if [[ -z $nodes && $action != cluster-start && -f $dir/nodes ]]; then
  nodes=$(cat "$dir/nodes")
fi
nodes=${nodes:-3}
[[ $nodes =~ ^[0-9]+$ ]] && ((nodes >= 3)) || {
  echo "bad --nodes: $nodes (a Redis Cluster needs at least 3 masters)" >&2
  exit 2
}
last=$((port + nodes - 1))
((last + 10000 <= 65535)) || {
  echo "ports $port..$last too high: each node's cluster bus port (port + 10000) must be <= 65535" >&2
  exit 2
}
ports=$(seq "$port" "$last")

# "field" of CLUSTER INFO on port $1 (empty if the node does not answer).
cluster_field() {
  redis-cli -h 127.0.0.1 -p "$1" cluster info 2>/dev/null | tr -d '\r' | sed -n "s/^$2://p"
}
cluster_ok() {
  [[ $(cluster_field "$1" cluster_state) == ok ]]
}
all_ok() {
  local p
  for p in $ports; do cluster_ok "$p" || return 1; done
}
cluster_enabled() {
  redis-cli -h 127.0.0.1 -p "$1" info cluster 2>/dev/null | tr -d '\r' | grep -qx 'cluster_enabled:1'
}

case $action in
  cluster-start)
    need redis-server
    need redis-cli
    if all_ok; then
      echo "redis cluster already ok on 127.0.0.1:$port..$last"
      exit 0
    fi
    mkdir -p "$dir"
    echo "$nodes" >"$dir/nodes"
    fresh=1
    for p in $ports; do
      if ping_port "$p"; then
        fresh=0
        cluster_enabled "$p" || {
          echo "127.0.0.1:$p is taken by a Redis without cluster support; pick another --port" >&2
          exit 1
        }
      fi
    done
    declare -A pids=()
    for p in $ports; do
      ping_port "$p" && continue
      node=$dir/$p
      mkdir -p "$node"
      rm -f "$node/redis.pid"
      # A brand-new cluster starts from empty node tables; a node restarted into a running
      # cluster keeps its nodes.conf and rejoins.
      ((fresh)) && rm -f "$node/nodes.conf"
      pids[$p]=$(launch --bind 127.0.0.1 --port "$p" \
        --dir "$node" --pidfile "$node/redis.pid" --logfile "$node/redis.log" \
        --save '' --appendonly no --protected-mode yes \
        --maxclients 10000 --tcp-backlog 511 \
        --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 5000)
    done
    for p in "${!pids[@]}"; do await_ping "$p" "$dir/$p/redis.log" "${pids[$p]}"; done
    assigned=0
    for p in $ports; do
      n=$(cluster_field "$p" cluster_slots_assigned)
      ((${n:-0} > assigned)) && assigned=${n:-0}
    done
    if ((assigned == 0)); then
      addrs=()
      for p in $ports; do addrs+=("127.0.0.1:$p"); done
      if ! out=$(redis-cli --cluster create "${addrs[@]}" --cluster-replicas 0 --cluster-yes 2>&1); then
        echo "redis-cli --cluster create failed:" >&2
        echo "$out" | tail -n 20 >&2
        exit 1
      fi
    fi
    deadline=$((SECONDS + 2 * START_WAIT_S)) # the nodes gossip the new slots around
    while ((SECONDS < deadline)); do
      if all_ok; then
        echo "redis cluster on 127.0.0.1:$port..$last ($nodes masters, dir $dir)"
        exit 0
      fi
      sleep 0.1
    done
    echo "redis cluster on 127.0.0.1:$port..$last did not reach cluster_state:ok within $((START_WAIT_S * 2)) s" >&2
    for p in $ports; do
      echo "  127.0.0.1:$p cluster_state:$(cluster_field "$p" cluster_state)" >&2
    done
    exit 1
    ;;
  cluster-stop)
    need redis-cli
    failed=0
    for p in $ports; do
      if ! shutdown_port "$p" "$dir/$p/redis.pid"; then
        echo "redis cluster node 127.0.0.1:$p did not stop within 10 s" >&2
        failed=1
      fi
    done
    ((failed)) && exit 1
    rm -f "$dir/nodes"
    echo "redis cluster on 127.0.0.1:$port..$last stopped"
    ;;
  cluster-status)
    need redis-cli
    up=1
    for p in $ports; do
      if ! ping_port "$p"; then
        echo "127.0.0.1:$p not answering"
        up=0
      elif ! cluster_ok "$p"; then
        echo "127.0.0.1:$p answering, cluster_state:$(cluster_field "$p" cluster_state)"
        up=0
      else
        echo "127.0.0.1:$p answering, cluster_state:ok"
      fi
    done
    if ((up)); then
      echo "redis cluster ok on 127.0.0.1:$port..$last"
      exit 0
    fi
    echo "redis cluster not ok on 127.0.0.1:$port..$last"
    exit 1
    ;;
esac
