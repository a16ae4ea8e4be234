#!/usr/bin/env bash
# The one prepared check for a lent GPU machine (H100/H200 image: torch 2.11 + CUDA 13, Python
# 3.12, pybind11, CMake, nvidia-cuda-nvrtc; no LLVM, no libfmt-dev, no network). It builds kiln
# with the CUDA backend only (KILN_CPU=OFF), runs tests/python/test_cuda_codegen.py and
# test_cuda_models.py (their GPU tests run there: eager CUDA vs kiln on random inputs with
# inf/nan, odd sizes, poisoned outputs; the model blocks in float32 and bfloat16), then
# benchmarks/gpu_bench.py (eager vs torch.compile vs kiln, >= 256 MB working sets, with the
# device-to-device copy bandwidth measured in the same run as the floor). A short table is last.
#
# Here, once, before the first device call (costs no device time):
#     bash benchmarks/gpu_check.sh --prepare        # fmt's headers -> build/gpu-deps (ignored)
# Then, with the device tool:
#     run(command="bash benchmarks/gpu_check.sh", carry=["build/gpu-deps"], timeout_s=600)
# Knobs for a rerun that must be shorter: GPU_CHECK_SKIP_TESTS=1, GPU_CHECK_NO_INDUCTOR=1 (Inductor's
# cold compiles are most of the benchmark's time), GPU_CHECK_QUICK=1 (a quarter of the sizes).
# Logs and the benchmark's JSON go to $OUT (or /tmp/kiln-gpu-out).
set -uo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--prepare" ]; then
  mkdir -p build/gpu-deps/include
  cp -r /usr/include/fmt build/gpu-deps/include/
  echo "gpu_check: prepared build/gpu-deps (fmt headers); carry it with the device call"
  exit 0
fi

OUTDIR=${OUT:-/tmp/kiln-gpu-out}
mkdir -p "$OUTDIR"
PY=$(command -v python3)
export PYTHONUNBUFFERED=1
say() { echo "== $*"; }

say "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
"$PY" -c "import sys, torch; print('python', sys.version.split()[0], '| torch', torch.__version__, '| cuda',
torch.version.cuda, '|', torch.cuda.get_device_name() if torch.cuda.is_available() else 'NO GPU')"

say "build (KILN_CPU=OFF, KILN_CUDA=ON)"
t0=$SECONDS
FMT_ARGS=()
[ -d build/gpu-deps/include/fmt ] && FMT_ARGS=(-DKILN_FMT_INCLUDE_DIR="$PWD/build/gpu-deps/include")
if ! cmake -S . -B build/gpu -DKILN_CPU=OFF -DKILN_CUDA=ON -DKILN_BUILD_PYTHON=ON -DCMAKE_BUILD_TYPE=Release \
    -DPython_EXECUTABLE="$PY" -Dpybind11_DIR="$("$PY" -m pybind11 --cmakedir)" "${FMT_ARGS[@]}" \
    >"$OUTDIR/cmake.log" 2>&1; then
  tail -30 "$OUTDIR/cmake.log"
  echo "gpu_check: cmake failed (fmt missing? run --prepare here and carry build/gpu-deps)"
  exit 1
fi
if ! cmake --build build/gpu -j "$(nproc)" >"$OUTDIR/build.log" 2>&1; then
  grep -E "error" -A3 "$OUTDIR/build.log" | head -60
  echo "gpu_check: build failed"
  exit 1
fi
so=$(ls build/gpu/_C*.so | head -1)
ln -sf "$PWD/$so" "python/kiln/$(basename "$so")"
echo "built $so in $((SECONDS - t0)) s"
export PYTHONPATH=$PWD/python
if ! "$PY" -c "
from kiln import _cuda
s = _cuda.cuda_status()
print(s)
assert s['backend'] and s['nvrtc'] and s['driver'], s['reason']"; then
  echo "gpu_check: the CUDA backend is not usable here"
  exit 1
fi

TESTS="skipped"
if [ -z "${GPU_CHECK_SKIP_TESTS:-}" ]; then
  say "tests (test_cuda_codegen.py, test_cuda_models.py, test_cublaslt.py, test_cuda_training.py; CPU emulation deselected: the GPU runs the real thing)"
  t0=$SECONDS
  "$PY" -m pytest -q -p no:cacheprovider -W ignore::pytest.PytestUnknownMarkWarning -k "not emulated" \
    -o addopts="" tests/python/test_cuda_codegen.py tests/python/test_cuda_models.py tests/python/test_cublaslt.py \
    tests/python/test_cuda_training.py \
    2>&1 | tee "$OUTDIR/tests.log" | tail -60
  TESTS="$(tail -1 "$OUTDIR/tests.log") ($((SECONDS - t0)) s)"
fi

echo "tests: $TESTS"
say "benchmark"
BENCH_ARGS=(--json "$OUTDIR/gpu_bench.json")
[ -n "${GPU_CHECK_NO_INDUCTOR:-}" ] && BENCH_ARGS+=(--no-inductor)
[ -n "${GPU_CHECK_QUICK:-}" ] && BENCH_ARGS+=(--quick)
export TORCHINDUCTOR_COMPILE_THREADS=$(nproc)
"$PY" benchmarks/gpu_bench.py "${BENCH_ARGS[@]}" 2>&1 | tee "$OUTDIR/bench.log" | grep -v '^{' | tail -40
