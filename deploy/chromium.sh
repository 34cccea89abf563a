#!/usr/bin/env bash
# Install Debian's Chromium for the browser tests (tests/web), once per machine; a no-op when
# present.
#
#   deploy/chromium.sh          check, and install what is missing (apt; needs root)
#   deploy/chromium.sh --check  only check; exit 1 saying what is missing
#
# The tests drive it with Playwright for Python (the `playwright` package in the dev extra) at
# /usr/bin/chromium, headless; `playwright install` is not used (it downloads its own browser
# builds, which a machine without that download cannot run). Override the binary with
# $HOPCAST_CHROMIUM.
set -euo pipefail

check_only=0
case ${1:-} in
  --check) check_only=1 ;;
  "") ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

binary=${HOPCAST_CHROMIUM:-/usr/bin/chromium}
if [[ -x $binary ]]; then
  exit 0
fi
if ((check_only)) || [[ $(id -u) -ne 0 ]]; then
  echo "missing: chromium ($binary) — install with: sudo apt-get install -y chromium" >&2
  exit 1
fi
echo "installing chromium (apt)" >&2
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
[[ -x $binary ]] || { echo "chromium installed but $binary is missing" >&2; exit 1; }
