/// \file blas.h
/// The libraries that run matrix products, opened at run time. Note [Which GEMM]: float64
/// products (oneDNN has no dgemm) run on the MKL that PyTorch carries when the process has it
/// (the Python package registers it), else on Debian's OpenBLAS. Float32 products under
/// `KILN_BLAS=auto` run on that MKL on Intel CPUs, and on oneDNN's `dnnl_sgemm` (Debian's
/// libdnnl) on any other CPU where it opens: MKL runs its AVX2 code on a CPU that is not
/// Intel's. Measured on an AMD EPYC with AVX-512 (one of this project's machines): MKL ~108
/// GFLOP/s per core, oneDNN's JIT GEMM ~230 (1024x512x1376: 13.3 ms against 6.3 ms on one
/// core). `mkl` keeps every product on torch's MKL (eager's library: the same rounding as
/// eager), `openblas` on OpenBLAS, and a library path on that library. kiln splits each
/// product across its threads itself, so every call here is single-threaded.
#pragma once

#include <cstdint>
#include <string>

namespace kiln::runtime::blas {

/// Column-major GEMM (the Fortran interface every BLAS exports): C = alpha op(A) op(B) + beta C.
using SgemmFn = void (*)(const char*, const char*, const int*, const int*, const int*, const float*, const float*,
                         const int*, const float*, const int*, const float*, float*, const int*);
using DgemmFn = void (*)(const char*, const char*, const int*, const int*, const int*, const double*, const double*,
                         const int*, const double*, const int*, const double*, double*, const int*);

/// oneDNN's `dnnl_sgemm` (dnnl_dim_t is int64_t; the status is dnnl_status_t, 0 = success).
using DnnlSgemmFn = int (*)(char, char, int64_t, int64_t, int64_t, float, const float*, int64_t, const float*, int64_t,
                            float, float*, int64_t);

struct Library {
  std::string name;  ///< "onednn sgemm (path) + mkl (path)", "openblas (path)"; empty when none opened
  SgemmFn sgemm = nullptr;
  DgemmFn dgemm = nullptr;
  /// MKL_Set_Num_Threads_Local (the C interface: by value; per-thread count, returns the
  /// previous one), or null.
  int (*set_threads_local)(int) = nullptr;
  /// oneDNN's row-major float32 GEMM (C = alpha op(A) op(B) + beta C; 0 = success), used for
  /// float32 instead of `sgemm` when set. It threads with OpenMP: called inside kiln's threads
  /// with the calling task's OpenMP thread count set to 1 (see SerialOpenMP in thread_pool.h).
  DnnlSgemmFn dnnl_sgemm = nullptr;
  bool ok() const { return sgemm && dgemm; }
};

/// oneDNN's `dnnl_gemm_bf16bf16f32`: row-major C (float32) = alpha op(A) op(B) + beta C of
/// bfloat16 A and B (their 16 bits), float32 accumulation; 0 = success.
using DnnlGemmBf16Fn = int (*)(char, char, int64_t, int64_t, int64_t, float, const uint16_t*, int64_t,
                               const uint16_t*, int64_t, float, float*, int64_t);

/// The bfloat16 GEMM, or null when libdnnl does not open. One library for every KILN_BLAS
/// choice: eager's bfloat16 products run on oneDNN too (torch's mkldnn matmul).
DnnlGemmBf16Fn bf16_gemm();

/// Whether the CPU is Intel's (cpuid vendor GenuineIntel).
bool cpu_is_intel();
/// The library the `blas` knob selects (resolved once per knob value).
const Library& library();
/// A library already loaded in this process that `auto` should prefer (torch's MKL).
void prefer(const std::string& path);

}  // namespace kiln::runtime::blas
