#!/usr/bin/env bash
# Runs every tests/benchmarks/bench_*.py script; each starts what it needs and
# prints one JSON line last. The lines are collected in .rankstream/bench.jsonl.
set -uo pipefail
cd "$(dirname "$0")/.."
mkdir -p .rankstream
out=.rankstream/bench.jsonl
: > "$out"
rc=0
for script in tests/benchmarks/bench_*.py; do
  echo "== $script" >&2
  if line=$(.venv/bin/python "$script" | tail -n 1); then
    echo "$line" | tee -a "$out"
  else
    echo "benchmark $script failed" >&2
    rc=1
  fi
done
exit $rc
