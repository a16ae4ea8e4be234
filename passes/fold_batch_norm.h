/// \file fold_batch_norm.h
/// Folds an eval-mode batch norm into the eager convolution before it (Note [Folding batch
/// norm]): the convolution runs with per-channel scaled weights and a shifted bias, and the
/// normalisation disappears from the kernels after it.
///   before: %5 = fallback#0(%0, %1, %2) : float32[8, 64, 28, 28]         // conv(x, W, b)
///           %9 = batch_norm_eval(%5, %6, %7, %3, %4)
///   after:  alpha = gamma * rsqrt(var + eps); beta = bias_bn - mean * alpha
///           %w = mul(%1, reshape(alpha, [64, 1, 1, 1]))
///           %b = add(mul(%2, alpha), beta)
///           %9 = fallback#0(%0, %w, %b)
/// Tested by tests/cpp/passes_test.cpp (structure) and tests/python/test_batch_norm_folding.py
/// (values against eager).
#pragma once

#include "passes/pass.h"

namespace kiln::passes {
ir::Graph run_fold_batch_norm(const ir::Graph& g, const PassOptions& opts);
}
