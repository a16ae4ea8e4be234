/// \file lower_to_loops.h
/// Lowers a simplified graph to a KernelProgram: decides which values are materialised in
/// buffers (outputs, and broadcast producers too costly to recompute), groups the rest into the
/// kernels of their consumers (a chain of pointwise ops becomes one loop nest), turns views
/// into index expressions over their source, orders loops by the output's memory layout,
/// collapses loops whose addressing stays affine, and marks the outer loop parallel and the
/// inner loop vectorised. Every grouping decision is logged with its reason.
///   before: %2 = mul(%0, %1) : float32[64, 64]   %3 = tanh(%2)   return (%3)
///   after:  kernel k0_mul_tanh: for i0 in 0..4096 (parallel): buf2[i0] = tanh(buf0[i0] * buf1[i0])
/// Tested by tests/cpp/lowering_test.cpp and the Python end-to-end tests.
#pragma once

#include "ir/kernel.h"
#include "passes/pass.h"

namespace kiln::passes {
ir::KernelProgram run_lower_to_loops(const ir::Graph& g, const PassOptions& opts);
}
