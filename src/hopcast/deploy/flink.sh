#!/usr/bin/env bash
# Provision what the Flink engine (hopcast flink run) needs beyond the apache-flink wheel: the
# Kafka connector built for the wheel's Flink release, as a jar from Maven Central
# (org.apache.flink:flink-sql-connector-kafka), fetched once into a cache and checked against
# deploy/flink-jars.sha256. Versions: deploy/versions.env.
#
#   deploy/flink.sh fetch     fetch and verify the jar (cached; a no-op once verified)
#   deploy/flink.sh path      print the directory holding it (what $HOPCAST_FLINK_JARS means)
#   deploy/flink.sh status    exit 0 if it is there and verified, 1 if not
#   deploy/flink.sh cluster-start [--port 8081] [--rpc-port P] [--taskmanagers 1] [--slots 2]
#                             [--dir D] [--python PY]
#                             a standalone Flink cluster on loopback (one JobManager, N
#                             TaskManager processes with --slots slots each) from the
#                             apache-flink wheel PY's interpreter has, for
#                             `hopcast flink run --jobmanager 127.0.0.1:PORT`; its Python
#                             functions run in PY's environment (hopcast and PyFlink installed);
#                             the JobManager's RPC port is --rpc-port (default PORT+1); waits up
#                             to 180 s for every TaskManager to register (JVMs starting on a
#                             busy machine). In thread mode a TaskManager runs all its Python
#                             under one interpreter lock: more cores need more TaskManagers
#                             (--taskmanagers 2 --slots 1 puts a parallelism-2 job on two)
#   deploy/flink.sh cluster-stop  [--port 8081] [--dir D]
#   deploy/flink.sh cluster-status [--port 8081]   exit 0 if its REST endpoint answers
#
# Cache: ${HOPCAST_CACHE:-~/.cache/hopcast}/flink-<version>. Needs mvn and java (17+):
# apt-get install -y openjdk-17-jre-headless maven
set -euo pipefail

here=$(cd "$(dirname "$(readlink -f "$0")")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"

usage() {
  echo "usage: $0 fetch|path|status|cluster-start|cluster-stop|cluster-status [--port P] [--rpc-port P] [--taskmanagers N] [--slots N] [--dir D] [--python PY]" >&2
  exit 2
}

[[ $# -ge 1 ]] || usage
action=$1
shift
port=8081
rpc_port=
slots=2
taskmanagers=1
dir=
python=${HOPCAST_PYTHON:-python3}
while [[ $# -gt 0 ]]; do
  case $1 in
    --port) port=${2:?--port needs a value}; shift 2 ;;
    --rpc-port) rpc_port=${2:?--rpc-port needs a value}; shift 2 ;;
    --slots) slots=${2:?--slots needs a value}; shift 2 ;;
    --taskmanagers) taskmanagers=${2:?--taskmanagers needs a value}; shift 2 ;;
    --dir) dir=${2:?--dir needs a value}; shift 2 ;;
    --python) python=${2:?--python needs a value}; shift 2 ;;
    *) usage ;;
  esac
done
[[ $port =~ ^[0-9]+$ ]] && ((port >= 1 && port <= 65534)) || { echo "bad port: $port" >&2; exit 2; }
rpc_port=${rpc_port:-$((port + 1))}
[[ $rpc_port =~ ^[0-9]+$ ]] && ((rpc_port >= 1 && rpc_port <= 65535)) || { echo "bad rpc port: $rpc_port" >&2; exit 2; }
[[ $slots =~ ^[0-9]+$ ]] && ((slots >= 1)) || { echo "bad slots: $slots" >&2; exit 2; }
[[ $taskmanagers =~ ^[0-9]+$ ]] && ((taskmanagers >= 1 && taskmanagers <= 16)) || {
  echo "bad taskmanagers: $taskmanagers (1..16)" >&2
  exit 2
}
dir=${dir:-${TMPDIR:-/tmp}/hopcast-flink-$port}
cache=${HOPCAST_CACHE:-$HOME/.cache/hopcast}/flink-$FLINK_VERSION
sums=$here/flink-jars.sha256
jar=flink-sql-connector-kafka-$FLINK_KAFKA_CONNECTOR.jar

need() {
  command -v "$1" >/dev/null 2>&1 || {
    echo "$1 not found: install it with 'apt-get install -y $2'" >&2
    exit 3
  }
}

verify() {
  [[ -f $cache/$jar ]] || return 1
  (cd "$cache" && sha256sum --quiet --strict -c "$sums") >&2
}

fetch() {
  if [[ -f $cache/.verified ]] && verify 2>/dev/null; then
    return 0
  fi
  need mvn maven
  need java openjdk-17-jre-headless
  mkdir -p "$cache"
  rm -f "$cache/.verified" "$cache/$jar"
  echo "fetching org.apache.flink:flink-sql-connector-kafka:$FLINK_KAFKA_CONNECTOR from Maven Central into $cache" >&2
  if ! (cd "$cache" && mvn -q -B \
    "org.apache.maven.plugins:maven-dependency-plugin:$MAVEN_DEPENDENCY_PLUGIN:copy" \
    -Dartifact="org.apache.flink:flink-sql-connector-kafka:$FLINK_KAFKA_CONNECTOR" \
    -DoutputDirectory="$cache" >"$cache/fetch.log" 2>&1); then
    echo "mvn could not fetch the connector; log: $cache/fetch.log" >&2
    tail -n 20 "$cache/fetch.log" >&2 || true
    exit 1
  fi
  verify || { echo "checksum verification failed for $cache/$jar" >&2; exit 1; }
  touch "$cache/.verified"
}

# the REST endpoint answers with at least $1 TaskManagers registered (default 1)
rest_up() {
  local n
  n=$(curl -fsS "http://127.0.0.1:$port/overview" 2>/dev/null | grep -o '"taskmanagers":[0-9]*' | cut -d: -f2) || return 1
  [[ -n $n ]] && ((n >= ${1:-1}))
}

pyflink_home() {
  "$python" -c 'import os, pyflink; print(os.path.dirname(pyflink.__file__))' 2>/dev/null || {
    echo "no PyFlink in $python: pip install 'hopcast[flink]' (or pass --python)" >&2
    exit 3
  }
}

cluster() {
  local home conf
  home=$(pyflink_home)
  conf=$dir/conf
  export FLINK_CONF_DIR=$conf FLINK_LOG_DIR=$dir/log FLINK_PID_DIR=$dir FLINK_LIB_DIR=$dir/lib
  "$home/bin/$1" >>"$dir/cluster.log" 2>&1
}

case $action in
  cluster-start)
    need java openjdk-17-jre-headless
    if rest_up; then
      echo "flink cluster already up on 127.0.0.1:$port"
      exit 0
    fi
    home=$(pyflink_home)
    mkdir -p "$dir/conf" "$dir/log" "$dir/lib"
    # the wheel's lib/ plus its Python runtime (opt/flink-python): on the cluster's class path,
    # pemja's native library is loaded once per TaskManager; shipped with each job instead, the
    # second job on a TaskManager fails to load it again (NoSuchFieldException: loadedLibraryNames)
    rm -f "$dir"/lib/*.jar
    ln -s "$home"/lib/*.jar "$home"/opt/flink-python-*.jar "$dir/lib/"
    echo "$python" >"$dir/python" # cluster-stop uses the same Flink
    cp "$home"/conf/log4j*.properties "$dir/conf/"
    echo localhost:$port >"$dir/conf/masters"
    # start-cluster.sh starts one TaskManager per line, locally for localhost (no ssh)
    for _ in $(seq 1 "$taskmanagers"); do echo localhost; done >"$dir/conf/workers"
    # thread mode runs the job's Python inside the TaskManager: it needs the interpreter's
    # packages (and hopcast's directory, for an editable install) on PYTHONPATH
    pythonpath=$("$python" -c 'from hopcast.stream.engines.flink import python_path; print(python_path())')
    cat >"$dir/conf/config.yaml" <<CONF
jobmanager.rpc.address: localhost
jobmanager.rpc.port: $rpc_port
jobmanager.bind-host: localhost
jobmanager.memory.process.size: 1024m
taskmanager.bind-host: localhost
taskmanager.host: localhost
taskmanager.numberOfTaskSlots: $slots
taskmanager.memory.process.size: 1280m
rest.address: localhost
rest.bind-address: localhost
rest.port: $port
parallelism.default: 1
python.executable: $python
classloader.parent-first-patterns.additional: pemja.
CONF
    PYTHONPATH=$pythonpath cluster start-cluster.sh
    for _ in $(seq 1 360); do # up to 180 s
      rest_up "$taskmanagers" && {
        echo "flink $FLINK_VERSION cluster on 127.0.0.1:$port, $taskmanagers TaskManager(s) x $slots slot(s) (dir $dir)"
        exit 0
      }
      sleep 0.5
    done
    echo "the flink cluster did not answer on 127.0.0.1:$port with $taskmanagers TaskManager(s) within 180 s; logs: $dir/log" >&2
    tail -n 20 "$dir"/log/*.log >&2 2>/dev/null || true
    exit 1
    ;;
  cluster-stop)
    [[ -d $dir/conf ]] || { echo "no flink cluster in $dir"; exit 0; }
    [[ -f $dir/python ]] && python=$(cat "$dir/python")
    cluster stop-cluster.sh || true
    for _ in $(seq 1 60); do
      curl -fsS "http://127.0.0.1:$port/overview" >/dev/null 2>&1 || {
        echo "flink cluster on 127.0.0.1:$port stopped"
        exit 0
      }
      sleep 0.5
    done
    echo "the flink cluster on 127.0.0.1:$port is still up" >&2
    exit 1
    ;;
  cluster-status)
    if rest_up; then echo "flink cluster up on 127.0.0.1:$port"; else echo "flink cluster down on 127.0.0.1:$port"; exit 1; fi
    ;;
  fetch)
    fetch
    echo "flink $FLINK_VERSION kafka connector in $cache"
    ;;
  path)
    echo "$cache"
    ;;
  status)
    if [[ -f $cache/.verified ]] && verify 2>/dev/null; then
      echo "flink kafka connector: $cache/$jar"
    else
      echo "flink kafka connector: missing (deploy/flink.sh fetch)"
      exit 1
    fi
    ;;
  *) usage ;;
esac
