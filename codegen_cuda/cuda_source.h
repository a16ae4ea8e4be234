/// \file cuda_source.h
/// Loop IR -> CUDA C++ source, one kernel at a time. Factory-only interface: the emitter itself
/// lives in cuda_source.cpp.
///
/// Each kernel becomes one readable `extern "C" __global__` function, preceded by a prelude of
/// helpers (NaN-propagating max/min, floor division, block reductions, half conversions) that
/// needs no header, so NVRTC compiles it as it is and nvcc can build it too. Its parameters are
/// one typed `__restrict__` pointer per buffer the kernel touches (in increasing buffer id, listed
/// in LaunchShape::buffers) and then `int* status`: a kernel that meets an integer division by
/// zero stores 1 there instead of trapping (as on the CPU, the runtime then reruns the call
/// eagerly, which raises PyTorch's own error).
///
/// Two shapes of kernel (see Note [CUDA kernel shapes] in cuda_source.cpp):
///  - flat: no phase has inner loops. A grid-stride loop over the flattened outer domain, one
///    element per thread per step; 4 elements per step with 16-byte loads and stores when every
///    access of the innermost loop is contiguous (checked for alignment at run time).
///  - row: a phase has inner loops (reductions, softmax, norms). One block per outer iteration
///    (grid-stride over the rows), the block's threads strided over each phase's inner domain,
///    reductions combined per thread, then across the block (warp shuffles + shared memory) and
///    broadcast to every thread before the next phase. When the contiguous dim is a kept one
///    (x.sum(0)), a column kernel: a block takes a tile of adjacent outer iterations, one per
///    thread column, so each warp's loads cover whole 32-byte sectors.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "ir/kernel.h"

namespace kiln::cuda {

/// How to launch one generated kernel, and what to pass it.
struct LaunchShape {
  bool row = false;             ///< row kernel (a block per outer iteration) or flat (grid-stride)
  /// Threads per block (blockDim.x); the source is built for it (__launch_bounds__). Flat: 256.
  /// Row: 256 for rows up to 2048 elements (8 per thread, held in registers; 8 blocks per SM),
  /// the row's size rounded up to a power of two (>= 32) for short rows, 1024 for rows of
  /// >= 4096 elements or fewer than 256 rows of >= 1024 (one block must keep many loads in flight).
  int block = 256;
  int items_per_thread = 1;     ///< flat kernels: elements one thread handles per grid step
  /// Column kernels (row kernels whose kept innermost dim is the contiguous one): outer
  /// iterations one block takes at a time, one per thread column; 0 for a row kernel.
  int columns = 0;
  int64_t max_grid = 1 << 20;   ///< cap on blocks: the kernels are grid-stride, any grid is correct
  int64_t outer_extent = 0;     ///< product of the kernel's outer loop extents
  bool may_fail = false;        ///< the kernel can set the status word (integer division)
  std::vector<int> buffers;     ///< program buffer ids of the pointer parameters, in order

  /// Blocks to launch for `outer` outer iterations (0 when there is nothing to do).
  int64_t grid(int64_t outer) const {
    if (outer <= 0) return 0;
    int64_t per_block = row ? (columns > 0 ? columns : 1) : static_cast<int64_t>(block) * items_per_thread;
    int64_t g = (outer + per_block - 1) / per_block;
    return g < max_grid ? g : max_grid;
  }
  int64_t grid() const { return grid(outer_extent); }
};

/// CUDA C++ source of kernel `kernel_index` of `p`, as a `__global__` function named `symbol`
/// (pass p.kernels[i].name for a readable one), with the prelude in front. Fills `shape`.
/// Throws Unsupported for what it cannot emit.
std::string emit_cuda_kernel(const ir::KernelProgram& p, size_t kernel_index, const std::string& symbol,
                             LaunchShape* shape);

}  // namespace kiln::cuda
