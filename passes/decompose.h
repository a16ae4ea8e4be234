/// \file decompose.h
/// Rewrites composite pointwise ops (relu, gelu, silu, softplus, clamp, ...) into primitives,
/// so that users' hand-written versions and the torch.nn.functional ones meet the same
/// lowering.
///   before: %1 = silu(%0) : float32[8]
///   after:  %1 = sigmoid(%0) : float32[8]
///           %2 = mul(%0, %1) : float32[8]
/// Tested by tests/cpp/passes_test.cpp and the pointwise end-to-end tests.
#pragma once

#include <utility>
#include <vector>

#include "ir/graph_editor.h"
#include "passes/pass.h"

namespace kiln::passes {
ir::Graph run_decompose(const ir::Graph& g, const PassOptions& opts);
/// Eval-mode batch norm `bn` (inputs `in`, already in the editor's graph) as y * alpha + beta:
/// returns the per-channel [C] alpha and beta, computed as torch's CPU kernel does.
std::pair<int, int> batch_norm_scale_shift(ir::GraphEditor& e, const ir::Node& bn, const std::vector<int>& in);
}
