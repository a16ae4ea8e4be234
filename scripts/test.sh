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

# The C++ tests again under AddressSanitizer + UndefinedBehaviorSanitizer + LeakSanitizer
# (scripts/sanitize.sh; ~4-6 min on 2 cores). KILN_SKIP_SANITIZE=1 skips it for quick local runs.
if [ "${KILN_SKIP_SANITIZE:-0}" != 1 ]; then
  echo "== C++ tests under ASan + UBSan + LSan"
  if ! out=$(timeout 1500 bash scripts/sanitize.sh 2>&1); then
    if grep -q "LeakSanitizer has encountered a fatal error" <<<"$out"; then
      # LSan needs ptrace, which some sandboxes deny: that is the machine, not kiln. Run again
      # without leak checking; an ASan or UBSan report still fails the run.
      echo "$out" | tail -5
      echo "   LeakSanitizer cannot run here; rerunning with ASan + UBSan only"
      ASAN_OPTIONS=detect_leaks=0 timeout 1500 bash scripts/sanitize.sh | tail -3
    else
      echo "$out" | tail -60
      exit 1
    fi
  else
    echo "$out" | tail -3
  fi
fi

echo "== Python tests (pytest)"
"$VPY" -m pytest tests/python -q -p no:cacheprovider "$@"
