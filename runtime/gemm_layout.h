/// \file gemm_layout.h
/// How a BLAS (CPU BLAS or cuBLAS) reads one operand matrix of a matrix-product step: as
/// stored (unit column stride), transposed (unit row stride), or not at all (packed first on
/// the CPU; the CUDA runtime leaves such products to eager).
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "ir/kernel.h"

namespace kiln::runtime {

/// How BLAS reads one operand matrix (rows x cols, element strides sr, sc).
struct Layout {
  bool direct = false;     ///< BLAS reads it in place; else it is packed row-major first
  bool col_major = false;  ///< unit row stride: passed transposed
  int64_t ld = 0;
};

inline Layout layout_of(int64_t rows, int64_t cols, int64_t sr, int64_t sc) {
  Layout l;
  if ((cols <= 1 || sc == 1) && (rows <= 1 || sr >= std::max<int64_t>(1, cols))) {
    l.direct = true;
    l.ld = rows <= 1 ? std::max<int64_t>(1, cols) : sr;
  } else if ((rows <= 1 || sr == 1) && (cols <= 1 || sc >= std::max<int64_t>(1, rows))) {
    l.direct = l.col_major = true;
    l.ld = cols <= 1 ? std::max<int64_t>(1, rows) : sc;
  }
  return l;
}

/// Element offsets of every matrix of an operand, over its own batch dims in row-major order
/// (which is the output's batch order, see ir::GemmCall).
inline std::vector<int64_t> batch_offsets(const ir::GemmOperand& o) {
  std::vector<int64_t> offs = {o.offset};
  for (size_t d = 0; d + 2 < o.sizes.size(); ++d) {
    std::vector<int64_t> next;
    next.reserve(offs.size() * static_cast<size_t>(o.sizes[d]));
    for (int64_t base : offs)
      for (int64_t i = 0; i < o.sizes[d]; ++i) next.push_back(base + i * o.strides[d]);
    offs = std::move(next);
  }
  return offs;
}

/// The layout of one operand of a product (its last two dims; a dim of size 1 has no stride).
inline Layout operand_layout(const ir::GemmOperand& o) {
  size_t r = o.sizes.size();
  int64_t rows = o.sizes[r - 2], cols = o.sizes[r - 1];
  return layout_of(rows, cols, rows > 1 ? o.strides[r - 2] : 0, cols > 1 ? o.strides[r - 1] : 0);
}

}  // namespace kiln::runtime
