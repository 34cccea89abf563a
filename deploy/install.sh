#!/usr/bin/env bash
# Install what the services behind the tests need, once per machine; a no-op when present.
#
#   deploy/install.sh          check, and install what is missing (apt; needs root)
#   deploy/install.sh --check  only check the packages; exit 1 naming what is missing
#
# Redis (the live fan-out), PostgreSQL with logical replication (the CDC source), Java + Maven,
# the pinned Apache Kafka broker jars from Maven Central (the Kafka source), the Flink Kafka
# connector jar (the Flink engine) and Debian's Chromium (the browser tests). The tests start
# and stop the servers themselves (tests/conftest.py, through deploy/{redis,postgres,kafka}.sh on
# free loopback ports); `make test` runs this first, and so does CI on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")"

check_only=0
case ${1:-} in
  --check) check_only=1 ;;
  "") ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

has_postgres() { ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || command -v postgres >/dev/null 2>&1; }

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
has_postgres || missing+=(postgresql)
command -v java >/dev/null 2>&1 || missing+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || missing+=(maven)

if ((${#missing[@]})); then
  if ((check_only)) || [[ $(id -u) -ne 0 ]]; then
    echo "missing: ${missing[*]} — install with: sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
  echo "installing ${missing[*]} (apt)" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ((check_only)); then
  ./chromium.sh --check # the browser tests' Chromium (tests/web)
else
  ./chromium.sh # Debian's Chromium for the browser tests, driven by Playwright (tests/web)
  ./kafka.sh fetch # cached in ~/.cache/hopcast, checked against kafka-jars.sha256
  ./flink.sh fetch # the Flink Kafka connector jar, checked against flink-jars.sha256
fi
