#!/usr/bin/env bash
# Provision what the Flink engine (hopcast flink run) needs beyond the apache-flink wheel: the
# Kafka connector built for the wheel's Flink release, as a jar from Maven Central
# (org.apache.flink:flink-sql-connector-kafka), fetched once into a cache and checked against
# deploy/flink-jars.sha256. Versions: deploy/versions.env.
#
#   deploy/flink.sh fetch     fetch and verify the jar (cached; a no-op once verified)
#   deploy/flink.sh path      print the directory holding it (what $HOPCAST_FLINK_JARS means)
#   deploy/flink.sh status    exit 0 if it is there and verified, 1 if not
#
# Cache: ${HOPCAST_CACHE:-~/.cache/hopcast}/flink-<version>. Needs mvn and java (17+):
# apt-get install -y openjdk-17-jre-headless maven
set -euo pipefail

here=$(cd "$(dirname "$(readlink -f "$0")")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"

usage() {
  echo "usage: $0 fetch|path|status" >&2
  exit 2
}

[[ $# -eq 1 ]] || usage
action=$1
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

case $action in
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
