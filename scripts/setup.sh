#!/usr/bin/env bash
# Installs everything kiln needs, skipping what is already present (safe to run repeatedly):
# Debian packages (LLVM 16, fmt, GoogleTest, OpenBLAS, oneDNN), a .venv at the repo root with
# torch==2.13.0 and the Python tools, and kiln itself (editable; the C++ core is rebuilt
# incrementally in build/).
set -euo pipefail
cd "$(dirname "$0")/.."

# libdnnl2: oneDNN's float32 GEMM, opened at run time (runtime/blas.h, Note [Which GEMM]).
APT_PACKAGES=(llvm-16-dev libfmt-dev googletest libgtest-dev libopenblas-dev libdnnl2
              zlib1g-dev libzstd-dev libedit-dev libxml2-dev libffi-dev libncurses-dev g++ make)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "kiln setup: installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "kiln setup: creating .venv"
  "$PY" -m venv .venv
fi
VPY=.venv/bin/python
# torch is pinned exactly: an unpinned torch pulls a multi-GB CUDA build. nvidia-cuda-nvrtc
# (NVRTC alone, ~60 MB) lets kiln compile its CUDA kernels to PTX without a GPU; 13.0 matches the
# CUDA 13.0 drivers (580) of the lent GPU machines, whose JIT loads that NVRTC's PTX.
# nvidia-cublas (cuBLAS and cuBLASLt with their headers) is never linked: its headers check the
# cuBLAS values kiln spells out (tests/cpp/cublas_abi_test.cpp) and its library checks the
# descriptors kiln builds (tests/python/test_cublaslt.py), which needs no GPU.
PIP_PACKAGES=(torch==2.13.0 numpy pytest pytest-timeout hypothesis pybind11 scikit-build-core matplotlib "nvidia-cuda-nvrtc==13.0.*"
              "nvidia-cublas==13.0.*")
if ! "$VPY" - <<'PYEOF' 2>/dev/null
import importlib.metadata as md, sys
need = {"torch": "2.13.0", "numpy": None, "pytest": None, "pytest-timeout": None, "hypothesis": None, "pybind11": None,
        "scikit-build-core": None, "matplotlib": None, "nvidia-cuda-nvrtc": "13.0.", "nvidia-cublas": "13.0."}
for name, ver in need.items():
    v = md.version(name)
    if ver and not v.startswith(ver):
        sys.exit(1)
PYEOF
then
  echo "kiln setup: installing Python packages into .venv"
  "$VPY" -m pip install -q --disable-pip-version-check "${PIP_PACKAGES[@]}"
fi
command -v cmake >/dev/null || "$VPY" -m pip install -q --disable-pip-version-check "cmake>=3.18"

# kiln itself. scikit-build-core keeps its CMake build in build/<wheel tag>, so a re-install
# recompiles only what changed.
stamp=build/.kiln-installed
if [ ! -f "$stamp" ] || [ -n "$(find CMakeLists.txt pyproject.toml support ir capture passes codegen_cpu codegen_cuda runtime python -newer "$stamp" -type f \( -name '*.cpp' -o -name '*.h' -o -name '*.def' -o -name '*.txt' -o -name '*.toml' -o -name '*.cuh' \) 2>/dev/null | head -1)" ]; then
  echo "kiln setup: building and installing kiln (C++ core + Python package)"
  "$VPY" -m pip install -q --disable-pip-version-check --no-build-isolation --no-deps -e .
  mkdir -p build && touch "$stamp"
fi
"$VPY" -c "import kiln" || { echo "kiln setup: import kiln failed"; exit 1; }
