#!/usr/bin/env bash
# Installs Debian's prometheus-alertmanager and prometheus packages when their binaries are missing.
# The notifier's integration tests, its benchmark and `make demo` run the real binaries; this script is
# what their set-up calls. It needs root and apt-get (Debian/Ubuntu); elsewhere it prints what to install
# and exits 3 (tests that need the binaries then fail with that line; see docs/notify.md).
set -euo pipefail
missing=()
command -v prometheus-alertmanager >/dev/null 2>&1 || command -v alertmanager >/dev/null 2>&1 \
  || missing+=(prometheus-alertmanager)
command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
if [ "${#missing[@]}" = 0 ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "rankstream: missing ${missing[*]}: install them (Debian/Ubuntu: sudo apt-get install ${missing[*]};" \
    "elsewhere the release binaries from https://prometheus.io/download/ on PATH as alertmanager/prometheus)" >&2
  exit 3
fi
echo "rankstream: installing ${missing[*]} with apt-get" >&2
export DEBIAN_FRONTEND=noninteractive
# The packages start services through invoke-rc.d; a container has no init, and the tests start their own.
apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null 2>&1 || {
  apt-get update -q >/dev/null 2>&1
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
}
