#!/usr/bin/env bash
# Runs kiln's C++ tests under AddressSanitizer + UndefinedBehaviorSanitizer + LeakSanitizer, and
# optionally a pytest subset against a sanitized build of the Python extension.
#
#   bash scripts/sanitize.sh                 # C++: build/asan, GoogleTest under ASan+UBSan+LSan
#   bash scripts/sanitize.sh --python [ARGS] # also: build/asan-py (kiln._C with the sanitizers) and
#                                            # pytest ARGS (default: a fast subset) with libasan preloaded
#   JOBS=4 bash scripts/sanitize.sh          # build parallelism (default: nproc)
#   GTEST_FILTER='Expr*' bash scripts/sanitize.sh
#
# How the Python part works: the extension is built with -fsanitize=address,undefined, so the
# ASan runtime must be the first library in the process. Python itself is not instrumented, so
# libasan is put there with LD_PRELOAD (the path comes from `gcc -print-file-name=libasan.so`).
# The sanitized _C goes into build/asan-py/pkg/kiln next to links to python/kiln/*.py, and
# PYTHONPATH points there: python/kiln/_C*.so (the build/dev one) is left alone. Leak checking
# is off for Python (the interpreter and torch keep memory until exit by design); ASan's
# alloc/dealloc-mismatch check is off because torch's own libraries trip it.
#
# Any sanitizer report fails the run (halt_on_error). LLVM's own process-lifetime allocations
# are suppressed for LeakSanitizer in scripts/lsan.supp (each entry says why).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
JOBS=${JOBS:-$(nproc)}
VPY=$ROOT/.venv/bin/python
RUN_PY=0
if [ "${1:-}" = "--python" ]; then
  RUN_PY=1
  shift
fi

export ASAN_OPTIONS="detect_leaks=1:halt_on_error=1:abort_on_error=0:strict_string_checks=1:detect_stack_use_after_return=1:check_initialization_order=1:${ASAN_OPTIONS:-}"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:${UBSAN_OPTIONS:-}"
export LSAN_OPTIONS="suppressions=$ROOT/scripts/lsan.supp:print_suppressions=0:${LSAN_OPTIONS:-}"

t0=$(date +%s)
echo "== sanitize: configuring build/asan (ASan + UBSan, C++ tests, no Python)"
cmake -S . -B build/asan -DKILN_SANITIZE=ON -DKILN_BUILD_TESTS=ON -DKILN_BUILD_PYTHON=OFF \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
echo "== sanitize: building (-j$JOBS; log in build/asan/build.log)"
build() {  # quiet unless it fails
  if ! nice -n 5 cmake --build "$1" -j "$JOBS" "${@:2}" -- --no-print-directory >"$1/build.log" 2>&1; then
    tail -40 "$1/build.log"
    exit 1
  fi
}
build build/asan
t1=$(date +%s)
echo "   built in $((t1 - t0))s"

echo "== sanitize: C++ tests under ASan + UBSan + LSan"
build/asan/tests/cpp/kiln_cpp_tests --gtest_brief=1 ${GTEST_FILTER:+--gtest_filter="$GTEST_FILTER"}
t2=$(date +%s)
echo "   C++ tests clean in $((t2 - t1))s"

if [ "$RUN_PY" = 1 ]; then
  echo "== sanitize: building the Python extension with the sanitizers (build/asan-py)"
  cmake -S . -B build/asan-py -DKILN_SANITIZE=ON -DKILN_BUILD_TESTS=OFF -DKILN_BUILD_PYTHON=ON \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPython_EXECUTABLE="$VPY" \
    -Dpybind11_DIR="$("$VPY" -c 'import pybind11; print(pybind11.get_cmake_dir())')" >/dev/null
  build build/asan-py --target _C
  PKG=build/asan-py/pkg/kiln
  rm -rf "$PKG" && mkdir -p "$PKG"
  for f in python/kiln/*.py; do ln -s "$ROOT/$f" "$PKG/"; done
  ln -s "$ROOT/$(ls build/asan-py/_C*.so)" "$PKG/"
  # libstdc++ is preloaded too: Python does not link it, and ASan's __cxa_throw interceptor must
  # find the real one when the runtime starts (else the first C++ exception aborts: "CHECK failed:
  # asan_interceptors.cpp ... real___cxa_throw").
  LIBASAN="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libstdc++.so)"
  if [ $# -eq 0 ]; then
    # A subset that exercises capture, every lowering family, guards, fallbacks, threads and
    # the fuzzer (a few hundred programs) in a few minutes under ASan.
    set -- tests/python/test_pointwise.py tests/python/test_hardening.py tests/python/test_fallback.py \
      "tests/python/test_fuzz.py::test_fuzz_seed_range[0]" -x -q
  fi
  REPORTS=$ROOT/build/asan-py/reports
  rm -rf "$REPORTS" && mkdir -p "$REPORTS"
  echo "== sanitize: pytest $* (LD_PRELOAD=$LIBASAN)"
  t3=$(date +%s)
  LD_PRELOAD="$LIBASAN" PYTHONPATH="$ROOT/build/asan-py/pkg" \
    ASAN_OPTIONS="detect_leaks=0:alloc_dealloc_mismatch=0:detect_odr_violation=0:halt_on_error=1:log_path=$REPORTS/asan" \
    UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$REPORTS/ubsan" \
    "$VPY" -m pytest -p no:cacheprovider "$@" || status=$?
  # pytest captures stderr, so the sanitizers write their reports to files
  if ls "$REPORTS"/* >/dev/null 2>&1; then
    echo "== sanitize: sanitizer reports:"
    for r in "$REPORTS"/*; do echo "--- $r"; head -80 "$r"; done
    exit 1
  fi
  [ "${status:-0}" = 0 ] || exit "$status"
  echo "   pytest clean in $(( $(date +%s) - t3 ))s"
fi
echo "== sanitize: clean ($(( $(date +%s) - t0 ))s in all)"
