/// \file backward_ops.h
/// The ATen ops autograd emits in backward passes (and the losses training needs), recorded as
/// the primitive nodes that compute them, so a backward program fuses like a forward one: an
/// activation's derivative is pointwise work, a softmax's or layer norm's is a row kernel, a
/// loss's is a gather. Each rule follows the ATen CPU kernel it replaces (its formula, its
/// order of operations, its constants in the tensor's dtype), so values match eager to
/// rounding, and NaN, inf and ignored targets behave as there. float16/bfloat16 operands are
/// computed in float32 and rounded once, as ATen's CPU kernels do for the pointwise rules.
///
/// Names accepted by backward_op (all operands are tensors, in this order; attrs as listed):
///   threshold_backward      grad, x; floats[0] = threshold
///   gelu_backward           grad, x; int_value = 1: the tanh approximation
///   silu_backward / mish_backward / hardswish_backward / hardsigmoid_backward: grad, x
///   sigmoid_backward / tanh_backward: grad, y (the forward's result)
///   leaky_relu_backward     grad, x; floats[0] = negative slope
///   elu_backward            grad, x_or_y; floats = alpha, scale, input_scale; int_value = 1:
///                           the second operand is the forward's result
///   softplus_backward       grad, x; floats = beta, threshold
///   hardtanh_backward       grad, x; floats = min, max
///   softmax_backward / log_softmax_backward: grad, y; ints[0] = dim
///   layer_norm_backward_input  grad, x, mean, rstd[, weight]; ints = normalised trailing
///                           dims, has_weight
///   layer_norm_backward_weight grad, x, mean, rstd; ints[0] = normalised trailing dims
///   layer_norm_backward_bias   grad; ints[0] = normalised trailing dims
///   nll_loss / nll_loss_total_weight  x, target[, weight]; ints = reduction (0 none,
///                           1 mean, 2 sum), ignore_index, has_weight
///   nll_loss_backward       grad, x, target, total_weight[, weight]; ints as nll_loss
///   mse_loss                x, target; ints[0] = reduction (0 none, 1 mean, 2 sum)
///   mse_loss_backward       grad, x, target; ints[0] = reduction
///   embedding_dense_backward  grad, indices; ints = num_weights, padding_idx,
///                           scale_grad_by_freq
/// Tested by tests/python/test_backward_ops.py.
#pragma once

#include <string>
#include <vector>

#include "ir/graph_editor.h"

namespace kiln::capture {

/// Whether `name` is one of the names above.
bool is_backward_op(const std::string& name);

/// Records backward op `name` on the tensor values `xs`; returns its result's value id. Throws
/// Unsupported for operands it does not lower (dtypes that differ, integer tensors).
int backward_op(ir::GraphEditor& e, const std::string& name, const std::vector<int>& xs, const ir::Attrs& attrs);

}  // namespace kiln::capture
