/// \file pooling_backward.h
/// The backward of pooling (max_pool*_with_indices_backward, avg_pool*_backward,
/// _adaptive_avg_pool*_backward) for the windows capture/window_ops.h lowers: each input
/// element's gradient is the sum of the gradients of the outputs whose window read it, added in
/// the order of those outputs (ATen's CPU kernels accumulate output by output into zeros), so
/// results match eager's.
#pragma once

#include <cstdint>

#include "capture/window_ops.h"
#include "ir/graph_editor.h"

namespace kiln::capture {

/// max_pool's backward over the trailing `n` dims of `x` (only its shape is read): grad_output
/// added at the positions `indices` holds (int64, flat within each input plane, as the forward
/// returned them): a scatter-add into zeros, in output order. An index outside the plane is
/// flagged by the scatter (the call then runs eagerly and raises eager's error).
int max_pool_backward(ir::GraphEditor& e, int grad_output, int x, int indices, size_t n);

/// avg_pool's backward: grad_output divided by each window's divisor (as the forward's), then
/// spread back over the window. Each kernel tap contributes a strided copy of those values
/// (a slice_scatter into zeros of the padded input); the taps are summed in the order eager
/// visits the outputs, and the padding is cropped.
int avg_pool_backward(ir::GraphEditor& e, int grad_output, int x, const PoolWindow& w, bool count_include_pad,
                      int64_t divisor_override);

/// adaptive_avg_pool's backward over the trailing `n` dims: where every window has the same
/// size (input sizes multiples of the output's), grad_output divided by each window dim in turn
/// (as eager's kernel), broadcast over its window; otherwise adaptive_avg_pool_uneven_backward.
int adaptive_avg_pool_backward(ir::GraphEditor& e, int grad_output, int x, size_t n);

}  // namespace kiln::capture
