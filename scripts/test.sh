#!/usr/bin/env bash
# Runs every kiln test: sets up what is missing, builds and runs the GoogleTest suite, then the
# pytest suite (end to end against eager PyTorch).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VPY=$PWD/.venv/bin/python

echo "== C++ tests (GoogleTest)"
cmake -S . -B build/tests -DKILN_BUILD_TESTS=ON -DKILN_BUILD_PYTHON=OFF -DCMAKE_BUILD_TYPE=Release \
  -DPython_EXECUTABLE="$VPY" >/dev/null
cmake --build build/tests -j "$(nproc)" -- --no-print-directory >/dev/null
# A hang must fail CI quickly with a message, not stall it to the job limit.
timeout 900 build/tests/tests/cpp/kiln_cpp_tests --gtest_brief=1

echo "== Python tests (pytest)"
"$VPY" -m pytest tests/python -q -p no:cacheprovider "$@"
