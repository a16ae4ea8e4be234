/// \file backward_ops.cpp
/// Derivative rules as primitive nodes (see backward_ops.h).
#include "capture/backward_ops.h"

#include <cmath>
#include <set>

#include "support/error.h"

namespace kiln::capture {
using namespace kiln::ir;

namespace {

/// Arithmetic in one compute dtype: the short names the rules below are written in.
class Rule {
 public:
  Rule(GraphEditor& e, DType t) : e_(e), t_(t) {}
  DType t() const { return t_; }
  /// A constant in the compute dtype (rounded to it, as ATen's `scalar_t(v)` is).
  int c(double v) { return e_.constant(v, t_); }
  /// A value in the compute dtype.
  int in(int v) { return e_.cast(v, t_); }
  int add(int a, int b) { return e_.binary(OpKind::Add, a, b); }
  int sub(int a, int b) { return e_.binary(OpKind::Sub, a, b); }
  int mul(int a, int b) { return e_.binary(OpKind::Mul, a, b); }
  int div(int a, int b) { return e_.binary(OpKind::Div, a, b); }
  int gt(int a, int b) { return e_.binary(OpKind::Gt, a, b); }
  int lt(int a, int b) { return e_.binary(OpKind::Lt, a, b); }
  int le(int a, int b) { return e_.binary(OpKind::Le, a, b); }
  int ge(int a, int b) { return e_.binary(OpKind::Ge, a, b); }
  int both(int a, int b) { return e_.binary(OpKind::LogicalAnd, a, b); }
  int u(OpKind op, int a) { return e_.unary(op, a); }
  int where(int c, int a, int b) { return e_.where(c, a, b); }
  int sum(int x, const std::vector<int64_t>& dims, bool keep) { return e_.reduce(OpKind::Sum, x, dims, keep); }
  /// 1 / (1 + exp(-x)): the sigmoid ATen's silu and mish kernels compute.
  int sigmoid(int x) { return div(c(1), add(c(1), u(OpKind::Exp, u(OpKind::Neg, x)))); }

 private:
  GraphEditor& e_;
  DType t_;
};

/// The dtype a rule computes in: float32 for float16/bfloat16 (ATen's CPU kernels convert
/// them, and take their scalar arguments as floats), the operand's own otherwise.

/// A rule's constant as ATen's kernel holds it: `v` rounded to the dtype `t` the kernel runs in.
double held(double v, DType t) { return round_to_dtype(v, t); }

// ---- pointwise derivatives: grad and the forward's input (or result), of one float dtype -----
/// The derivative of activation `name` at `x` times `g` (both in the compute dtype), written as
/// ATen's vectorised CPU kernel evaluates it: the same operations in the same order, its blends
/// as the wheres below. For a NaN x, eager itself is not consistent in three of them: its scalar
/// loop (tensors under 2 vectors, and the tail of longer ones) takes another branch than its
/// vector body in hardtanh's, hardswish's and elu's kernels. kiln follows the vector body, which
/// computes all but the last few elements of any sizeable tensor (NaN for hardswish and elu, 0
/// for hardtanh; found by the training fuzzer on a 32-element elu).
int activation_derivative(Rule& r, const std::string& name, int g, int x, const Attrs& a) {
  const auto& f = a.floats;
  if (name == "gelu_backward" && a.int_value == 0) {
    // cdf + x * pdf with pdf = exp(-x^2 / 2) / sqrt(2 pi)
    int cdf = r.mul(r.c(0.5), r.add(r.c(1), r.u(OpKind::Erf, r.mul(x, r.c(M_SQRT1_2)))));
    int pdf = r.mul(r.c(M_2_SQRTPI * M_SQRT1_2 * 0.5), r.u(OpKind::Exp, r.mul(r.mul(x, x), r.c(-0.5))));
    return r.mul(g, r.add(cdf, r.mul(x, pdf)));
  }
  if (name == "gelu_backward") {
    // d/dx 0.5 x (1 + tanh(beta (x + kappa x^3))); ATen forms 3 * kappa in the dtype first.
    double beta = M_SQRT2 * M_2_SQRTPI * 0.5, kappa = held(0.044715, r.t());
    int x_sq = r.mul(x, x);
    int inner = r.mul(r.c(beta), r.add(x, r.mul(r.c(kappa), r.mul(x_sq, x))));
    int th = r.u(OpKind::Tanh, inner);
    int left = r.mul(r.c(0.5), x);
    int left_derivative = r.mul(r.c(0.5), r.add(r.c(1), th));
    int tanh_derivative = r.sub(r.c(1), r.mul(th, th));
    int inner_derivative = r.mul(r.c(beta), r.add(r.c(1), r.mul(r.c(held(3 * kappa, r.t())), x_sq)));
    int right_derivative = r.mul(r.mul(left, tanh_derivative), inner_derivative);
    return r.mul(g, r.add(left_derivative, right_derivative));
  }
  if (name == "silu_backward") {
    int s = r.sigmoid(x);
    return r.mul(r.mul(g, s), r.add(r.c(1), r.mul(x, r.sub(r.c(1), s))));
  }
  if (name == "mish_backward") {
    int s = r.sigmoid(x);
    int tsp = r.u(OpKind::Tanh, r.u(OpKind::Log1p, r.u(OpKind::Exp, x)));
    return r.mul(g, r.add(tsp, r.mul(r.mul(x, s), r.sub(r.c(1), r.mul(tsp, tsp)))));
  }
  // x <= threshold gives 0, else the grad (NaN x included); a half x is compared in float32
  // with the threshold as a float, as eager's CPU and CUDA kernels compare.
  if (name == "threshold_backward") return r.where(r.le(x, r.c(f.at(0))), r.c(0), g);
  if (name == "sigmoid_backward") return r.mul(r.mul(g, r.sub(r.c(1), x)), x);  // x: sigmoid's result
  if (name == "tanh_backward") return r.mul(g, r.sub(r.c(1), r.mul(x, x)));     // x: tanh's result
  if (name == "hardswish_backward") {
    // 0 up to -3 (included), g from 3, g * (x / 3 + 1/2) between (and for NaN: NaN).
    int mid = r.mul(g, r.add(r.div(x, r.c(3)), r.c(0.5)));
    return r.where(r.le(x, r.c(-3)), r.c(0), r.where(r.ge(x, r.c(3)), g, mid));
  }
  if (name == "hardsigmoid_backward") {
    // ATen's 1/6 is a float literal (1.0f / 6.0f), also for double tensors.
    int inside = r.both(r.gt(x, r.c(-3)), r.lt(x, r.c(3)));
    return r.where(inside, r.mul(g, r.c(held(1.0 / 6.0, DType::Float32))), r.c(0));
  }
  if (name == "hardtanh_backward") return r.where(r.both(r.gt(x, r.c(f.at(0))), r.lt(x, r.c(f.at(1)))), g, r.c(0));
  if (name == "leaky_relu_backward") return r.where(r.gt(x, r.c(0)), g, r.mul(g, r.c(f.at(0))));
  if (name == "softplus_backward") {
    double beta = f.at(0);
    int bx = r.mul(x, r.c(beta));
    int z = r.u(OpKind::Exp, bx);
    return r.where(r.gt(bx, r.c(f.at(1))), g, r.div(r.mul(g, z), r.add(z, r.c(1))));
  }
  if (name == "elu_backward") {
    // floats = alpha, scale, input_scale; ATen multiplies alpha * scale in the dtype first.
    double negcoef = held(held(f.at(0), r.t()) * held(f.at(1), r.t()), r.t());
    double poscoef = f.at(1), negiptcoef = f.at(2);
    int neg = a.int_value != 0 ? r.mul(r.mul(g, r.c(negiptcoef)), r.add(x, r.c(negcoef)))  // x: elu's result
                               : r.mul(r.mul(r.mul(g, r.c(negiptcoef)), r.c(negcoef)),
                                       r.u(OpKind::Exp, r.mul(x, r.c(negiptcoef))));
    return r.where(r.gt(x, r.c(0)), r.mul(g, r.c(poscoef)), neg);  // NaN: the vector body's choice
  }
  throw Unsupported("no derivative rule named " + name);
}

int pointwise_backward(GraphEditor& e, const std::string& name, const std::vector<int>& xs, const Attrs& a) {
  KILN_UNSUPPORTED_IF(xs.size() != 2, "{} takes grad and one tensor", name);
  DType out = e.node(xs[0]).dtype;
  KILN_UNSUPPORTED_IF(!is_float(out) || e.node(xs[1]).dtype != out, "{} of {} and {}", name, dtype_name(out),
                      dtype_name(e.node(xs[1]).dtype));
  Rule r(e, compute_dtype(out));
  return e.cast(activation_derivative(r, name, r.in(xs[0]), r.in(xs[1]), a), out);
}

// ---- row derivatives ------------------------------------------------------------------------
/// _softmax_backward_data / _log_softmax_backward_data (grad, y = the forward's result):
/// y * (g - sum(g * y)) and g - exp(y) * sum(g) along `dim`, as ATen's kernels.
int softmax_backward(GraphEditor& e, const std::string& name, const std::vector<int>& xs, const Attrs& a) {
  KILN_UNSUPPORTED_IF(xs.size() != 2, "{} takes grad and output", name);
  DType out = e.node(xs[0]).dtype;
  KILN_UNSUPPORTED_IF(!is_float(out) || e.node(xs[1]).dtype != out, "{} of {}", name, dtype_name(out));
  int64_t rank = static_cast<int64_t>(e.node(xs[0]).sizes.size());
  int64_t d = a.ints.at(0);
  if (d < 0) d += std::max<int64_t>(rank, 1);
  KILN_UNSUPPORTED_IF(d < 0 || d >= std::max<int64_t>(rank, 1), "{} dim out of range", name);
  std::vector<int64_t> dims;
  if (rank > 0) dims.push_back(d);  // a 0-dim tensor is its own row
  Rule r(e, compute_dtype(out));
  int g = r.in(xs[0]), y = r.in(xs[1]);
  int res = name == "softmax_backward" ? r.mul(y, r.sub(g, r.sum(r.mul(g, y), dims, true)))
                                       : r.sub(g, r.mul(r.u(OpKind::Exp, y), r.sum(g, dims, true)));
  return e.cast(res, out);
}

/// The shape of the saved statistics of a layer norm over the last `k` dims of `xs`:
/// xs[:-k] + [1] * k.
Sizes stats_shape(const Sizes& xs, int64_t k) {
  Sizes s = xs;
  for (size_t i = xs.size() - static_cast<size_t>(k); i < xs.size(); ++i) s[i] = 1;
  return s;
}

std::vector<int64_t> dim_range(int64_t begin, int64_t end) {
  std::vector<int64_t> d;
  for (int64_t i = begin; i < end; ++i) d.push_back(i);
  return d;
}

/// native_layer_norm_backward's three results from the saved mean and rstd, as ATen's CPU kernel
/// computes them per row of N elements (it is x_hat = (x - mean) * rstd, g = grad * weight,
/// grad_input = rstd * (g - mean(g) - x_hat * mean(g * x_hat)), grouped as eager groups it, so
/// rounding, infinities and NaN come out as eager's):
///   ds = sum(grad * x * w), db = sum(grad * w), b = (db * mean - ds) * rstd^3 / N,
///   c = -b * mean - db * rstd / N, grad_input = rstd * grad * w + b * x + c;
///   grad_weight = sum over rows of grad * (rstd * x - rstd * mean); grad_bias = sum of grad.
int layer_norm_backward(GraphEditor& e, const std::string& name, const std::vector<int>& xs, const Attrs& a) {
  int64_t k = a.ints.at(0);
  int grad = xs.at(0);
  const Sizes gs = e.node(grad).sizes;
  int64_t rank = static_cast<int64_t>(gs.size());
  KILN_UNSUPPORTED_IF(k < 1 || k > rank, "{} over {} dims of a rank-{} tensor", name, k, rank);
  DType out = e.node(grad).dtype;
  KILN_UNSUPPORTED_IF(!is_float(out), "{} of {}", name, dtype_name(out));
  Rule r(e, compute_dtype(out));
  std::vector<int64_t> lead = dim_range(0, rank - k), last = dim_range(rank - k, rank);
  // A sum over the leading dims; with none, the value itself (an empty list reduces all dims).
  auto over_rows = [&](int v) { return lead.empty() ? v : r.sum(v, lead, false); };
  int dy = r.in(grad);
  if (name == "layer_norm_backward_bias") return e.cast(over_rows(dy), out);
  KILN_UNSUPPORTED_IF(xs.size() < 4, "{} takes grad, input, mean, rstd", name);
  KILN_UNSUPPORTED_IF(e.node(xs[1]).dtype != out || e.node(xs[1]).sizes != gs, "{}: input and grad differ", name);
  Sizes ss = stats_shape(gs, k);
  int x = r.in(xs[1]);
  int mean = r.in(e.reshape(xs[2], ss)), rstd = r.in(e.reshape(xs[3], ss));
  if (name == "layer_norm_backward_weight") {
    int neg_shift = r.mul(r.u(OpKind::Neg, rstd), mean);
    return e.cast(over_rows(r.mul(dy, r.add(r.mul(rstd, x), neg_shift))), out);
  }
  KILN_UNSUPPORTED_IF(name != "layer_norm_backward_input", "no layer norm rule named {}", name);
  int w = -1;
  if (a.ints.at(1) != 0) {
    KILN_UNSUPPORTED_IF(xs.size() != 5 || e.node(xs[4]).dtype != out, "{}: weight", name);
    w = r.in(xs[4]);
  }
  auto times_w = [&](int v) { return w < 0 ? v : r.mul(v, w); };
  int64_t n = 1;
  for (int64_t d : last) n *= gs[d];
  // ATen's scale, 1 / N, divided in its accumulation type.
  double scale = r.t() == DType::Float32 ? static_cast<double>(1.0f / static_cast<float>(n))
                                         : 1.0 / static_cast<double>(n);
  int ds = r.sum(times_w(r.mul(dy, x)), last, true);
  int db = r.sum(times_w(dy), last, true);
  int b = r.mul(r.mul(r.mul(r.mul(r.sub(r.mul(db, mean), ds), rstd), rstd), rstd), r.c(scale));
  int c = r.sub(r.mul(r.u(OpKind::Neg, b), mean), r.mul(r.mul(db, rstd), r.c(scale)));
  return e.cast(r.add(r.add(times_w(r.mul(rstd, dy)), r.mul(b, x)), c), out);
}

// ---- losses ---------------------------------------------------------------------------------
/// The per-target reads of nll_loss and its derivative (x: [C], [N, C] or [N, C, d...];
/// target: x's shape without the class dim).
struct NllTargets {
  int64_t class_dim = 0, reduction = 0;
  Sizes target_shape, column;  // column: target_shape with a 1 at class_dim
  int valid = -1;              // bool: target != ignore_index
  int target = -1;
  int x_at = -1;               // x at each target (gathered; ignored targets read class 0)
  int weight_at = -1;          // the class weight at each target (1 without weights)
};

/// Gathers what every nll rule reads. An ignored target reads class 0; any other target out of
/// [0, C) makes the weight gather flag the call (the program then fails and eager raises its
/// IndexError), so nothing is read out of bounds. Without class weights the weight gather
/// reads a vector of ones: it keeps that check when the rule reads nothing else at the target.
NllTargets nll_targets(GraphEditor& e, Rule& r, int x, int target, int weight, const Attrs& a) {
  NllTargets t;
  const Sizes xs = e.node(x).sizes;
  KILN_UNSUPPORTED_IF(xs.empty(), "nll_loss of a 0-dim input");
  t.class_dim = xs.size() == 1 ? 0 : 1;
  int64_t classes = xs[t.class_dim];
  KILN_UNSUPPORTED_IF(classes < 1, "nll_loss without classes");
  t.reduction = a.ints.at(0);
  KILN_UNSUPPORTED_IF(t.reduction < 0 || t.reduction > 2, "nll_loss reduction {}", t.reduction);
  t.target_shape = xs;
  t.target_shape.erase(t.target_shape.begin() + t.class_dim);
  t.column = xs;
  t.column[t.class_dim] = 1;
  KILN_UNSUPPORTED_IF(e.node(target).dtype != DType::Int64 || e.node(target).sizes != t.target_shape,
                      "nll_loss target of the wrong dtype or shape");
  t.target = target;
  t.valid = e.binary(OpKind::Ne, target, e.int_constant(a.ints.at(1), DType::Int64));
  int safe = e.where(t.valid, target, e.int_constant(0, DType::Int64));
  t.x_at = e.reshape(e.gather(x, e.reshape(safe, t.column), t.class_dim, false), t.target_shape);
  int w = weight >= 0 ? r.in(weight) : e.expand(r.c(1), {classes});
  KILN_UNSUPPORTED_IF(e.node(w).sizes != Sizes{classes}, "nll_loss weight of the wrong shape");
  int64_t n = 1;
  for (int64_t s : t.target_shape) n *= s;
  t.weight_at = e.reshape(e.gather(w, e.reshape(safe, {n}), 0, false), t.target_shape);
  return t;
}

int nll_loss(GraphEditor& e, const std::string& name, const std::vector<int>& xs, const Attrs& a) {
  bool backward = name == "nll_loss_backward";
  size_t tensors = backward ? 4 : 2;
  bool weighted = a.ints.at(2) != 0;
  KILN_UNSUPPORTED_IF(xs.size() != tensors + (weighted ? 1 : 0), "{} operands", name);
  int x = xs[backward ? 1 : 0], target = xs[backward ? 2 : 1];
  DType out = e.node(x).dtype;
  // ATen accumulates half losses in the half type; only float32 and float64 are lowered.
  KILN_UNSUPPORTED_IF(out != DType::Float32 && out != DType::Float64, "{} of {}", name, dtype_name(out));
  for (int v : xs)
    KILN_UNSUPPORTED_IF(v != target && e.node(v).dtype != out, "{}: operands of different dtypes", name);
  Rule r(e, out);
  NllTargets t = nll_targets(e, r, x, target, weighted ? xs.back() : -1, a);
  bool per_element = t.reduction == 0 && t.target_shape.size() > 0;  // 'none' with a batch
  if (backward) {
    int g = xs[0], total_weight = e.reshape(xs[3], {});
    int value;
    if (per_element) {
      value = r.mul(r.u(OpKind::Neg, t.weight_at), g);  // ATen: -w * grad_output[i]
    } else {
      g = e.reshape(g, {});
      int scaled = r.u(OpKind::Neg, t.reduction == 1 ? r.div(g, total_weight) : g);
      value = r.mul(t.weight_at, scaled);  // ATen: w * -(grad / total_weight); 1 * grad unweighted
    }
    int cls = e.iota(e.node(x).sizes, t.class_dim, DType::Int64);
    int hit = r.both(e.binary(OpKind::Eq, cls, e.reshape(t.target, t.column)), e.reshape(t.valid, t.column));
    return r.where(hit, e.reshape(value, t.column), r.c(0));
  }
  if (name == "nll_loss_total_weight") {
    if (per_element) return r.c(0);  // ATen leaves it 0 for 'none'
    return r.sum(r.where(t.valid, t.weight_at, r.c(0)), {}, false);
  }
  KILN_UNSUPPORTED_IF(name != "nll_loss", "no loss named {}", name);
  if (per_element) return r.where(t.valid, r.mul(r.u(OpKind::Neg, t.x_at), t.weight_at), r.c(0));
  // ATen subtracts each product from a sum that starts at +0 (so an all-zero sum is +0).
  int loss = r.sum(r.where(t.valid, r.sub(r.c(0), r.mul(t.x_at, t.weight_at)), r.c(0)), {}, false);
  if (t.reduction != 1) return loss;
  return r.div(loss, r.sum(r.where(t.valid, t.weight_at, r.c(0)), {}, false));
}

/// mse_loss (x, target) and mse_loss_backward (grad, x, target); ints[0] = reduction (0 none,
/// 1 mean, 2 sum). As ATen's CPU kernels: the loss is (x - t) * (x - t) per element, then a
/// mean or sum; the gradient is norm * (x - t) * grad with norm = 2 / numel for a mean (2
/// otherwise) held in the dtype.
int mse_loss(GraphEditor& e, const std::string& name, const std::vector<int>& xs, const Attrs& a) {
  bool backward = name == "mse_loss_backward";
  KILN_UNSUPPORTED_IF(xs.size() != (backward ? 3u : 2u), "{} operands", name);
  int x = xs[backward ? 1 : 0], target = xs[backward ? 2 : 1];
  DType out = e.node(x).dtype;
  KILN_UNSUPPORTED_IF(out != DType::Float32 && out != DType::Float64, "{} of {}", name, dtype_name(out));
  for (int v : xs) KILN_UNSUPPORTED_IF(e.node(v).dtype != out, "{}: operands of different dtypes", name);
  int64_t reduction = a.ints.at(0);
  Rule r(e, out);
  int diff = r.sub(x, target);
  if (backward) {
    Sizes shape = broadcast_shapes(e.node(x).sizes, e.node(target).sizes);
    int64_t n = 1;
    for (int64_t s : e.node(x).sizes) n *= s;
    double norm = reduction == 1 ? 2.0 / static_cast<double>(n) : 2.0;
    return e.expand(r.mul(r.mul(r.c(held(norm, out)), diff), xs[0]), shape);
  }
  int sq = r.mul(diff, diff);
  if (reduction == 0) return sq;
  return reduction == 1 ? e.composite_reduce(OpKind::Mean, {sq}, Attrs{{}, {}, out, 0, 0})
                        : r.sum(sq, {}, false);
}

/// embedding_dense_backward: zeros [num_weights, D] with each grad row added to the row of its
/// index, in order. As ATen's CPU kernel, indices equal to padding_idx or outside
/// [0, num_weights) add nothing: here they add a zero row to row 0 (x + 0 is x for every x a
/// row can hold: it starts at +0, so it is never -0). scale_grad_by_freq scales each row by
/// 1 / (the number of times its index occurs), rounded to the dtype (ATen's add_ alpha).
int embedding_dense_backward(GraphEditor& e, const std::vector<int>& xs, const Attrs& a) {
  KILN_UNSUPPORTED_IF(xs.size() != 2, "embedding_dense_backward takes grad and indices");
  int grad = xs[0], indices = xs[1];
  DType out = e.node(grad).dtype;
  KILN_UNSUPPORTED_IF(out != DType::Float32 && out != DType::Float64, "embedding_dense_backward of {}",
                      dtype_name(out));
  KILN_UNSUPPORTED_IF(!is_int(e.node(indices).dtype), "embedding indices of {}", dtype_name(e.node(indices).dtype));
  int64_t rows = a.ints.at(0), padding = a.ints.at(1);
  bool by_frequency = a.ints.size() > 2 && a.ints[2] != 0;
  const Sizes gs = e.node(grad).sizes;
  int64_t n = e.node(indices).numel();
  KILN_UNSUPPORTED_IF(rows < 1 || gs.empty(), "embedding_dense_backward shapes");
  int64_t width = gs.back();
  KILN_UNSUPPORTED_IF(n * width != e.node(grad).numel(), "embedding grad does not match its indices");
  Rule r(e, out);
  auto i64 = [&](int64_t v) { return e.int_constant(v, DType::Int64); };
  int idx = e.reshape(e.cast(indices, DType::Int64), {n});
  int in_range = r.both(e.binary(OpKind::Ge, idx, i64(0)), e.binary(OpKind::Lt, idx, i64(rows)));
  int valid = r.both(e.binary(OpKind::Ne, idx, i64(padding)), in_range);
  int safe = e.where(valid, idx, i64(0));
  int src = e.reshape(grad, {n, width});
  if (by_frequency) {
    // Occurrences counted in float64 (exact), 1 / count divided there and rounded once.
    auto f64 = [&](double v) { return e.constant(v, DType::Float64); };
    int counted = e.where(in_range, idx, i64(0));
    int ones = e.where(in_range, f64(1), f64(0));
    int counts = e.index_copy(e.expand(f64(0), {rows}), counted, e.expand(ones, {n}), 0, ScatterCombine::Add);
    int scale = e.cast(e.binary(OpKind::Div, f64(1), e.gather(counts, safe, 0, false, true)), out);
    src = r.mul(src, e.reshape(scale, {n, 1}));
  }
  src = r.where(e.reshape(valid, {n, 1}), src, r.c(0));
  int zeros = e.expand(r.c(0), {rows, width});
  return e.index_copy(zeros, safe, src, 0, ScatterCombine::Add);
}

const std::set<std::string>& pointwise_names() {
  static const std::set<std::string> names = {
      "threshold_backward", "gelu_backward", "silu_backward", "mish_backward", "sigmoid_backward",
      "tanh_backward", "hardswish_backward", "hardsigmoid_backward", "hardtanh_backward",
      "leaky_relu_backward", "softplus_backward", "elu_backward"};
  return names;
}

}  // namespace

bool is_backward_op(const std::string& name) {
  static const std::set<std::string> others = {
      "softmax_backward", "log_softmax_backward", "layer_norm_backward_input", "layer_norm_backward_weight",
      "layer_norm_backward_bias", "nll_loss", "nll_loss_total_weight", "nll_loss_backward",
      "embedding_dense_backward", "mse_loss", "mse_loss_backward"};
  return pointwise_names().count(name) != 0 || others.count(name) != 0;
}

int backward_op(GraphEditor& e, const std::string& name, const std::vector<int>& xs, const Attrs& attrs) {
  if (pointwise_names().count(name)) return pointwise_backward(e, name, xs, attrs);
  if (name == "softmax_backward" || name == "log_softmax_backward") return softmax_backward(e, name, xs, attrs);
  if (name.rfind("layer_norm_backward", 0) == 0) return layer_norm_backward(e, name, xs, attrs);
  if (name.rfind("nll_loss", 0) == 0) return nll_loss(e, name, xs, attrs);
  if (name == "embedding_dense_backward") return embedding_dense_backward(e, xs, attrs);
  if (name.rfind("mse_loss", 0) == 0) return mse_loss(e, name, xs, attrs);
  throw Unsupported("kiln has no backward op '" + name + "'");
}

}  // namespace kiln::capture
