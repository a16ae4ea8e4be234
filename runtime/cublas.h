/// \file cublas.h
/// Matrix-product steps of CUDA programs on cuBLAS, opened at run time like the driver (the
/// library PyTorch already loaded when there is one), on the stream the program runs on.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "ir/kernel.h"
#include "runtime/cuda_driver.h"

namespace kiln::runtime {

/// True when cuBLAS opens; otherwise `why` says what failed. Never throws.
bool cublas_available(std::string* why = nullptr);
/// A cuBLAS library file already loaded in the process (PyTorch's) to use before searching.
void cublas_prefer(const std::string& path);
/// Why cuBLAS cannot run `call` as is ("" when it can): an operand layout it cannot read.
std::string cublas_unsupported(const ir::GemmCall& call, const std::vector<ir::Buffer>& buffers);
/// Enqueues `call` on `stream` in the current context; throws CudaError naming the product.
void cublas_gemm(const ir::GemmCall& call, const std::vector<ir::Buffer>& buffers, const std::vector<uint64_t>& ptrs,
                 CuStream stream);

}  // namespace kiln::runtime
