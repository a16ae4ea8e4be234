/// \file blas.h
/// The BLAS that runs matrix products, opened at run time. `KILN_BLAS=auto` uses the MKL that
/// PyTorch carries when the process has it (the Python package registers it: the same library,
/// so the same speed and rounding as eager's matmuls), else Debian's OpenBLAS; `openblas` or
/// a library path forces one. kiln splits each product across its threads itself, so every
/// call here is single-threaded.
#pragma once

#include <cstdint>
#include <string>

namespace kiln::runtime::blas {

/// Column-major GEMM (the Fortran interface every BLAS exports): C = alpha op(A) op(B) + beta C.
using SgemmFn = void (*)(const char*, const char*, const int*, const int*, const int*, const float*, const float*,
                         const int*, const float*, const int*, const float*, float*, const int*);
using DgemmFn = void (*)(const char*, const char*, const int*, const int*, const int*, const double*, const double*,
                         const int*, const double*, const int*, const double*, double*, const int*);

struct Library {
  std::string name;  ///< "mkl (path)", "openblas (path)"; empty when none could be opened
  SgemmFn sgemm = nullptr;
  DgemmFn dgemm = nullptr;
  /// MKL_Set_Num_Threads_Local (the C interface: by value; per-thread count, returns the
  /// previous one), or null.
  int (*set_threads_local)(int) = nullptr;
  bool ok() const { return sgemm && dgemm; }
};

/// The library the `blas` knob selects (resolved once per knob value).
const Library& library();
/// A library already loaded in this process that `auto` should prefer (torch's MKL).
void prefer(const std::string& path);

}  // namespace kiln::runtime::blas
