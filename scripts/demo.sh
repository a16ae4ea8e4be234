#!/usr/bin/env bash
# The main job: sets up what is missing, then runs the demo (compiles real functions, compares
# with eager and torch.compile, prints timings and one generated kernel).
# `bash scripts/demo.sh --bench` runs the full benchmark suite instead.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ "${1:-}" = "--bench" ]; then
  shift
  exec .venv/bin/python benchmarks/run.py "$@"
fi
exec .venv/bin/python benchmarks/demo.py "$@"
