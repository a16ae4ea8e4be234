/// \file window_ops.h
/// Pooling and resampling, recorded as the primitive nodes that compute them: every output
/// element reads a small window (pooling) or a few neighbours (upsampling) of its input, picked
/// by index arithmetic, so the result is pointwise work that fuses with what comes before and
/// after it (relu -> max_pool -> ... is one kernel). Each rule follows the ATen CPU kernel it
/// replaces: the same window bounds, the same order of the sum, the same divisor and index
/// arithmetic, so values match eager's (exactly for pooling and nearest, to rounding for
/// linear interpolation).
#pragma once

#include <cstdint>
#include <vector>

#include "ir/graph_editor.h"

namespace kiln::capture {

/// Window of a pooling op over the trailing `kernel.size()` dims of its input.
struct PoolWindow {
  std::vector<int64_t> kernel, stride, padding, dilation;
  bool ceil_mode = false;
};

/// max_pool{1,2,3}d's values (the indices are not computed): the max over each window, NaN
/// if any element is NaN, the first of equal values (eager's `val > max || isnan(val)` scan).
int max_pool(ir::GraphEditor& e, int x, const PoolWindow& w);

/// max_pool's indices (int64): the flat position of each window's max within its input plane,
/// as eager's scan picks it (the first valid element when the window holds only -inf).
int max_pool_indices(ir::GraphEditor& e, int x, const PoolWindow& w);

/// avg_pool{1,2,3}d: the window's sum in eager's order divided by its size (padding counted
/// when `count_include_pad`), or by `divisor_override` when it is non-zero.
int avg_pool(ir::GraphEditor& e, int x, const PoolWindow& w, bool count_include_pad, int64_t divisor_override);

/// The output sizes of pooling the trailing `w.kernel.size()` dims of sizes `in` (ATen's
/// pooling_output_shape); throws Unsupported for a window kiln does not lower.
std::vector<int64_t> pooled_sizes(const ir::Sizes& in, const PoolWindow& w);

/// avg_pool's divisor at each output position, int64 and broadcasting against the output:
/// `divisor_override` when non-zero, else the window's size (padding counted when
/// `count_include_pad`), as ATen's kernels compute it.
int avg_pool_divisor(ir::GraphEditor& e, const ir::Sizes& in, const PoolWindow& w, bool count_include_pad,
                     int64_t divisor_override);

/// adaptive_avg_pool over the trailing `out_sizes.size()` dims: each window's sum (in eager's
/// scan order) divided by each window dim in turn, as eager's kernel does (its channels-last
/// kernel divides once by the window size in its vector body and twice in its tail: those
/// channels can differ from kiln's by an ulp). Windows of different sizes (an output size
/// that does not divide the input's): Note [Adaptive windows] in window_ops.cpp.
int adaptive_avg_pool(ir::GraphEditor& e, int x, const std::vector<int64_t>& out_sizes);

/// The backward of adaptive_avg_pool over the trailing `in_sizes.size()` dims of
/// `grad_output` (the forward's input sizes there: `in_sizes`), for windows of any sizes:
/// each input element's gradient is the sum of grad / kh / kw of the outputs whose window
/// holds it, added in output order as eager's kernel adds them.
int adaptive_avg_pool_uneven_backward(ir::GraphEditor& e, int grad_output, const std::vector<int64_t>& in_sizes);

/// adaptive_max_pool over the trailing `out_sizes.size()` dims (Note [Adaptive windows]): the
/// window maxima (NaN wins, the first of equal values stays), or with `indices` their flat
/// positions in each input plane, as eager's kernel picks them.
int adaptive_max_pool(ir::GraphEditor& e, int x, const std::vector<int64_t>& out_sizes, bool indices);

enum class Upsample { Nearest, NearestExact, Linear };

/// upsample_{nearest,_nearest_exact,linear/bilinear/trilinear} over the trailing
/// `out_sizes.size()` dims; `scales[i]` <= 0 means none was given (the scale is in / out).
int upsample(ir::GraphEditor& e, int x, Upsample mode, const std::vector<int64_t>& out_sizes,
             const std::vector<double>& scales, bool align_corners);

/// The backward of upsample: the gradient of its input (trailing sizes `in_sizes`) from the
/// gradient `grad` of its output. Each pooled dim's gather becomes an index_add into zeros (a
/// linear dim's two taps each weighted), innermost dim first: the exact adjoint, summed in
/// another order than ATen's kernel (one float rounding apart).
int upsample_backward(ir::GraphEditor& e, int grad, Upsample mode, const std::vector<int64_t>& in_sizes,
                      const std::vector<double>& scales, bool align_corners);

}  // namespace kiln::capture
