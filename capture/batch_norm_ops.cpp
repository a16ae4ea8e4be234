/// \file batch_norm_ops.cpp
/// Batch norm training forward and backward as primitive nodes (see batch_norm_ops.h).
///
/// Note [Batch norm statistics]
/// ATen's CPU kernel (batch_norm_cpu_collect_stats_contiguous_impl and
/// batch_norm_cpu_update_stats_template) computes, per channel over n = numel / C elements of
/// dtype T (float32 or float64): mean = T(sum_double(x) / n); var_sum = T(sum_double of the
/// T-products (x - mean) * (x - mean)); save_invstd = T(1 / sqrt(double(T(var_sum / n)) + eps))
/// (0 where the variance and eps are both 0); the new running stats with m = T(momentum):
/// m * mean + (1 - m) * running_mean in T, and T(m * double(T(var_sum / (n - 1))) + (1 - m) *
/// running_var) for the variance (unbiased). The output is x * alpha + beta with alpha =
/// invstd * w and beta = b - mean * invstd * w. The rules below follow those steps, so float32
/// results match eager's to an ulp or two (its channels-last and strided kernels round a little
/// differently again).
#include "capture/batch_norm_ops.h"

#include <cmath>
#include <utility>

#include "support/error.h"

namespace kiln::capture {
using namespace kiln::ir;

namespace {

constexpr DType kWide = DType::Float64;  // eager's accumulation type for float32 and float64

class Builder {
 public:
  Builder(GraphEditor& e, const BatchNorm& bn) : e_(e), bn_(bn) {
    const Node& x = e.node(bn.x);
    t_ = x.dtype;
    xs_ = x.sizes;
    KILN_UNSUPPORTED_IF(t_ != DType::Float32 && t_ != DType::Float64, "batch norm of {}", dtype_name(t_));
    KILN_UNSUPPORTED_IF(xs_.size() < 2 || x.numel() == 0, "batch norm of an input of rank {} with {} elements",
                        xs_.size(), x.numel());
    for (int v : {bn.weight, bn.bias, bn.running_mean, bn.running_var})
      if (v >= 0)
        KILN_UNSUPPORTED_IF(e.node(v).dtype != t_ || e.node(v).sizes != Sizes{xs_[1]},
                            "batch norm's per-channel operands must be {}[{}]", dtype_name(t_), xs_[1]);
    for (int64_t d = 0; d < static_cast<int64_t>(xs_.size()); ++d)
      if (d != 1) dims_.push_back(d);
    n_ = x.numel() / xs_[1];
  }

  int c(double v) { return e_.constant(v, t_); }
  int wide(double v) { return e_.constant(v, kWide); }
  int b(OpKind op, int a, int bb) { return e_.binary(op, a, bb); }
  int widen(int v) { return e_.cast(v, kWide); }
  int narrow(int v) { return e_.cast(v, t_); }
  /// Per-channel sum over every dim but 1, in float64: [1, C, 1, ...].
  int channel_sum(int v) { return e_.reduce(OpKind::Sum, widen(v), dims_, true); }
  /// A [C] vector as [1, C, 1, ...].
  int per_channel(int v) {
    Sizes s(xs_.size(), 1);
    s[1] = xs_[1];
    return e_.reshape(v, s);
  }
  /// A [1, C, 1, ...] value as [C].
  int vector(int v) { return e_.reshape(v, {xs_[1]}); }
  /// 1 / sqrt(var + eps) of a float64 variance, rounded to x's dtype (ATen's InvStd).
  int invstd(int var) {
    int r = b(OpKind::Div, wide(1.0), e_.unary(OpKind::Sqrt, b(OpKind::Add, var, wide(bn_.eps))));
    if (bn_.eps == 0) r = e_.where(b(OpKind::Eq, var, wide(0.0)), wide(0.0), r);
    return narrow(r);
  }
  /// The momentum as x's dtype holds it, and 1 minus it computed in that dtype.
  std::pair<double, double> momentum() const {
    if (t_ == DType::Float32) {
      float m = static_cast<float>(bn_.momentum);
      return {m, 1.0f - m};
    }
    return {bn_.momentum, 1.0 - bn_.momentum};
  }

  GraphEditor& e_;
  const BatchNorm& bn_;
  DType t_;
  Sizes xs_;
  std::vector<int64_t> dims_;
  int64_t n_ = 0;
};

}  // namespace

BatchNormTrain batch_norm_train(GraphEditor& e, const BatchNorm& bn) {
  Builder k(e, bn);
  int x = bn.x;
  // Note [Batch norm statistics]
  int mean = k.narrow(k.b(OpKind::Div, k.channel_sum(x), k.wide(static_cast<double>(k.n_))));
  int dev = k.b(OpKind::Sub, x, mean);
  int var_sum = k.narrow(k.channel_sum(k.b(OpKind::Mul, dev, dev)));
  int invstd = k.invstd(k.widen(k.b(OpKind::Div, var_sum, k.c(static_cast<double>(k.n_)))));
  int alpha = invstd, shift = k.b(OpKind::Mul, mean, invstd);
  if (bn.weight >= 0) {
    int w = k.per_channel(bn.weight);
    alpha = k.b(OpKind::Mul, alpha, w);
    shift = k.b(OpKind::Mul, shift, w);
  }
  int beta = k.b(OpKind::Sub, bn.bias >= 0 ? k.per_channel(bn.bias) : k.c(0.0), shift);
  BatchNormTrain r;
  r.out = k.b(OpKind::Add, k.b(OpKind::Mul, x, alpha), beta);
  r.save_mean = k.vector(mean);
  r.save_invstd = k.vector(invstd);
  auto [m, keep] = k.momentum();
  if (bn.running_mean >= 0) {
    int old = k.b(OpKind::Mul, k.c(keep), bn.running_mean);
    r.running_mean = k.b(OpKind::Add, k.b(OpKind::Mul, k.c(m), r.save_mean), old);
  }
  if (bn.running_var >= 0) {
    // n == 1 divides by 0, as eager does (inf, or nan for a zero sum).
    int unbiased = k.widen(k.b(OpKind::Div, var_sum, k.c(static_cast<double>(k.n_ - 1))));
    int old = k.widen(k.b(OpKind::Mul, k.c(keep), bn.running_var));
    r.running_var = k.narrow(k.b(OpKind::Add, k.b(OpKind::Mul, k.wide(m), k.vector(unbiased)), old));
  }
  return r;
}

BatchNormGrads batch_norm_backward(GraphEditor& e, const BatchNorm& bn, int grad_out, int save_mean, int save_invstd,
                                   bool train) {
  Builder k(e, bn);
  KILN_UNSUPPORTED_IF(e.node(grad_out).dtype != k.t_ || e.node(grad_out).sizes != k.xs_,
                      "batch norm backward's gradient differs from its input in type");
  int mean, invstd;
  if (train) {
    KILN_UNSUPPORTED_IF(save_mean < 0 || save_invstd < 0, "batch norm backward (train) without saved statistics");
    for (int v : {save_mean, save_invstd})
      KILN_UNSUPPORTED_IF(e.node(v).dtype != k.t_ || e.node(v).sizes != Sizes{k.xs_[1]},
                          "batch norm backward's saved statistics must be {}[{}]", dtype_name(k.t_), k.xs_[1]);
    mean = k.per_channel(save_mean);
    invstd = k.per_channel(save_invstd);
  } else {
    KILN_UNSUPPORTED_IF(bn.running_mean < 0 || bn.running_var < 0, "batch norm backward (eval) without running stats");
    mean = k.per_channel(bn.running_mean);
    // ATen: 1 / sqrt(running_var + eps) in double, rounded to x's dtype (no zero test here).
    int var = k.widen(k.per_channel(bn.running_var));
    invstd = k.narrow(k.b(OpKind::Div, k.wide(1.0), e.unary(OpKind::Sqrt, k.b(OpKind::Add, var, k.wide(bn.eps)))));
  }
  int x = bn.x, g = grad_out;
  int w = bn.weight >= 0 ? k.per_channel(bn.weight) : k.c(1.0);
  // Per channel: sum(dy) and dot((x - mean), dy), accumulated in float64.
  int dev = k.b(OpKind::Sub, x, mean);
  int sum = k.channel_sum(g);
  int dotp = k.channel_sum(k.b(OpKind::Mul, dev, g));
  int invstd_w = k.widen(invstd);
  BatchNormGrads r;
  if (train) {
    // dx = (dy - mean(dy) - (x - mean) * dot * invstd^2 / n) * invstd * w: the output's
    // gradient less its projections on the mean and on the normalised input.
    double n = static_cast<double>(k.n_);
    int proj = k.narrow(k.b(OpKind::Div, k.b(OpKind::Mul, k.b(OpKind::Mul, dotp, invstd_w), invstd_w), k.wide(n)));
    int grad_mean = k.narrow(k.b(OpKind::Div, sum, k.wide(n)));
    int centred = k.b(OpKind::Sub, k.b(OpKind::Sub, g, grad_mean), k.b(OpKind::Mul, dev, proj));
    r.input = k.b(OpKind::Mul, k.b(OpKind::Mul, centred, invstd), w);
  } else {
    r.input = k.b(OpKind::Mul, k.b(OpKind::Mul, g, invstd), w);
  }
  r.weight = k.vector(k.narrow(k.b(OpKind::Mul, dotp, invstd_w)));
  r.bias = k.vector(k.narrow(sum));
  return r;
}

}  // namespace kiln::capture
