/// \file decompose.cpp
/// The decomposition rules, one per composite op, each a few primitive nodes.
#include "passes/decompose.h"

#include <cmath>

#include "ir/graph_editor.h"
#include "support/error.h"

namespace kiln::passes {
using namespace kiln::ir;

namespace {
/// Emits primitive nodes for one composite; `x` is already remapped into the new graph.
class Decomposer {
 public:
  Decomposer(GraphEditor& e, DType t) : e_(e), t_(t) {}
  int c(double v) { return e_.constant(v, t_); }
  int u(OpKind op, int a) { return e_.unary(op, a); }
  int b(OpKind op, int a, int bb) { return e_.binary(op, a, bb); }

  int run(const Node& n, const std::vector<int>& in) {
    int x = in[0];
    const auto& f = n.attrs.floats;
    switch (n.op) {
      // Bounds go first: Maximum(a, b) picks a only when a is NaN or a > b, so a clamp keeps x
      // itself when x equals the bound (relu(-0.0) == -0.0 as in eager) and still propagates a
      // NaN x (a > NaN is false) or a NaN bound.
      case OpKind::Relu:
        return b(OpKind::Maximum, c(0), x);
      case OpKind::LeakyRelu:
        return e_.where(b(OpKind::Gt, x, c(0)), x, b(OpKind::Mul, x, c(f.at(0))));
      case OpKind::Elu: {
        // alpha * scale * expm1(x * input_scale) for x <= 0, scale * x otherwise.
        double alpha = f.at(0), scale = f.at(1), input_scale = f.at(2);
        int neg = b(OpKind::Mul, u(OpKind::Expm1, b(OpKind::Mul, x, c(input_scale))), c(alpha * scale));
        return e_.where(b(OpKind::Gt, x, c(0)), b(OpKind::Mul, x, c(scale)), neg);
      }
      case OpKind::Gelu: {
        int cdf = b(OpKind::Add, c(1), u(OpKind::Erf, b(OpKind::Mul, x, c(M_SQRT1_2))));
        return b(OpKind::Mul, b(OpKind::Mul, x, c(0.5)), cdf);
      }
      case OpKind::GeluTanh: {
        int x3 = b(OpKind::Mul, b(OpKind::Mul, x, x), x);
        int inner = b(OpKind::Mul, b(OpKind::Add, x, b(OpKind::Mul, x3, c(0.044715))), c(std::sqrt(2.0 / M_PI)));
        return b(OpKind::Mul, b(OpKind::Mul, x, c(0.5)), b(OpKind::Add, c(1), u(OpKind::Tanh, inner)));
      }
      case OpKind::Silu:
        return b(OpKind::Mul, x, u(OpKind::Sigmoid, x));
      case OpKind::Mish:
        return b(OpKind::Mul, x, u(OpKind::Tanh, softplus(x, 1.0, 20.0)));
      case OpKind::Hardsigmoid:
        return b(OpKind::Div, relu6(b(OpKind::Add, x, c(3))), c(6));
      case OpKind::Hardswish:
        return b(OpKind::Div, b(OpKind::Mul, x, relu6(b(OpKind::Add, x, c(3)))), c(6));
      case OpKind::Softplus:
        return softplus(x, f.at(0), f.at(1));
      case OpKind::Clamp: {
        int r = x;
        if (n.attrs.ints.at(0)) r = b(OpKind::Maximum, in[1], r);
        if (n.attrs.ints.at(1)) r = b(OpKind::Minimum, in[2], r);
        return r;
      }
      default:
        return run_reduce(n, in);
    }
  }

  /// Composite reductions and normalisations.
  int run_reduce(const Node& n, const std::vector<int>& in) {
    int x = in[0];
    const auto& f = n.attrs.floats;
    const Sizes xs = e_.node(x).sizes;  // a copy: appending nodes moves the graph
    std::vector<int64_t> dims = n.attrs.ints;
    bool keep = n.attrs.int_value != 0;
    switch (n.op) {
      case OpKind::Mean:
        return mean(x, dims, keep);
      case OpKind::Var:
      case OpKind::Std: {
        // float32 squares overflow from |d| ~ 1.8e19 while the variance (or std) of such values
        // is still finite: like eager (double accumulators), take the mean, square and sum in
        // float64 and round once at the end. A float32 mean of equal values is not always that
        // value (7 * 0.7853982f / 7 is off by an ulp), and a std of 1e-8 where eager's is 0
        // turned a later 0 * inf = nan into inf.
        bool widen = t_ == DType::Float32;
        double count = static_cast<double>(reduced_count(xs, dims));
        int src = widen ? e_.cast(x, DType::Float64) : x;
        int d = b(OpKind::Sub, src, mean(src, dims, true));
        int ss = e_.reduce(OpKind::Sum, b(OpKind::Mul, d, d), dims, keep);
        int v = b(OpKind::Div, ss, e_.constant(std::max(0.0, count - f.at(0)), widen ? DType::Float64 : t_));
        if (n.op == OpKind::Std) v = u(OpKind::Sqrt, v);
        return widen ? e_.cast(v, t_) : v;
      }
      case OpKind::LogSumExp: {
        // torch: log(sum(exp(x - m))) + m with m = amax, infinite maxima replaced by 0.
        int m = e_.reduce(OpKind::Amax, x, dims, true);
        int inf = b(OpKind::Eq, u(OpKind::Abs, m), c(INFINITY));
        int m0 = e_.where(inf, c(0), m);
        int s = e_.reduce(OpKind::Sum, u(OpKind::Exp, b(OpKind::Sub, x, m0)), dims, keep);
        int m_out = keep ? m0 : e_.reshape(m0, e_.node(s).sizes);
        return b(OpKind::Add, u(OpKind::Log, s), m_out);
      }
      case OpKind::Norm: {
        double p = f.at(0);
        int a = u(OpKind::Abs, x);
        if (p != 0 && reduced_count(xs, dims) == 1) {
          // One element per result: eager returns |x| itself (no pow round trip that would
          // overflow for |x| above ~1e13 with p = 3).
          int r = e_.reduce(OpKind::Sum, a, dims, keep);
          return r;
        }
        if (p == 2) return u(OpKind::Sqrt, e_.reduce(OpKind::Sum, b(OpKind::Mul, x, x), dims, keep));
        if (p == 1) return e_.reduce(OpKind::Sum, a, dims, keep);
        if (std::isinf(p)) return e_.reduce(p > 0 ? OpKind::Amax : OpKind::Amin, a, dims, keep);
        if (p == 0) return e_.reduce(OpKind::Sum, e_.cast(b(OpKind::Ne, x, c(0)), t_), dims, keep);
        int s = e_.reduce(OpKind::Sum, b(OpKind::Pow, a, c(p)), dims, keep);
        return b(OpKind::Pow, s, c(1.0 / p));
      }
      case OpKind::Softmax:
      case OpKind::LogSoftmax: {
        int m = e_.reduce(OpKind::Amax, x, dims, true);
        int shifted = b(OpKind::Sub, x, m);
        int ex = u(OpKind::Exp, shifted);
        int s = e_.reduce(OpKind::Sum, ex, dims, true);
        if (n.op == OpKind::Softmax) return b(OpKind::Div, ex, s);
        return b(OpKind::Sub, shifted, u(OpKind::Log, s));
      }
      case OpKind::LayerNorm: {
        std::vector<int64_t> last = trailing_dims(xs, n.attrs.ints.at(0));
        int m = exact_mean(x, last);
        int d = b(OpKind::Sub, x, m);
        int y = b(OpKind::Mul, d, wide_rstd(d, last, f.at(0)));
        if (n.attrs.ints.at(1)) y = b(OpKind::Mul, y, in[1]);
        if (n.attrs.ints.at(2)) y = b(OpKind::Add, y, in[2]);
        return y;
      }
      case OpKind::LayerNormMean:
        return exact_mean(x, trailing_dims(xs, n.attrs.ints.at(0)));
      case OpKind::LayerNormRstd: {
        // The same nodes as LayerNorm's rstd above (CSE merges them when both are recorded).
        std::vector<int64_t> last = trailing_dims(xs, n.attrs.ints.at(0));
        return wide_rstd(b(OpKind::Sub, x, exact_mean(x, last)), last, f.at(0));
      }
      case OpKind::RmsNorm: {
        std::vector<int64_t> last = trailing_dims(xs, n.attrs.ints.at(0));
        double eps = f.at(0) >= 0 ? f.at(0) : (t_ == DType::Float64 ? 2.220446049250313e-16 : 1.1920928955078125e-07);
        int ms = mean(b(OpKind::Mul, x, x), last, true);
        int y = b(OpKind::Mul, x, u(OpKind::Rsqrt, b(OpKind::Add, ms, c(eps))));
        if (n.attrs.ints.at(1)) y = b(OpKind::Mul, y, in[1]);
        return y;
      }
      case OpKind::GroupNorm: {
        int64_t groups = n.attrs.ints.at(0);
        Sizes grouped = {xs[0], groups, numel(xs) / std::max<int64_t>(xs[0] * groups, 1)};
        int g = e_.reshape(x, grouped);
        int m = exact_mean(g, {2});
        int d = b(OpKind::Sub, g, m);
        int rstd = wide_rstd(d, {2}, f.at(0));
        // As torch's kernels (CPU and CUDA): per (sample, channel) scale = rstd * w and
        // shift = b - mean * scale, then y = x * scale + shift. The grouping matters beyond
        // rounding: with an infinite weight, x * inf + (-mean * inf) is nan where
        // (x - mean) * rstd * inf is +-inf, and eager returns the nan.
        Sizes per_group = {xs[0], groups, xs[1] / std::max<int64_t>(groups, 1)};
        Sizes per_channel(xs.size(), 1);
        per_channel[0] = xs[0];
        per_channel[1] = xs[1];
        auto by_channel = [&](int v) { return e_.reshape(e_.expand(v, per_group), per_channel); };
        int scale = by_channel(rstd);
        if (n.attrs.ints.at(1)) scale = b(OpKind::Mul, scale, channel_view(in[1], xs));
        int shift = u(OpKind::Neg, b(OpKind::Mul, by_channel(m), scale));
        if (n.attrs.ints.at(2)) shift = b(OpKind::Sub, channel_view(in[2], xs), b(OpKind::Mul, by_channel(m), scale));
        return b(OpKind::Add, b(OpKind::Mul, x, scale), shift);
      }
      case OpKind::BatchNormEval: {
        auto [alpha, beta] = batch_norm_scale_shift(e_, n, in);
        return b(OpKind::Add, b(OpKind::Mul, x, channel_view(alpha, xs)), channel_view(beta, xs));
      }
      default:
        KILN_UNREACHABLE(std::string("no decomposition for ") + op_name(n.op));
    }
  }

 private:
  static int64_t reduced_count(const Sizes& xs, const std::vector<int64_t>& dims) {
    int64_t n = 1;
    for (int64_t d : dims) n *= xs[d];
    return n;
  }
  static std::vector<int64_t> trailing_dims(const Sizes& xs, int64_t k) {
    std::vector<int64_t> d;
    for (int64_t i = static_cast<int64_t>(xs.size()) - k; i < static_cast<int64_t>(xs.size()); ++i) d.push_back(i);
    return d;
  }
  int mean(int x, const std::vector<int64_t>& dims, bool keep) {
    int s = e_.reduce(OpKind::Sum, x, dims, keep);
    double count = static_cast<double>(reduced_count(e_.node(x).sizes, dims));
    return b(OpKind::Div, s, e_.constant(count, e_.node(x).dtype));  // in x's dtype (var's float64 mean)
  }
  /// The mean a normalisation subtracts: float32 values are summed and divided in float64, so the
  /// mean of a constant row is that constant exactly (as eager's Welford moments give it) and
  /// x - mean is 0. A float32 sum left a residue that the row's tiny rstd scaled up: LayerNorm
  /// of a row of 123.456s gave -0.012 instead of 0, and an infinite weight turned eager's
  /// 0 * inf = nan into +-inf (found by the fuzzer).
  int exact_mean(int x, const std::vector<int64_t>& dims) {
    if (e_.node(x).dtype != DType::Float32) return mean(x, dims, true);
    return e_.cast(mean(e_.cast(x, DType::Float64), dims, true), DType::Float32);
  }
  /// 1 / sqrt(mean(d * d) + eps) of a normalisation's deviations `d`: for float32, squared,
  /// summed and rooted in float64 and rounded once. float32 squares overflow from |d| ~ 1.8e19
  /// (the deviations of a row holding 1e30): the variance became inf, rstd 0 and the row 0,
  /// where the true rows are +-1 (a fuzzer finding).
  int wide_rstd(int d, const std::vector<int64_t>& dims, double eps) {
    DType t = e_.node(d).dtype;
    bool widen = t == DType::Float32;
    int src = widen ? e_.cast(d, DType::Float64) : d;
    int var = mean(b(OpKind::Mul, src, src), dims, true);
    int rstd = u(OpKind::Rsqrt, b(OpKind::Add, var, e_.constant(eps, widen ? DType::Float64 : t)));
    return widen ? e_.cast(rstd, t) : rstd;
  }
  /// A per-channel vector [C] as [C, 1, ...] so it broadcasts against x of shape [N, C, ...].
  int channel_view(int v, const Sizes& xs) {
    if (e_.node(v).sizes.empty()) return v;
    Sizes s(xs.size() - 1, 1);
    s[0] = xs[1];
    return e_.reshape(v, s);
  }
  int relu6(int x) { return b(OpKind::Minimum, c(6), b(OpKind::Maximum, c(0), x)); }
  // torch: x where beta*x > threshold, else log1p(exp(beta*x)) / beta.
  int softplus(int x, double beta, double threshold) {
    int bx = b(OpKind::Mul, x, c(beta));
    int soft = b(OpKind::Div, u(OpKind::Log1p, u(OpKind::Exp, bx)), c(beta));
    return e_.where(b(OpKind::Gt, bx, c(threshold)), x, soft);
  }
  GraphEditor& e_;
  DType t_;
};
}  // namespace

std::pair<int, int> batch_norm_scale_shift(GraphEditor& e, const Node& bn, const std::vector<int>& in) {
  // As torch's CPU kernel: alpha = invstd * w, beta = b - mean * alpha (y = x * alpha + beta).
  // eps in the variance's dtype: a half batch norm decomposes on float32 copies (Note [Half
  // composites]), so it is not always bn.dtype.
  int alpha =
      e.unary(OpKind::Rsqrt, e.binary(OpKind::Add, in[4], e.constant(bn.attrs.floats.at(0), e.node(in[4]).dtype)));
  if (bn.attrs.ints.at(0)) alpha = e.binary(OpKind::Mul, alpha, in[1]);
  int shift = e.binary(OpKind::Mul, in[3], alpha);
  int beta = bn.attrs.ints.at(1) ? e.binary(OpKind::Sub, in[2], shift) : e.unary(OpKind::Neg, shift);
  return {alpha, beta};
}

Graph run_decompose(const Graph& g, const PassOptions&) {
  Graph out;
  GraphEditor e(out);
  std::vector<int> remap(g.nodes.size(), -1);
  for (size_t i = 0; i < g.nodes.size(); ++i) {
    const Node& n = g.nodes[i];
    std::vector<int> in;
    for (int x : n.inputs) in.push_back(remap[x]);
    if (op_category(n.op) == OpCategory::Composite || op_category(n.op) == OpCategory::CompositeReduce) {
      // Note [Half composites]: torch computes a float16/bfloat16 softmax, norm or activation
      // in float32 and rounds its result once. Decomposed in the half type, each inner
      // reduction (a softmax's sum, a layer norm's mean) would round to 8 or 11 bits before the
      // rest reads it; so the decomposition runs on float32 copies of the half operands and
      // casts its result back (the casts in are exact, and free in registers). Its moments
      // accumulate in float64 as float32's do: where eager's float32 accumulators overflow (a
      // row holding 1e30), eager returns zeros or NaN and kiln the normalised row.
      bool half = is_half(n.dtype);
      if (half)
        for (int& x : in)
          if (out.nodes[x].dtype == n.dtype) x = e.cast(x, DType::Float32);
      Decomposer d(e, half ? DType::Float32 : n.dtype);
      remap[i] = d.run(n, in);
      if (half) remap[i] = e.cast(remap[i], n.dtype);
      // Keep the layout eager chose for this value.
      if (!n.strides.empty() && out.nodes[remap[i]].op != OpKind::Input) out.nodes[remap[i]].strides = n.strides;
    } else {
      Node copy = n;
      copy.inputs = in;
      remap[i] = e.append(std::move(copy));
      if (n.op == OpKind::Input) out.input_ids.push_back(remap[i]);
    }
  }
  for (int o : g.outputs) out.outputs.push_back(remap[o]);
  out.output_leaf = g.output_leaf;
  return out;
}

}  // namespace kiln::passes
