#!/usr/bin/env bash
# Provision a local Apache Kafka for the Kafka source (and its tests): one node in KRaft mode
# (broker and controller in one JVM), listening on 127.0.0.1 only, plaintext, single replica.
# The broker comes as jars from Maven Central (no tarball download): `fetch` resolves
# org.apache.kafka:kafka_<scala>:<version> and its runtime dependencies with Maven into a cache,
# once, and checks every jar against deploy/kafka-jars.sha256. Versions: deploy/versions.env.
#
#   deploy/kafka.sh fetch                                   fetch and verify the jars (cached)
#   deploy/kafka.sh start  [--port P] [--controller-port C] [--dir D]
#                          format the storage if new, start, wait until the broker serves
#   deploy/kafka.sh stop   [--port P] [--dir D]             stop it, wait for the JVM to exit
#   deploy/kafka.sh status [--port P] [--dir D]             exit 0 if it is up, 1 if not
#
# Defaults: port 9092, controller port P+1, dir ${TMPDIR:-/tmp}/hopcast-kafka-<port> (holds
# server.properties, data/, kafka.pid, kafka.log); cache ${HOPCAST_CACHE:-~/.cache/hopcast}.
# KAFKA_HEAP (default 512m) sets the JVM heap. Needs java (17+) and mvn:
# apt-get install -y openjdk-17-jre-headless maven
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"

usage() {
  echo "usage: $0 fetch|start|stop|status [--port P] [--controller-port C] [--dir D]" >&2
  exit 2
}

[[ $# -ge 1 ]] || usage
action=$1
shift
port=9092
cport=
dir=
while [[ $# -gt 0 ]]; do
  case $1 in
    --port) port=${2:?--port needs a value}; shift 2 ;;
    --controller-port) cport=${2:?--controller-port needs a value}; shift 2 ;;
    --dir) dir=${2:?--dir needs a value}; shift 2 ;;
    *) usage ;;
  esac
done
valid_port() {
  [[ $1 =~ ^[0-9]+$ ]] && (($1 >= 1 && $1 <= 65535)) || { echo "bad port: $1" >&2; exit 2; }
}
valid_port "$port"
cport=${cport:-$((port + 1))}
valid_port "$cport"
dir=${dir:-${TMPDIR:-/tmp}/hopcast-kafka-$port}
cache=${HOPCAST_CACHE:-$HOME/.cache/hopcast}/kafka-$KAFKA_SCALA-$KAFKA_VERSION
libs=$cache/libs
sums=$here/kafka-jars.sha256
pidfile=$dir/kafka.pid
logfile=$dir/kafka.log

need() {
  command -v "$1" >/dev/null 2>&1 || {
    echo "$1 not found: install it with 'apt-get install -y $2'" >&2
    exit 3
  }
}

verify() {
  [[ -f $sums ]] || { echo "missing $sums" >&2; return 1; }
  local want have
  want=$(awk '{print $2}' "$sums" | sort)
  have=$(cd "$libs" && ls -1 ./*.jar 2>/dev/null | sed 's|^\./||' | sort)
  if [[ $want != "$have" ]]; then
    echo "the jars in $libs are not the pinned set in $sums:" >&2
    diff <(echo "$want") <(echo "$have") >&2 || true
    return 1
  fi
  (cd "$libs" && sha256sum --quiet --strict -c "$sums") >&2
}

fetch() {
  if [[ -f $cache/.verified ]] && verify 2>/dev/null; then
    return 0
  fi
  need mvn maven
  need java openjdk-17-jre-headless
  mkdir -p "$cache"
  rm -rf "$libs" "$cache/.verified"
  cat >"$cache/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>hopcast.deploy</groupId>
  <artifactId>kafka-broker</artifactId>
  <version>$KAFKA_VERSION</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_$KAFKA_SCALA</artifactId>
      <version>$KAFKA_VERSION</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
      <version>$LOG4J_VERSION</version>
    </dependency>
  </dependencies>
</project>
POM
  echo "fetching Apache Kafka $KAFKA_VERSION (Scala $KAFKA_SCALA) jars from Maven Central into $libs" >&2
  if ! (cd "$cache" && mvn -q -B -f pom.xml \
    "org.apache.maven.plugins:maven-dependency-plugin:$MAVEN_DEPENDENCY_PLUGIN:copy-dependencies" \
    -DincludeScope=runtime -DoutputDirectory="$libs" >"$cache/fetch.log" 2>&1); then
    echo "mvn could not fetch the jars; log: $cache/fetch.log" >&2
    tail -n 20 "$cache/fetch.log" >&2 || true
    exit 1
  fi
  verify || { echo "checksum verification failed for $libs" >&2; exit 1; }
  touch "$cache/.verified"
}

port_open() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

alive() {
  [[ -n $1 && -e /proc/$1 ]] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null
}

pid_of() {
  [[ -f $pidfile ]] && cat "$pidfile" || true
}

up() {
  local pid
  pid=$(pid_of)
  alive "$pid" && port_open "$port" && grep -q 'Kafka Server started' "$logfile" 2>/dev/null
}

case $action in
  fetch)
    fetch
    echo "kafka $KAFKA_VERSION jars in $libs"
    ;;
  start)
    fetch
    if up; then
      echo "kafka already serving on 127.0.0.1:$port"
      exit 0
    fi
    if port_open "$port" || port_open "$cport"; then
      echo "port $port or $cport on 127.0.0.1 is taken by another process" >&2
      exit 1
    fi
    mkdir -p "$dir/data"
    cat >"$dir/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$dir/data
num.partitions=1
auto.create.topics.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
PROPS
    cat >"$dir/log4j2.properties" <<LOG
status = warn
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = warn
rootLogger.appenderRef.out.ref = out
logger.kafka.name = kafka
logger.kafka.level = info
logger.server.name = org.apache.kafka
logger.server.level = warn
LOG
    java_opts=(-Xms"${KAFKA_HEAP:-512m}" -Xmx"${KAFKA_HEAP:-512m}" -XX:+UseG1GC
      -Djava.awt.headless=true -Dlog4j2.configurationFile="$dir/log4j2.properties"
      -cp "$libs/*")
    if [[ ! -f $dir/data/meta.properties ]]; then
      cluster=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')
      java "${java_opts[@]}" kafka.tools.StorageTool format -t "$cluster" \
        -c "$dir/server.properties" >"$dir/format.log" 2>&1 || {
        echo "formatting the storage failed; log: $dir/format.log" >&2
        tail -n 20 "$dir/format.log" >&2 || true
        exit 1
      }
    fi
    : >"$logfile"
    nohup setsid java "${java_opts[@]}" kafka.Kafka "$dir/server.properties" \
      >>"$logfile" 2>&1 </dev/null &
    echo $! >"$pidfile"
    # A JVM broker starts in seconds; the bound is for a machine so busy that it takes minutes
    # (a broker that died is seen at once: the loop stops when its process is gone).
    for _ in $(seq 1 1800); do # up to 180 s
      if up; then
        echo "kafka $KAFKA_VERSION on 127.0.0.1:$port (controller $cport, dir $dir)"
        exit 0
      fi
      alive "$(pid_of)" || break
      sleep 0.1
    done
    if alive "$(pid_of)"; then
      echo "kafka did not come up on 127.0.0.1:$port within 180 s; log: $logfile" >&2
    else
      echo "kafka exited during its start on 127.0.0.1:$port; log: $logfile" >&2
    fi
    tail -n 30 "$logfile" >&2 || true
    pid=$(pid_of)
    alive "$pid" && kill -KILL "$pid" 2>/dev/null || true
    exit 1
    ;;
  stop)
    pid=$(pid_of)
    if alive "$pid"; then
      kill -TERM "$pid"
      for _ in $(seq 1 300); do # up to 30 s for a controlled shutdown
        alive "$pid" || break
        sleep 0.1
      done
      if alive "$pid"; then
        echo "kafka (pid $pid) did not stop within 30 s; killing it" >&2
        kill -KILL "$pid" 2>/dev/null || true
      fi
    fi
    rm -f "$pidfile"
    echo "kafka on 127.0.0.1:$port stopped"
    ;;
  status)
    # Without the dir (no pid file to check) an answering port is taken for the broker.
    pid=$(pid_of)
    if port_open "$port" && { [[ -z $pid ]] || alive "$pid"; }; then
      echo "kafka serving on 127.0.0.1:$port"
      exit 0
    fi
    echo "kafka not serving on 127.0.0.1:$port"
    exit 1
    ;;
  *) usage ;;
esac
