/// \file column_reductions.h
/// Loop IR -> loop IR: a row kernel whose kept innermost dim is the contiguous one (a mean over
/// H and W of a channels-last tensor, a sum over dim 0 of a row-major matrix) is rewritten to
/// fold whole columns at once, vectorised along that kept dim (Note [Column reductions]).
///   before: for b (parallel): for c in 0..480: for hw in 0..196 (vectorized):
///             acc = sum(acc, x[b*94080 + hw*480 + c])          // a gather per element
///           out[b*480 + c] = acc
///   after:  for b (parallel):
///             for c (vectorized): col[b*480 + c] = 0
///             for hw: for c (vectorized): col[b*480 + c] = col[b*480 + c] + x[b*94080 + hw*480 + c]
///             for c (vectorized): out[b*480 + c] = col[b*480 + c]
/// Tested by tests/cpp/passes_test.cpp (structure) and tests/python/test_column_reductions.py
/// (values against eager).
#pragma once

#include "ir/kernel.h"
#include "passes/pass.h"

namespace kiln::passes {
void run_column_reductions(ir::KernelProgram& p, const PassOptions& opts);
}
