/// \file batch_norm_ops.h
/// Batch norm in training mode (ATen's native_batch_norm with training=True) and its backward
/// (native_batch_norm_backward), as per-channel reductions and pointwise work. Each follows
/// ATen's CPU kernel: the same statistics (mean and the sum of squared deviations accumulated
/// in float64 for float32 input, the biased variance for the output and save_invstd, the
/// unbiased one for running_var) and the same per-channel scale and shift, so values match
/// eager's to rounding. The statistics are over every dim but dim 1 (the channels).
#pragma once

#include "ir/graph_editor.h"

namespace kiln::capture {

/// The operands of a batch norm: x [N, C, ...] and optional per-channel vectors [C] (-1: none),
/// all of x's floating dtype.
struct BatchNorm {
  int x = -1;
  int weight = -1, bias = -1;
  int running_mean = -1, running_var = -1;
  double momentum = 0.1, eps = 1e-5;
};

/// What native_batch_norm (training) computes: the output, the batch's mean and 1 / sqrt(var
/// + eps) (both [C]), and the new running statistics (-1 when there are none), which the
/// caller records as the buffers' new values (eager updates them in place).
struct BatchNormTrain {
  int out = -1, save_mean = -1, save_invstd = -1;
  int running_mean = -1, running_var = -1;
};

BatchNormTrain batch_norm_train(ir::GraphEditor& e, const BatchNorm& bn);

/// native_batch_norm_backward: grad_input, grad_weight and grad_bias ([C]) from grad_out.
/// train: the statistics are `save_mean` / `save_invstd` and the mean's and variance's own
/// gradients enter grad_input; else (eval) they are the running statistics and grad_input is
/// grad_out * invstd * weight.
struct BatchNormGrads {
  int input = -1, weight = -1, bias = -1;
};

BatchNormGrads batch_norm_backward(ir::GraphEditor& e, const BatchNorm& bn, int grad_out, int save_mean,
                                   int save_invstd, bool train);

}  // namespace kiln::capture
