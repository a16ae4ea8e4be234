/// \file training_ops.cpp
/// Binds the operands and attributes of the training ops' capture-level names. Optional tensor
/// operands arrive as a number when absent. The names:
///
///   "sdpa"           q, k, v, attn_mask; ints = is_causal, result (0 output, 1 logsumexp);
///                    floats = [scale] (empty: 1 / sqrt(head dim), ATen's default)
///   "sdpa_backward"  grad_out, q, k, v, out, logsumexp, attn_mask; ints = is_causal, result
///                    (0 grad_q, 1 grad_k, 2 grad_v); floats as "sdpa"
///   "batch_norm_train"     x, weight, bias, running_mean, running_var; ints = result (0 out,
///                    1 save_mean, 2 save_invstd, 3 new running_mean, 4 new running_var);
///                    floats = momentum, eps
///   "batch_norm_backward"  grad_out, x, weight, running_mean, running_var, save_mean,
///                    save_invstd; ints = train, result (0 grad_input, 1 grad_weight,
///                    2 grad_bias); floats = eps
///   "max_pool_backward"    grad_output, x, indices; ints = number of pooled (trailing) dims
///   "avg_pool_backward"    grad_output, x; ints as "avg_pool" (graph_builder.cpp): n,
///                    kernel[n], stride[n], padding[n], dilation[n], ceil_mode,
///                    count_include_pad, divisor_override (0: none)
///   "adaptive_avg_pool_backward"  grad_output, x; ints = number of pooled (trailing) dims
#include "capture/training_ops.h"

#include <cmath>

#include "capture/attention_ops.h"
#include "capture/batch_norm_ops.h"
#include "capture/pooling_backward.h"
#include "support/error.h"

namespace kiln::capture {
using namespace kiln::ir;

namespace {

/// The value of tensor operand i, or -1 when it is absent (a number).
int optional(const std::vector<Operand>& args, size_t i) {
  return args.at(i).kind == Operand::Kind::Value ? args[i].value : -1;
}

int tensor(const std::string& name, const std::vector<Operand>& args, size_t i) {
  KILN_UNSUPPORTED_IF(i >= args.size() || args[i].kind != Operand::Kind::Value, "{} operand {} must be a tensor",
                      name, i);
  return args[i].value;
}

int64_t result(const std::string& name, const Attrs& attrs, size_t at, int64_t count) {
  KILN_UNSUPPORTED_IF(attrs.ints.size() <= at || attrs.ints[at] < 0 || attrs.ints[at] >= count,
                      "{} needs a result index below {}", name, count);
  return attrs.ints[at];
}

Attention attention_of(const GraphEditor& e, const std::string& name, const std::vector<Operand>& args,
                       const Attrs& attrs, size_t first) {
  KILN_UNSUPPORTED_IF(args.size() != first + 4 || attrs.ints.size() != 2, "{} takes {} operands and 2 ints", name,
                      first + 4);
  Attention a;
  a.q = tensor(name, args, first);
  a.k = tensor(name, args, first + 1);
  a.v = tensor(name, args, first + 2);
  a.mask = optional(args, first + 3);
  a.causal = attrs.ints[0] != 0;
  const Sizes& qs = e.node(a.q).sizes;
  a.scale = attrs.floats.empty() ? 1.0 / std::sqrt(static_cast<double>(qs.empty() ? 1 : qs.back())) : attrs.floats[0];
  return a;
}

/// The window of "avg_pool_backward" from its ints (the layout of graph_builder.cpp's pooling).
PoolWindow pool_window(const std::vector<int64_t>& a, bool* count_include_pad, int64_t* divisor_override) {
  KILN_UNSUPPORTED_IF(a.empty() || a[0] < 1 || a.size() != 4 * static_cast<size_t>(a[0]) + 4,
                      "pooling backward attributes");
  size_t n = static_cast<size_t>(a[0]);
  auto part = [&](size_t k) { return std::vector<int64_t>(a.begin() + 1 + k * n, a.begin() + 1 + (k + 1) * n); };
  *count_include_pad = a[4 * n + 2] != 0;
  *divisor_override = a[4 * n + 3];
  return PoolWindow{part(0), part(1), part(2), part(3), a[4 * n + 1] != 0};
}

size_t pooled_dims(const std::string& name, const Attrs& attrs) {
  KILN_UNSUPPORTED_IF(attrs.ints.size() != 1 || attrs.ints[0] < 1, "{} takes the number of pooled dims", name);
  return static_cast<size_t>(attrs.ints[0]);
}

}  // namespace

int training_op(GraphEditor& e, const std::string& name, const std::vector<Operand>& args, const Attrs& attrs) {
  if (name == "sdpa") {
    Attention a = attention_of(e, name, args, attrs, 0);
    return result(name, attrs, 1, 2) == 0 ? attention(e, a) : attention_logsumexp(e, a);
  }
  if (name == "sdpa_backward") {
    KILN_UNSUPPORTED_IF(args.size() != 7, "{} takes 7 operands", name);
    std::vector<Operand> qkv_mask = {args[1], args[2], args[3], args[6]};
    Attention a = attention_of(e, name, qkv_mask, attrs, 0);
    AttentionGrads g = attention_backward(e, a, tensor(name, args, 0), tensor(name, args, 4), tensor(name, args, 5));
    int64_t r = result(name, attrs, 1, 3);
    return r == 0 ? g.q : r == 1 ? g.k : g.v;
  }
  if (name == "batch_norm_train") {
    KILN_UNSUPPORTED_IF(args.size() != 5 || attrs.floats.size() != 2, "{} takes 5 operands and 2 floats", name);
    BatchNorm bn{tensor(name, args, 0), optional(args, 1), optional(args, 2), optional(args, 3), optional(args, 4),
                 attrs.floats[0], attrs.floats[1]};
    int64_t r = result(name, attrs, 0, 5);
    KILN_UNSUPPORTED_IF((r == 3 && bn.running_mean < 0) || (r == 4 && bn.running_var < 0),
                        "{}: no running statistics to update", name);
    BatchNormTrain out = batch_norm_train(e, bn);
    int results[] = {out.out, out.save_mean, out.save_invstd, out.running_mean, out.running_var};
    return results[r];
  }
  if (name == "batch_norm_backward") {
    KILN_UNSUPPORTED_IF(args.size() != 7 || attrs.ints.size() != 2 || attrs.floats.size() != 1,
                        "{} takes 7 operands, 2 ints and eps", name);
    BatchNorm bn{tensor(name, args, 1), optional(args, 2), -1, optional(args, 3), optional(args, 4), 0.0,
                 attrs.floats[0]};
    BatchNormGrads g = batch_norm_backward(e, bn, tensor(name, args, 0), optional(args, 5), optional(args, 6),
                                           attrs.ints[0] != 0);
    int64_t r = result(name, attrs, 1, 3);
    return r == 0 ? g.input : r == 1 ? g.weight : g.bias;
  }
  if (name == "max_pool_backward") {
    KILN_UNSUPPORTED_IF(args.size() != 3, "{} takes 3 operands", name);
    return max_pool_backward(e, tensor(name, args, 0), tensor(name, args, 1), tensor(name, args, 2),
                             pooled_dims(name, attrs));
  }
  if (name == "avg_pool_backward") {
    KILN_UNSUPPORTED_IF(args.size() != 2, "{} takes 2 operands", name);
    bool count_include_pad = true;
    int64_t divisor_override = 0;
    PoolWindow w = pool_window(attrs.ints, &count_include_pad, &divisor_override);
    return avg_pool_backward(e, tensor(name, args, 0), tensor(name, args, 1), w, count_include_pad, divisor_override);
  }
  if (name == "adaptive_avg_pool_backward") {
    KILN_UNSUPPORTED_IF(args.size() != 2, "{} takes 2 operands", name);
    return adaptive_avg_pool_backward(e, tensor(name, args, 0), tensor(name, args, 1), pooled_dims(name, attrs));
  }
  return -1;
}

}  // namespace kiln::capture
