/// \file cublas.h
/// Matrix-product steps of CUDA programs on cuBLAS, opened at run time like the driver (the
/// library PyTorch already loaded when there is one), on the stream the program runs on.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "ir/kernel.h"
#include "runtime/cuda_driver.h"
#include "runtime/gemm_layout.h"

namespace kiln::runtime {

/// A row-major product out[M, N] = a[M, K] . b[K, N] as the column-major call cuBLAS and
/// cuBLASLt make: out^T[N x M] = b^T . a^T, b first. Its batch goes as runs of `run` matrices
/// each operand spaces evenly: one strided-batched call per run (a broadcast operand: stride 0).
struct CublasProduct {
  int64_t M = 0, N = 0, K = 0, batch = 1;
  Layout a, b;                        ///< how each operand is read (direct: in place)
  std::vector<int64_t> a_offsets, b_offsets;  ///< element offset of each matrix of each operand
  size_t run = 1;                     ///< matrices per call (a divisor of batch)
  /// The spacing of run `first`'s matrices in each operand (elements).
  int64_t a_stride(size_t first) const;
  int64_t b_stride(size_t first) const;
};
CublasProduct cublas_product(const ir::GemmCall& call);

/// True when cuBLAS opens; otherwise `why` says what failed. Never throws.
bool cublas_available(std::string* why = nullptr);
/// A cuBLAS library file already loaded in the process (PyTorch's) to use before searching.
void cublas_prefer(const std::string& path);
/// Why cuBLAS (or cuBLASLt, see cublaslt.h) cannot run `call` as is ("" when it can): a dtype,
/// an operand layout it cannot read.
std::string cublas_unsupported(const ir::GemmCall& call, const std::vector<ir::Buffer>& buffers);
/// Enqueues `call` (whose cublas_product is `p`, computed once by the caller) on `stream` in
/// the current context; throws CudaError naming the product.
void cublas_gemm(const ir::GemmCall& call, const CublasProduct& p, const std::vector<ir::Buffer>& buffers,
                 const std::vector<uint64_t>& ptrs, CuStream stream);

}  // namespace kiln::runtime
