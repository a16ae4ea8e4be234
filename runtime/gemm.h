/// \file gemm.h
/// Matrix-product steps on the CPU: each product is cut into tiles (whole matrices of a batch,
/// else row or column blocks) that kiln's threads run as single-threaded BLAS calls.
#pragma once

#include <string>
#include <vector>

#include "ir/kernel.h"
#include "runtime/thread_pool.h"

namespace kiln::runtime {

/// Runs `call` on the buffers at `ptrs`. Returns false when it cannot (no BLAS could be opened,
/// a size beyond BLAS's 32-bit integers): the caller then redoes the call eagerly.
bool run_gemm(const ir::GemmCall& call, const std::vector<ir::Buffer>& buffers, void* const* ptrs, ThreadPool& pool);

/// One line for kiln.explain: the product's shape and how BLAS reads each operand (as stored,
/// transposed, or packed by the runtime first).
std::string describe_gemm(const ir::GemmCall& call);

/// Whether a BLAS can be opened (matrix products are lowered to BLAS steps only then).
bool gemm_available();

}  // namespace kiln::runtime
