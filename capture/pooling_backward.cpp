/// \file pooling_backward.cpp
/// Pooling backward as primitive nodes (see pooling_backward.h).
#include "capture/pooling_backward.h"

#include <algorithm>

#include "support/error.h"

namespace kiln::capture {
using namespace kiln::ir;

namespace {

/// Checks a pooling backward's operands: float `x` of rank n+1 or more, and a gradient of
/// x's dtype whose sizes are x's leading dims then `out` (the pooled sizes).
void check_grad(const GraphEditor& e, int grad, int x, size_t n, const std::vector<int64_t>& out) {
  const Node &g = e.node(grad), &xn = e.node(x);
  KILN_UNSUPPORTED_IF(!is_float(xn.dtype) || g.dtype != xn.dtype, "pooling backward of {} and {}",
                      dtype_name(g.dtype), dtype_name(xn.dtype));
  KILN_UNSUPPORTED_IF(n == 0 || xn.sizes.size() <= n || out.size() != n, "pooling backward of the wrong rank");
  Sizes want(xn.sizes.begin(), xn.sizes.end() - static_cast<int64_t>(n));
  want.insert(want.end(), out.begin(), out.end());
  KILN_UNSUPPORTED_IF(g.sizes != want || xn.numel() == 0, "pooling backward's gradient has the wrong shape");
}

/// `sizes` with the trailing n dims flattened into one.
Sizes planes(const Sizes& sizes, size_t n) {
  Sizes s(sizes.begin(), sizes.end() - static_cast<int64_t>(n));
  int64_t plane = 1;
  for (size_t i = sizes.size() - n; i < sizes.size(); ++i) plane *= sizes[i];
  s.push_back(plane);
  return s;
}

}  // namespace

int max_pool_backward(GraphEditor& e, int grad_output, int x, int indices, size_t n) {
  const Sizes xs = e.node(x).sizes, gs = e.node(grad_output).sizes;  // copies: appending moves nodes
  KILN_UNSUPPORTED_IF(n == 0 || gs.size() < n, "max_pool backward of the wrong rank");
  check_grad(e, grad_output, x, n, std::vector<int64_t>(gs.end() - static_cast<int64_t>(n), gs.end()));
  KILN_UNSUPPORTED_IF(e.node(indices).dtype != DType::Int64 || e.node(indices).sizes != gs,
                      "max_pool backward's indices must be int64 of the gradient's shape");
  DType t = e.node(x).dtype;
  int64_t dim = static_cast<int64_t>(xs.size() - n);
  int zeros = e.expand(e.constant(0.0, t), planes(xs, n));
  int r = e.scatter(zeros, e.reshape(indices, planes(gs, n)), e.reshape(grad_output, planes(gs, n)), dim,
                    ScatterCombine::Add);
  return e.reshape(r, xs);
}

int avg_pool_backward(GraphEditor& e, int grad_output, int x, const PoolWindow& w, bool count_include_pad,
                      int64_t divisor_override) {
  const Sizes xs = e.node(x).sizes;
  size_t n = w.kernel.size(), rank = xs.size();
  std::vector<int64_t> out = pooled_sizes(xs, w);
  check_grad(e, grad_output, x, n, out);
  DType t = e.node(x).dtype;
  int g = e.binary(OpKind::Div, grad_output,
                   e.cast(avg_pool_divisor(e, xs, w, count_include_pad, divisor_override), t));
  // The padded input along each pooled dim: the low padding, then as far as the input or the
  // last window reaches (ceil_mode's last window may reach past the padding).
  std::vector<int64_t> padded(n);
  for (size_t i = 0; i < n; ++i) {
    int64_t reach = (out[i] - 1) * w.stride[i] + w.dilation[i] * (w.kernel[i] - 1) + 1;
    padded[i] = std::max(w.padding[i] + xs[rank - n + i], reach);
  }
  // Tap (t_0, .., t_n-1) adds g[o] at padded position o * s + t * dilation. For one input
  // element a larger tap is an earlier output, so the taps go from the last to the first:
  // eager adds the outputs' shares in output order, starting from 0.
  int sum = e.constant(0.0, t);
  std::vector<int64_t> tap(w.kernel.begin(), w.kernel.end());
  for (int64_t& k : tap) --k;
  while (true) {
    int v = g;
    for (size_t i = 0; i < n; ++i) {
      int64_t d = static_cast<int64_t>(rank - n + i), start = tap[i] * w.dilation[i];
      Sizes wide = e.node(v).sizes;
      wide[d] = padded[i];
      v = e.slice_scatter(e.expand(e.constant(0.0, t), wide), v, d, start, start + (out[i] - 1) * w.stride[i] + 1,
                          w.stride[i]);
    }
    sum = e.binary(OpKind::Add, sum, v);
    size_t i = n;
    for (; i > 0; --i) {
      if (tap[i - 1] > 0) {
        --tap[i - 1];
        break;
      }
      tap[i - 1] = w.kernel[i - 1] - 1;
    }
    if (i == 0) break;
  }
  for (size_t i = 0; i < n; ++i)
    sum = e.slice(sum, static_cast<int64_t>(rank - n + i), w.padding[i], w.padding[i] + xs[rank - n + i], 1);
  return sum;
}

int adaptive_avg_pool_backward(GraphEditor& e, int grad_output, int x, size_t n) {
  const Sizes xs = e.node(x).sizes, gs = e.node(grad_output).sizes;
  KILN_UNSUPPORTED_IF(n == 0 || gs.size() < n || xs.size() != gs.size(),
                      "adaptive_avg_pool backward of the wrong rank");
  size_t rank = xs.size(), lead = rank - n;
  std::vector<int64_t> out(gs.begin() + static_cast<int64_t>(lead), gs.end());
  check_grad(e, grad_output, x, n, out);
  DType t = e.node(x).dtype;
  for (size_t i = 0; i < n; ++i) {
    KILN_UNSUPPORTED_IF(out[i] < 1, "adaptive_avg_pool backward to an empty size");
    if (xs[lead + i] % out[i] != 0)
      return adaptive_avg_pool_uneven_backward(e, grad_output, std::vector<int64_t>(xs.begin() + static_cast<int64_t>(lead), xs.end()));
  }
  int g = grad_output;
  Sizes split(xs.begin(), xs.begin() + static_cast<int64_t>(lead)), spread = split;
  for (size_t i = 0; i < n; ++i) {
    int64_t in = xs[lead + i];
    g = e.binary(OpKind::Div, g, e.cast(e.int_constant(in / out[i], DType::Int64), t));
    split.insert(split.end(), {out[i], 1});
    spread.insert(spread.end(), {out[i], in / out[i]});
  }
  // Eager adds each share to a zeroed gradient: a -0 share comes out +0.
  g = e.binary(OpKind::Add, g, e.constant(0.0, t));
  return e.reshape(e.expand(e.reshape(g, split), spread), xs);
}

}  // namespace kiln::capture
