/// \file gemm.h
/// Matrix-product steps on the CPU: each product is cut into tiles (whole matrices of a batch,
/// else row or column blocks) that kiln's threads run as single-threaded BLAS calls.
#pragma once

#include <string>
#include <vector>

#include "ir/kernel.h"
#include "runtime/thread_pool.h"

namespace kiln::runtime {

/// The kernel marked as a product's epilogue (Note [Epilogues in cache] in
/// passes/gemm_epilogues.cpp): its function, the pointers it runs on, and the output elements
/// each of its outer iterations reads.
struct Epilogue {
  void (*fn)(void* const* buffers, int64_t begin, int64_t end);
  void* const* buffers;
  int64_t span;
};

/// Runs `call` on the buffers at `ptrs`. Returns false when it cannot (no BLAS could be opened,
/// a size beyond BLAS's 32-bit integers): the caller then redoes the call eagerly. With an
/// `epilogue`, runs its iterations for each tile right after the tile when the tiles allow it,
/// and says so in `*ran_epilogue` (else the caller runs the kernel as its own step).
bool run_gemm(const ir::GemmCall& call, const std::vector<ir::Buffer>& buffers, void* const* ptrs, ThreadPool& pool,
              const Epilogue* epilogue = nullptr, bool* ran_epilogue = nullptr);

/// One line for kiln.explain: the product's shape and how BLAS reads each operand (as stored,
/// transposed, or packed by the runtime first).
std::string describe_gemm(const ir::GemmCall& call);

/// Whether a BLAS can be opened (matrix products are lowered to BLAS steps only then).
bool gemm_available();

}  // namespace kiln::runtime
