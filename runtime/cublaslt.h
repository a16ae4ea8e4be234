/// \file cublaslt.h
/// The matrix-product steps that add a bias vector to every row in their epilogue (Note [Bias
/// in the product], passes/gemm_bias.cpp), on cuBLASLt, as eager's F.linear on CUDA runs them.
/// Opened at run time like cuBLAS; every other product runs on cuBLAS (cublas.h).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "ir/kernel.h"
#include "runtime/cublas.h"
#include "runtime/cuda_driver.h"

namespace kiln::runtime {

/// True when cuBLASLt opens; otherwise `why` says what failed. Never throws.
bool cublaslt_available(std::string* why = nullptr);
/// A cuBLASLt library file to use before searching by name (PyTorch's, or a wheel's).
void cublaslt_prefer(const std::string& path);
/// Whether `call` runs on cuBLASLt (it has a bias epilogue) rather than cuBLAS.
bool needs_cublaslt(const ir::GemmCall& call);
/// Builds the operation and layout descriptors of every cuBLASLt call `call` makes, and the
/// algorithm search's preferences, and returns "" or what cuBLASLt refused. Host-only: it
/// needs the library, not a device, so tests check the attributes kiln sets against the real
/// library on machines without a GPU.
std::string cublaslt_check_descriptors(const ir::GemmCall& call, const std::vector<ir::Buffer>& buffers);
/// Plans `call` in the current context (descriptors and cuBLASLt's algorithm, for 256-byte
/// aligned pointers) and returns "" or why cuBLASLt cannot run it: a program checks this when
/// it loads, so that a product cuBLASLt refuses makes the capture eager instead of a call fail.
std::string cublaslt_prepare(const ir::GemmCall& call, const std::vector<ir::Buffer>& buffers);
/// Enqueues `call` (whose cublas_product is `p`, computed once by the caller) on `stream` in
/// the current context. Returns "" or, enqueueing nothing, why cuBLASLt cannot run it on these
/// pointers (no algorithm for their alignment: the caller redoes the call eagerly); throws
/// CudaError naming the product when a call fails.
std::string cublaslt_gemm(const ir::GemmCall& call, const CublasProduct& p, const std::vector<ir::Buffer>& buffers,
                          const std::vector<uint64_t>& ptrs, CuStream stream);

}  // namespace kiln::runtime
