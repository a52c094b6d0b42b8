#!/usr/bin/env bash
# Starts the test broker, runs pytest, and always stops the broker it started.
# Exit status follows pytest, except that "no tests collected" (5) is a failure.
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
STATE=.rankstream/test
PORT=${RANKSTREAM_TEST_KAFKA_PORT:-19092}
export RANKSTREAM_TEST_KAFKA_PORT=$PORT

started=0
if ! $BIN/rankstream stack status --state-dir "$STATE" >/dev/null 2>&1; then
  # prints "started in N.Ns": the time until the broker answered a metadata request
  $BIN/rankstream stack up --state-dir "$STATE" --port "$PORT" || exit 3
  started=1
fi
cleanup() {
  if [ "$started" = 1 ]; then $BIN/rankstream stack down --state-dir "$STATE" || true; fi
}
trap cleanup EXIT INT TERM

$BIN/python -m pytest "$@"
rc=$?
if [ "$rc" = 5 ]; then
  echo "pytest collected no tests: failing" >&2
  rc=1
fi
exit $rc
