/// \file decompose.h
/// Rewrites composite pointwise ops (relu, gelu, silu, softplus, clamp, ...) into primitives,
/// so that users' hand-written versions and the torch.nn.functional ones meet the same
/// lowering.
///   before: %1 = silu(%0) : float32[8]
///   after:  %1 = sigmoid(%0) : float32[8]
///           %2 = mul(%0, %1) : float32[8]
/// Tested by tests/cpp/passes_test.cpp and the pointwise end-to-end tests.
#pragma once

#include "passes/pass.h"

namespace kiln::passes {
ir::Graph run_decompose(const ir::Graph& g, const PassOptions& opts);
}
