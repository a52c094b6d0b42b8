#!/usr/bin/env bash
# Type-checks the packages named in TYPED (default: all of rankstream, incl. producer, stream jobs, sinks) with mypy.
# The source tree maps producer/, stream_jobs/ and sinks/ to rankstream.* (setuptools package-dir),
# which mypy cannot follow through the editable install; a tree of symlinks under .rankstream/mypy
# gives it the installed layout.
set -euo pipefail
cd "$(dirname "$0")/.."
root=.rankstream/mypy/rankstream
rm -rf .rankstream/mypy && mkdir -p "$root"
for entry in rankstream/*; do ln -s "$PWD/$entry" "$root/$(basename "$entry")"; done
for pkg in producer stream_jobs sinks; do ln -s "$PWD/$pkg" "$root/$pkg"; done
args=()
for pkg in ${TYPED:-rankstream}; do args+=(-p "$pkg"); done
MYPYPATH=.rankstream/mypy exec .venv/bin/mypy "${args[@]}"
