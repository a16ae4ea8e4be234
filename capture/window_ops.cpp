/// \file window_ops.cpp
/// Pooling and upsampling as primitive nodes (see window_ops.h).
#include "capture/window_ops.h"

#include <cmath>
#include <limits>

#include "support/error.h"

namespace kiln::capture {
using namespace kiln::ir;

namespace {

int64_t floor_div(int64_t a, int64_t b) { return a / b - ((a % b != 0) && ((a < 0) != (b < 0))); }

/// ATen's pooling_output_shape: windows that would start in the right padding are dropped.
int64_t pooled_size(int64_t in, int64_t k, int64_t s, int64_t p, int64_t d, bool ceil_mode) {
  int64_t out = floor_div(in + 2 * p - d * (k - 1) - 1 + (ceil_mode ? s - 1 : 0), s) + 1;
  if (ceil_mode && (out - 1) * s >= in + p) --out;
  return out;
}

/// The pooled dims of `x` (its trailing dims) and their output sizes.
struct Pooled {
  size_t rank = 0, n = 0;
  Sizes in, out;  // per pooled dim
  size_t dim(size_t i) const { return rank - n + i; }
};

Pooled pooled(const Sizes& xs, const PoolWindow& w) {
  Pooled p;
  p.rank = xs.size();
  p.n = w.kernel.size();
  KILN_UNSUPPORTED_IF(p.n == 0 || p.n > p.rank || w.stride.size() != p.n || w.padding.size() != p.n ||
                          w.dilation.size() != p.n, "pooling window of the wrong rank");
  for (size_t i = 0; i < p.n; ++i) {
    KILN_UNSUPPORTED_IF(w.kernel[i] < 1 || w.stride[i] < 1 || w.dilation[i] < 1 || w.padding[i] < 0,
                        "pooling window with a non-positive size");
    int64_t in = xs[p.dim(i)];
    p.in.push_back(in);
    p.out.push_back(pooled_size(in, w.kernel[i], w.stride[i], w.padding[i], w.dilation[i], w.ceil_mode));
    KILN_UNSUPPORTED_IF(p.out.back() < 1 || in < 1, "pooling to an empty output");
  }
  return p;
}

/// pooled(), with each pooled length noted on the editor (GraphEditor::note_size_rule).
Pooled pooled(GraphEditor& e, const Sizes& xs, const PoolWindow& w) {
  Pooled p = pooled(xs, w);
  for (size_t i = 0; i < p.n; ++i) e.note_size_rule(p.in[i], p.out[i]);
  return p;
}

/// `x` padded with `fill` so that every tap's strided slice (below) lies inside it: the low
/// side by the padding, the high side by as much as the last window reaches (ceil_mode's last
/// window may reach past the padding).
int padded(GraphEditor& e, int x, const PoolWindow& w, const Pooled& p, double fill) {
  std::vector<int64_t> pad(2 * p.rank, 0);
  bool any = false;
  for (size_t i = 0; i < p.n; ++i) {
    int64_t reach = (p.out[i] - 1) * w.stride[i] + w.dilation[i] * (w.kernel[i] - 1) + 1;
    pad[2 * p.dim(i)] = w.padding[i];
    pad[2 * p.dim(i) + 1] = std::max<int64_t>(0, reach - p.in[i] - w.padding[i]);
    any |= pad[2 * p.dim(i)] != 0 || pad[2 * p.dim(i) + 1] != 0;
  }
  return any ? e.pad(x, pad, fill) : x;
}

/// Calls fn(value, offset) for each window offset (one kernel position per pooled dim), in
/// eager's scan order (the first pooled dim outermost): `value` holds, for every output
/// position, the element at that offset.
template <typename Fn>
void for_each_tap(GraphEditor& e, int xp, const PoolWindow& w, const Pooled& p, Fn fn) {
  std::vector<int64_t> t(p.n, 0);
  while (true) {
    int v = xp;
    for (size_t i = 0; i < p.n; ++i) {
      int64_t start = t[i] * w.dilation[i];
      v = e.slice(v, static_cast<int64_t>(p.dim(i)), start, start + (p.out[i] - 1) * w.stride[i] + 1, w.stride[i]);
    }
    fn(v, t);
    size_t i = p.n;
    while (i > 0 && ++t[i - 1] == w.kernel[i - 1]) t[--i] = 0;
    if (i == 0) return;
  }
}

/// A 1-D int64 value of `n` elements laid along pooled dim `d` of a rank-`rank` tensor.
int along(GraphEditor& e, int v, size_t rank, size_t d) {
  Sizes s(rank, 1);
  s[d] = e.node(v).sizes.at(0);
  return e.reshape(v, s);
}

int int_const(GraphEditor& e, int64_t v) { return e.int_constant(v, DType::Int64); }

/// x gathered along dim `d` at the 1-D int64 positions `idx`.
int gather_along(GraphEditor& e, int x, int idx, size_t d) {
  Sizes shape = e.node(x).sizes;
  shape[d] = e.node(idx).sizes.at(0);
  return e.gather(x, e.expand(along(e, idx, shape.size(), d), shape), static_cast<int64_t>(d), false, /*in_range=*/true);
}

}  // namespace

int max_pool(GraphEditor& e, int x, const PoolWindow& w) {
  DType t = e.node(x).dtype;
  KILN_UNSUPPORTED_IF(!is_float(t), "max_pool of {} is not lowered", dtype_name(t));
  Pooled p = pooled(e, e.node(x).sizes, w);
  int xp = padded(e, x, w, p, -std::numeric_limits<double>::infinity());
  int best = -1;
  // Maximum(a, b) takes a when a is NaN or a > b: eager's `val > max || isnan(val)`, with the
  // new element as a (a NaN anywhere wins; of equal values, -0 and +0, the first stays).
  for_each_tap(e, xp, w, p, [&](int v, const std::vector<int64_t>&) {
    best = best < 0 ? v : e.binary(OpKind::Maximum, v, best);
  });
  return best;
}

int max_pool_indices(GraphEditor& e, int x, const PoolWindow& w) {
  DType t = e.node(x).dtype;
  KILN_UNSUPPORTED_IF(!is_float(t), "max_pool of {} is not lowered", dtype_name(t));
  Pooled p = pooled(e, e.node(x).sizes, w);
  int xp = padded(e, x, w, p, -std::numeric_limits<double>::infinity());
  // Per pooled dim: the window's first input position o*s - pad, and the plane stride.
  std::vector<int> start(p.n);
  std::vector<int64_t> plane(p.n, 1);
  for (size_t i = p.n; i-- > 0;) {
    if (i + 1 < p.n) plane[i] = plane[i + 1] * p.in[i + 1];
    int o = e.iota({p.out[i]}, 0, DType::Int64);
    start[i] = along(e, e.binary(OpKind::Sub, e.binary(OpKind::Mul, o, int_const(e, w.stride[i])), int_const(e, w.padding[i])),
                     p.rank, p.dim(i));
  }
  auto flat = [&](const std::vector<int>& pos) {
    int f = -1;
    for (size_t i = 0; i < p.n; ++i) {
      int term = e.binary(OpKind::Mul, pos[i], int_const(e, plane[i]));
      f = f < 0 ? term : e.binary(OpKind::Add, f, term);
    }
    return f;
  };
  // Eager starts from the window's first position inside the input (stepping a start in the
  // padding forward by whole dilations) with max = -inf, then takes each element that is
  // greater or NaN. Padding taps are -inf here, so they are never taken.
  std::vector<int> first(p.n);
  for (size_t i = 0; i < p.n; ++i) {
    int64_t d = w.dilation[i];
    int behind = e.binary(OpKind::Maximum, int_const(e, 0), e.unary(OpKind::Neg, start[i]));
    int steps = e.binary(OpKind::FloorDiv, e.binary(OpKind::Add, behind, int_const(e, d - 1)), int_const(e, d));
    first[i] = e.binary(OpKind::Add, start[i], e.binary(OpKind::Mul, steps, int_const(e, d)));
  }
  int best = e.constant(-std::numeric_limits<double>::infinity(), t);
  int arg = flat(first);
  for_each_tap(e, xp, w, p, [&](int v, const std::vector<int64_t>& tap) {
    std::vector<int> pos(p.n);
    for (size_t i = 0; i < p.n; ++i) pos[i] = e.binary(OpKind::Add, start[i], int_const(e, tap[i] * w.dilation[i]));
    int take = e.binary(OpKind::LogicalOr, e.binary(OpKind::Gt, v, best), e.unary(OpKind::IsNan, v));
    arg = e.where(take, flat(pos), arg);
    best = e.where(take, v, best);
  });
  return arg;
}

int avg_pool(GraphEditor& e, int x, const PoolWindow& w, bool count_include_pad, int64_t divisor_override) {
  DType t = e.node(x).dtype;
  KILN_UNSUPPORTED_IF(!is_float(t), "avg_pool of {} is not lowered", dtype_name(t));
  Pooled p = pooled(e, e.node(x).sizes, w);
  // Half types sum and divide in float32 and round once, as ATen's kernel (not once per tap).
  DType c = compute_dtype(t);
  int xp = padded(e, e.cast(x, c), w, p, 0.0);
  // Eager sums from 0 in scan order; the padding's zeros it skips add nothing here (s + 0 == s,
  // and the running sum is never -0 after starting from +0).
  int sum = e.constant(0.0, c);
  for_each_tap(e, xp, w, p, [&](int v, const std::vector<int64_t>&) { sum = e.binary(OpKind::Add, sum, v); });
  int divisor = avg_pool_divisor(e, e.node(x).sizes, w, count_include_pad, divisor_override);
  return e.cast(e.binary(OpKind::Div, sum, e.cast(divisor, c)), t);
}

std::vector<int64_t> pooled_sizes(const Sizes& in, const PoolWindow& w) { return pooled(in, w).out; }

int avg_pool_divisor(GraphEditor& e, const Sizes& in, const PoolWindow& w, bool count_include_pad,
                     int64_t divisor_override) {
  Pooled p = pooled(e, in, w);  // first: `in` may be a node's sizes, which appending nodes moves
  if (divisor_override != 0) return int_const(e, divisor_override);
  // Per pooled dim, ATen's window: [o*s - pad, min(o*s - pad + k, in + pad)), its size counted
  // with the padding, or clipped to [0, in) without it; the divisor is their product.
  int divisor = -1;
  for (size_t i = 0; i < p.n; ++i) {
    int o = e.iota({p.out[i]}, 0, DType::Int64);
    int start = e.binary(OpKind::Sub, e.binary(OpKind::Mul, o, int_const(e, w.stride[i])), int_const(e, w.padding[i]));
    int end = e.binary(OpKind::Minimum, int_const(e, p.in[i] + w.padding[i]),
                       e.binary(OpKind::Add, start, int_const(e, w.kernel[i])));
    if (!count_include_pad) {
      start = e.binary(OpKind::Maximum, int_const(e, 0), start);
      end = e.binary(OpKind::Minimum, int_const(e, p.in[i]), end);
    }
    int size = along(e, e.binary(OpKind::Sub, end, start), p.rank, p.dim(i));
    divisor = divisor < 0 ? size : e.binary(OpKind::Mul, divisor, size);
  }
  return divisor;
}

namespace {

/// Note [Adaptive windows]: ATen's adaptive pooling window for output o of a dim pooled from
/// `in` to `out` is [floor(o * in / out), ceil((o + 1) * in / out)); windows differ in size
/// when out does not divide in. kiln visits, per pooled dim, taps k = 0 .. K-1 (K the largest
/// window) at position start + k, clamped into the window so the read stays in range, with
/// `valid` false past the window's end: eager's scan order over each window, followed by taps
/// that the caller makes neutral (a sum adds +0, which never changes a sum started from +0; a
/// max compares -inf, which is never taken).
struct AdaptiveDim {
  int start, end, size;  // int64 [out] values: the window's bounds and its size
  int64_t taps;          // the largest window
};

AdaptiveDim adaptive_dim(GraphEditor& e, int64_t in, int64_t out) {
  e.note_size_rule(in, out);
  int64_t taps = 0;
  for (int64_t o = 0; o < out; ++o) taps = std::max(taps, ((o + 1) * in + out - 1) / out - (o * in) / out);
  int o = e.iota({out}, 0, DType::Int64);
  int start = e.binary(OpKind::FloorDiv, e.binary(OpKind::Mul, o, int_const(e, in)), int_const(e, out));
  int next = e.binary(OpKind::Add, o, int_const(e, 1));
  int end = e.binary(OpKind::FloorDiv, e.binary(OpKind::Add, e.binary(OpKind::Mul, next, int_const(e, in)), int_const(e, out - 1)),
                     int_const(e, out));
  return {start, end, e.binary(OpKind::Sub, end, start), taps};
}

/// Calls fn(value, valid, position) for every tap of the adaptive windows over the trailing
/// dims of x, in eager's scan order (first pooled dim outermost); `position` holds each pooled
/// dim's input index (int64, along that dim) and `valid` is a bool (or -1 when every tap so far
/// is inside its window).
template <typename Fn>
void for_each_adaptive_tap(GraphEditor& e, int x, const std::vector<AdaptiveDim>& dims, size_t first, size_t i,
                           int valid, std::vector<int>& position, Fn fn) {
  size_t rank = e.node(x).sizes.size();
  const AdaptiveDim& ad = dims[i];
  for (int64_t k = 0; k < ad.taps; ++k) {
    int at = e.binary(OpKind::Add, ad.start, int_const(e, k));
    int inside = e.binary(OpKind::Lt, at, ad.end);
    int clamped = e.binary(OpKind::Minimum, at, e.binary(OpKind::Sub, ad.end, int_const(e, 1)));
    int v = gather_along(e, x, clamped, first + i);
    int ok = k == 0 ? valid : valid < 0 ? along(e, inside, rank, first + i)
                                          : e.binary(OpKind::LogicalAnd, valid, along(e, inside, rank, first + i));
    position[i] = along(e, clamped, rank, first + i);
    if (i + 1 < dims.size())
      for_each_adaptive_tap(e, v, dims, first, i + 1, ok, position, fn);
    else
      fn(v, ok, position);
  }
}

std::vector<AdaptiveDim> adaptive_dims(GraphEditor& e, const Sizes& xs, const std::vector<int64_t>& out_sizes,
                                       const char* what) {
  size_t n = out_sizes.size();
  KILN_UNSUPPORTED_IF(n == 0 || n > xs.size(), "{} output of the wrong rank", what);
  std::vector<AdaptiveDim> dims;
  for (size_t i = 0; i < n; ++i) {
    int64_t in = xs[xs.size() - n + i], out = out_sizes[i];
    KILN_UNSUPPORTED_IF(out < 1 || in < 1, "{} from {} to {}", what, in, out);
    dims.push_back(adaptive_dim(e, in, out));
  }
  return dims;
}

}  // namespace

int adaptive_avg_pool(GraphEditor& e, int x, const std::vector<int64_t>& out_sizes) {
  DType t = e.node(x).dtype;
  KILN_UNSUPPORTED_IF(!is_float(t), "adaptive_avg_pool of {} is not lowered", dtype_name(t));
  const Sizes xs = e.node(x).sizes;
  size_t n = out_sizes.size();
  KILN_UNSUPPORTED_IF(n == 0 || n > xs.size(), "adaptive_avg_pool output of the wrong rank");
  bool equal_windows = true;
  for (size_t i = 0; i < n; ++i) {
    int64_t in = xs[xs.size() - n + i], out = out_sizes[i];
    KILN_UNSUPPORTED_IF(out < 1 || in < 1, "adaptive_avg_pool from {} to {}", in, out);
    equal_windows &= in % out == 0;
  }
  if (!equal_windows) {
    // Note [Adaptive windows]; eager divides the window's sum by each window dim in turn.
    std::vector<AdaptiveDim> dims = adaptive_dims(e, xs, out_sizes, "adaptive_avg_pool");
    size_t first = xs.size() - n;
    int sum = e.constant(0.0, t);
    int zero = e.constant(0.0, t);
    std::vector<int> position(n);
    for_each_adaptive_tap(e, x, dims, first, 0, -1, position, [&](int v, int ok, const std::vector<int>&) {
      sum = e.binary(OpKind::Add, sum, ok < 0 ? v : e.where(ok, v, zero));
    });
    for (size_t i = 0; i < n; ++i) sum = e.binary(OpKind::Div, sum, e.cast(along(e, dims[i].size, xs.size(), first + i), t));
    return sum;
  }
  PoolWindow w;
  for (size_t i = 0; i < n; ++i) {
    int64_t in = xs[xs.size() - n + i], out = out_sizes[i];
    w.kernel.push_back(in / out);
    w.stride.push_back(in / out);
    w.padding.push_back(0);
    w.dilation.push_back(1);
  }
  Pooled p = pooled(e, e.node(x).sizes, w);
  DType c = compute_dtype(t);  // half types: float32 sums, one rounding (as avg_pool)
  int xc = e.cast(x, c);
  int sum = e.constant(0.0, c);
  for_each_tap(e, xc, w, p, [&](int v, const std::vector<int64_t>&) { sum = e.binary(OpKind::Add, sum, v); });
  for (int64_t k : w.kernel) sum = e.binary(OpKind::Div, sum, e.cast(int_const(e, k), c));
  return e.cast(sum, t);
}

int adaptive_avg_pool_uneven_backward(GraphEditor& e, int grad_output, const std::vector<int64_t>& in_sizes) {
  DType t = e.node(grad_output).dtype;
  const Sizes gs = e.node(grad_output).sizes;
  size_t n = in_sizes.size();
  KILN_UNSUPPORTED_IF(n == 0 || n > gs.size(), "adaptive_avg_pool backward of the wrong rank");
  size_t first = gs.size() - n;
  // Eager's kernel: for each output (in order), delta = grad / kh / kw, added to every input
  // element of the output's window. An input element ih is in the windows of outputs
  // [floor(ih * out / in), ceil((ih + 1) * out / in)): Note [Adaptive windows] with in and out
  // swapped, whose taps visit those outputs in eager's order.
  int delta = grad_output;
  std::vector<AdaptiveDim> back;
  for (size_t i = 0; i < n; ++i) {
    int64_t out = gs[first + i];
    KILN_UNSUPPORTED_IF(out < 1 || in_sizes[i] < 1, "adaptive_avg_pool backward from {} to {}", in_sizes[i], out);
    AdaptiveDim fw = adaptive_dim(e, in_sizes[i], out);
    delta = e.binary(OpKind::Div, delta, e.cast(along(e, fw.size, gs.size(), first + i), t));
  }
  for (size_t i = 0; i < n; ++i) back.push_back(adaptive_dim(e, gs[first + i], in_sizes[i]));
  int sum = e.constant(0.0, t), zero = e.constant(0.0, t);
  std::vector<int> position(n);
  for_each_adaptive_tap(e, delta, back, first, 0, -1, position, [&](int v, int ok, const std::vector<int>&) {
    sum = e.binary(OpKind::Add, sum, ok < 0 ? v : e.where(ok, v, zero));
  });
  return sum;
}

int adaptive_max_pool(GraphEditor& e, int x, const std::vector<int64_t>& out_sizes, bool indices) {
  DType t = e.node(x).dtype;
  KILN_UNSUPPORTED_IF(!is_float(t), "adaptive_max_pool of {} is not lowered", dtype_name(t));
  const Sizes xs = e.node(x).sizes;
  size_t n = out_sizes.size(), first = xs.size() - std::min(n, xs.size());
  std::vector<AdaptiveDim> dims = adaptive_dims(e, xs, out_sizes, "adaptive_max_pool");
  // As eager's kernel: max = -inf and index = the window's first element, then each element
  // that is greater or NaN is taken (the first of equal ones stays). Taps past a window's end
  // read -inf here, which is never taken.
  int neg_inf = e.constant(-std::numeric_limits<double>::infinity(), t);
  int best = neg_inf;
  std::vector<int64_t> plane(n, 1);
  for (size_t i = n - 1; i-- > 0;) plane[i] = plane[i + 1] * xs[first + i + 1];
  auto flat = [&](const std::vector<int>& pos) {
    int f = -1;
    for (size_t i = 0; i < n; ++i) {
      int term = plane[i] == 1 ? pos[i] : e.binary(OpKind::Mul, pos[i], int_const(e, plane[i]));
      f = f < 0 ? term : e.binary(OpKind::Add, f, term);
    }
    return f;
  };
  std::vector<int> starts;
  for (size_t i = 0; i < n; ++i) starts.push_back(along(e, dims[i].start, xs.size(), first + i));
  int arg = flat(starts);
  std::vector<int> position(n);
  for_each_adaptive_tap(e, x, dims, first, 0, -1, position, [&](int v, int ok, const std::vector<int>& pos) {
    int tap = ok < 0 ? v : e.where(ok, v, neg_inf);
    int take = e.binary(OpKind::LogicalOr, e.binary(OpKind::Gt, tap, best), e.unary(OpKind::IsNan, tap));
    if (indices) arg = e.where(take, flat(pos), arg);
    best = e.where(take, tap, best);
  });
  return indices ? arg : best;
}

namespace {

/// ATen's compute_scales_value: 1 / scale when one was given, else in / out, in `t`.
double scale_of(double given, int64_t in, int64_t out, DType t) {
  if (t == DType::Float32)
    return given > 0 ? static_cast<float>(1.0 / given) : static_cast<float>(in) / static_cast<float>(out);
  return given > 0 ? 1.0 / given : static_cast<double>(in) / static_cast<double>(out);
}

/// The source positions of upsample_nearest (ATen's nearest_idx / nearest_neighbor_exact_idx).
int nearest_index(GraphEditor& e, Upsample mode, int64_t in, int64_t out, double given) {
  e.note_size_rule(in, out);
  int o = e.iota({out}, 0, DType::Int64);
  if (mode == Upsample::Nearest && out == in) return o;
  if (mode == Upsample::Nearest && out == 2 * in) return e.binary(OpKind::FloorDiv, o, int_const(e, 2));
  int f = e.cast(o, DType::Float32);
  if (mode == Upsample::NearestExact) f = e.binary(OpKind::Add, f, e.float_constant(0.5, DType::Float32));
  f = e.binary(OpKind::Mul, f, e.float_constant(scale_of(given, in, out, DType::Float32), DType::Float32));
  int i = e.cast(e.unary(OpKind::Floor, f), DType::Int64);
  return e.binary(OpKind::Minimum, int_const(e, in - 1), i);
}

/// ATen's linear interpolation weights along one dim (compute_indices_weights_linear): the two
/// source positions and the weight of each, computed in `t` (the op's math type).
struct LinearTaps {
  int i0, i1, w0, w1;
};

LinearTaps linear_taps(GraphEditor& e, int64_t in, int64_t out, double given, bool align_corners, DType t) {
  e.note_size_rule(in, out);
  if (in == out) {
    // As ATen (compute_source_index_and_lambda), whatever the scale: both taps on the element
    // itself, weights 1 and 0. The neighbour is not read (a NaN there stays out of the sum: a
    // fuzzer finding), and an infinite element gives inf * 1 + inf * 0 = nan, as in eager.
    int i = e.iota({out}, 0, DType::Int64);
    return {i, i, e.expand(e.float_constant(1.0, t), {out}), e.expand(e.float_constant(0.0, t), {out})};
  }
  double scale;
  if (align_corners) {
    scale = out > 1 ? (t == DType::Float32 ? static_cast<double>(static_cast<float>(in - 1) / static_cast<float>(out - 1))
                                           : static_cast<double>(in - 1) / static_cast<double>(out - 1))
                    : 0.0;
  } else {
    scale = scale_of(given, in, out, t);
  }
  int o = e.cast(e.iota({out}, 0, DType::Int64), t);
  int real;
  if (align_corners) {
    real = e.binary(OpKind::Mul, e.float_constant(scale, t), o);
  } else {
    int half = e.float_constant(0.5, t);
    real = e.binary(OpKind::Sub, e.binary(OpKind::Mul, e.float_constant(scale, t), e.binary(OpKind::Add, o, half)), half);
    real = e.where(e.binary(OpKind::Lt, real, e.float_constant(0.0, t)), e.float_constant(0.0, t), real);
  }
  LinearTaps taps;
  taps.i0 = e.binary(OpKind::Minimum, int_const(e, in - 1), e.cast(e.unary(OpKind::Floor, real), DType::Int64));
  int lambda = e.binary(OpKind::Sub, real, e.cast(taps.i0, t));
  lambda = e.binary(OpKind::Minimum, e.float_constant(1.0, t), e.binary(OpKind::Maximum, e.float_constant(0.0, t), lambda));
  taps.w1 = lambda;
  taps.w0 = e.binary(OpKind::Sub, e.float_constant(1.0, t), lambda);
  int not_last = e.cast(e.binary(OpKind::Lt, taps.i0, int_const(e, in - 1)), DType::Int64);
  taps.i1 = e.binary(OpKind::Add, taps.i0, not_last);
  return taps;
}

/// Linear interpolation over pooled dims d..n-1 of x: eager's separable evaluation, innermost
/// dim first: out = sum_j interp(rest at i_j) * w_j.
int linear_from(GraphEditor& e, int x, const std::vector<LinearTaps>& taps, size_t first, size_t d) {
  const LinearTaps& tp = taps[d - first];
  bool last = d + 1 >= first + taps.size();
  size_t rank = e.node(x).sizes.size();
  auto branch = [&](int idx, int weight) {
    int v = gather_along(e, x, idx, d);
    if (!last) v = linear_from(e, v, taps, first, d + 1);
    return e.binary(OpKind::Mul, v, along(e, weight, rank, d));
  };
  return e.binary(OpKind::Add, branch(tp.i0, tp.w0), branch(tp.i1, tp.w1));
}

/// The checks an upsample and its backward share: `sizes` (the other side's spatial sizes) and
/// `scales` name the last dims of `xs` past batch and channel, and neither side is empty.
void check_upsample(const char* what, const Sizes& xs, const std::vector<int64_t>& sizes,
                    const std::vector<double>& scales) {
  size_t n = sizes.size(), rank = xs.size();
  KILN_UNSUPPORTED_IF(n == 0 || n + 2 != rank || scales.size() != n, "{} of the wrong rank", what);
  for (size_t i = 0; i < n; ++i)
    KILN_UNSUPPORTED_IF(sizes[i] < 1 || xs[rank - n + i] < 1, "{} to or from an empty size", what);
}

}  // namespace

int upsample(GraphEditor& e, int x, Upsample mode, const std::vector<int64_t>& out_sizes,
             const std::vector<double>& scales, bool align_corners) {
  const Sizes xs = e.node(x).sizes;
  DType t = e.node(x).dtype;
  size_t n = out_sizes.size(), rank = xs.size();
  check_upsample("upsample", xs, out_sizes, scales);
  if (mode != Upsample::Linear) {
    int v = x;
    for (size_t i = 0; i < n; ++i)
      v = gather_along(e, v, nearest_index(e, mode, xs[rank - n + i], out_sizes[i], scales[i]), rank - n + i);
    return v;
  }
  KILN_UNSUPPORTED_IF(!is_float(t), "linear upsample of {} is not lowered", dtype_name(t));
  // Half types: source positions, weights and sums in float32, one rounding, as ATen's kernel.
  DType c = compute_dtype(t);
  std::vector<LinearTaps> taps;
  for (size_t i = 0; i < n; ++i) taps.push_back(linear_taps(e, xs[rank - n + i], out_sizes[i], scales[i], align_corners, c));
  return e.cast(linear_from(e, e.cast(x, c), taps, rank - n, rank - n), t);
}

int upsample_backward(GraphEditor& e, int grad, Upsample mode, const std::vector<int64_t>& in_sizes,
                      const std::vector<double>& scales, bool align_corners) {
  const Sizes gs = e.node(grad).sizes;
  DType t = e.node(grad).dtype;
  size_t n = in_sizes.size(), rank = gs.size();
  check_upsample("upsample backward", gs, in_sizes, scales);
  KILN_UNSUPPORTED_IF(!is_float(t), "upsample backward of {}", dtype_name(t));
  int g = grad;
  for (size_t k = n; k-- > 0;) {  // the forward gathered the outermost dim first
    size_t d = rank - n + k;
    int64_t in = in_sizes[k], out = gs[d];
    Sizes shape = e.node(g).sizes;
    shape[d] = in;
    int zeros = e.expand(e.constant(0.0, t), shape);
    if (mode != Upsample::Linear) {
      g = e.index_copy(zeros, nearest_index(e, mode, in, out, scales[k]), g, static_cast<int64_t>(d), ScatterCombine::Add);
      continue;
    }
    LinearTaps tp = linear_taps(e, in, out, scales[k], align_corners, t);
    size_t r = e.node(g).sizes.size();
    int a = e.index_copy(zeros, tp.i0, e.binary(OpKind::Mul, g, along(e, tp.w0, r, d)), static_cast<int64_t>(d),
                         ScatterCombine::Add);
    g = e.index_copy(a, tp.i1, e.binary(OpKind::Mul, g, along(e, tp.w1, r, d)), static_cast<int64_t>(d),
                     ScatterCombine::Add);
  }
  return g;
}

}  // namespace kiln::capture
