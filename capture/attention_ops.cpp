/// \file attention_ops.cpp
/// Scaled dot-product attention forward and backward as primitive nodes (see attention_ops.h).
#include "capture/attention_ops.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <utility>

#include "support/error.h"

namespace kiln::capture {
using namespace kiln::ir;

namespace {

/// `x` with its last two dims swapped (a view).
int transposed(GraphEditor& e, int x) {
  std::vector<int64_t> perm(e.node(x).sizes.size());
  std::iota(perm.begin(), perm.end(), 0);
  std::swap(perm[perm.size() - 1], perm[perm.size() - 2]);
  return e.permute(x, perm);
}

/// [.., Hkv, S, D] read as [.., heads, S, D]: query head h reads key/value head
/// h / (heads / Hkv), as eager's repeat_interleave does; a broadcast view, not a copy.
int repeat_heads(GraphEditor& e, int t, int64_t heads) {
  const Sizes s = e.node(t).sizes;  // a copy: appending nodes moves the graph
  size_t r = s.size();
  if (r < 3 || s[r - 3] == heads) return t;
  int64_t kv = s[r - 3];
  Sizes grouped(s.begin(), s.end() - 2);  // [.., Hkv, 1, S, D]
  grouped.insert(grouped.end(), {1, s[r - 2], s[r - 1]});
  Sizes wide = grouped;
  wide[r - 2] = heads / kv;
  Sizes out = s;
  out[r - 3] = heads;
  return e.reshape(e.expand(e.reshape(t, grouped), wide), out);
}

/// The gradient of a key/value read through repeat_heads: [.., heads, S, D] summed over the
/// query heads of each group, [.., Hkv, S, D].
int sum_heads(GraphEditor& e, int g, int64_t kv) {
  const Sizes s = e.node(g).sizes;
  size_t r = s.size();
  if (r < 3 || s[r - 3] == kv) return g;
  Sizes grouped(s.begin(), s.end() - 3);  // [.., Hkv, heads / Hkv, S, D]
  grouped.insert(grouped.end(), {kv, s[r - 3] / kv, s[r - 2], s[r - 1]});
  return e.reduce(OpKind::Sum, e.reshape(g, grouped), {static_cast<int64_t>(r - 2)}, false);
}

/// Checks the operands' types and shapes; returns the number of query heads (1 for rank 2).
int64_t check_operands(const GraphEditor& e, const Attention& a) {
  const Node &q = e.node(a.q), &k = e.node(a.k), &v = e.node(a.v);
  size_t r = q.sizes.size();
  KILN_UNSUPPORTED_IF(!is_float(q.dtype) || k.dtype != q.dtype || v.dtype != q.dtype,
                      "attention of {}, {} and {}", dtype_name(q.dtype), dtype_name(k.dtype), dtype_name(v.dtype));
  KILN_UNSUPPORTED_IF(r < 2 || k.sizes.size() != r || v.sizes.size() != r, "attention operands of ranks {}, {}, {}",
                      r, k.sizes.size(), v.sizes.size());
  size_t batch = r >= 3 ? r - 3 : 0;  // dims before the heads
  bool same = std::equal(q.sizes.begin(), q.sizes.begin() + batch, k.sizes.begin()) &&
              std::equal(k.sizes.begin(), k.sizes.end() - 2, v.sizes.begin());
  int64_t heads = r >= 3 ? q.sizes[r - 3] : 1, kv = r >= 3 ? k.sizes[r - 3] : 1;
  KILN_UNSUPPORTED_IF(!same || kv < 1 || heads % kv != 0 || q.sizes[r - 1] != k.sizes[r - 1] ||
                          k.sizes[r - 2] != v.sizes[r - 2],
                      "attention operands of mismatched shapes");
  return heads;
}

/// The scores S = q k^T * scale, causal and `a.mask` applied: [.., H, L, S]. `k` is the key
/// already read with the query's heads.
int scores(GraphEditor& e, const Attention& a, int k) {
  DType t = e.node(a.q).dtype;
  int s = e.binary(OpKind::Mul, e.matmul(a.q, transposed(e, k)), e.constant(a.scale, t));
  const Sizes ss = e.node(s).sizes;
  int64_t r = static_cast<int64_t>(ss.size());
  int minus_inf = e.constant(-INFINITY, t);
  if (a.causal) {
    int row = e.iota(ss, r - 2, DType::Int64), col = e.iota(ss, r - 1, DType::Int64);
    s = e.where(e.binary(OpKind::Gt, col, row), minus_inf, s);
  }
  if (a.mask >= 0) {
    DType mt = e.node(a.mask).dtype;
    KILN_UNSUPPORTED_IF(mt != DType::Bool && mt != t, "attention mask of {} for {} scores", dtype_name(mt),
                        dtype_name(t));
    KILN_UNSUPPORTED_IF(broadcast_shapes(e.node(a.mask).sizes, ss) != ss, "attention mask does not broadcast to "
                        "the scores");
    s = mt == DType::Bool ? e.where(a.mask, s, minus_inf) : e.binary(OpKind::Add, s, a.mask);
  }
  return s;
}

int64_t last_dim(const GraphEditor& e, int x) { return static_cast<int64_t>(e.node(x).sizes.size()) - 1; }

}  // namespace

int attention(GraphEditor& e, const Attention& a) {
  int64_t heads = check_operands(e, a);
  DType t = e.node(a.q).dtype;
  int s = scores(e, a, repeat_heads(e, a.k, heads));
  int64_t last = last_dim(e, s);
  Attrs row;
  row.ints = {last};
  int p = e.composite_reduce(OpKind::Softmax, {s}, row);
  if (a.mask >= 0) {
    // A row the mask hides entirely has max -inf (a NaN makes the test false): eager's fused
    // kernel gives 0 there, where the softmax is NaN. (A causal row always sees its first key.)
    int dead = e.binary(OpKind::Eq, e.reduce(OpKind::Amax, s, {last}, true), e.constant(-INFINITY, t));
    p = e.where(dead, e.constant(0.0, t), p);
  }
  return e.matmul(p, repeat_heads(e, a.v, heads));
}

int attention_logsumexp(GraphEditor& e, const Attention& a) {
  int64_t heads = check_operands(e, a);
  DType t = e.node(a.q).dtype;
  DType acc = compute_dtype(t);
  int s = e.cast(scores(e, a, repeat_heads(e, a.k, heads)), acc);
  int64_t last = last_dim(e, s);
  // The max and the sum of exponentials are the very nodes the softmax decomposes into
  // (passes/decompose), so CSE shares them with the forward's row kernel.
  int m = e.reduce(OpKind::Amax, s, {last}, true);
  int sum = e.reduce(OpKind::Sum, e.unary(OpKind::Exp, e.binary(OpKind::Sub, s, m)), {last}, true);
  int lse = e.binary(OpKind::Add, m, e.unary(OpKind::Log, sum));
  // Eager: max -inf (a hidden row) becomes 0 and the empty sum 1, so the row's logsumexp is 0.
  lse = e.where(e.binary(OpKind::Eq, m, e.constant(-INFINITY, acc)), e.constant(0.0, acc), lse);
  Sizes rows = e.node(m).sizes;
  rows.pop_back();
  return e.reshape(lse, rows);
}

AttentionGrads attention_backward(GraphEditor& e, const Attention& a, int grad_out, int out, int lse) {
  int64_t heads = check_operands(e, a);
  DType t = e.node(a.q).dtype;
  KILN_UNSUPPORTED_IF(is_half(t), "attention backward of {}", dtype_name(t));
  int k = repeat_heads(e, a.k, heads), v = repeat_heads(e, a.v, heads);
  Sizes rows = e.node(a.q).sizes;  // [.., H, L, 1]: one logsumexp per query row
  rows.back() = 1;
  KILN_UNSUPPORTED_IF(e.node(grad_out).dtype != t || e.node(out).dtype != t || e.node(lse).dtype != t ||
                          e.node(lse).numel() != numel(rows) || e.node(out).sizes != e.node(grad_out).sizes,
                      "attention backward operands of mismatched types");
  int s = scores(e, a, k);
  int64_t last = last_dim(e, s);
  // The probabilities, rebuilt from the saved logsumexp (0 on a hidden row: exp(-inf - 0)).
  int p = e.unary(OpKind::Exp, e.binary(OpKind::Sub, s, e.reshape(lse, rows)));
  int dv = e.matmul(transposed(e, p), grad_out);
  int dp = e.matmul(grad_out, transposed(e, v));
  // Softmax's backward: dS = P * (dP - sum_j P_j dP_j), where sum_j P_j dP_j = rowsum(dO * O).
  int d = e.reduce(OpKind::Sum, e.binary(OpKind::Mul, grad_out, out), {last}, true);
  int ds = e.binary(OpKind::Mul, p, e.binary(OpKind::Sub, dp, d));
  int scale = e.constant(a.scale, t);
  int dq = e.binary(OpKind::Mul, e.matmul(ds, k), scale);
  int dk = e.binary(OpKind::Mul, e.matmul(transposed(e, ds), a.q), scale);
  int64_t kv = e.node(a.k).sizes.size() >= 3 ? e.node(a.k).sizes[e.node(a.k).sizes.size() - 3] : 1;
  return {dq, sum_heads(e, dk, kv), sum_heads(e, dv, kv)};
}

}  // namespace kiln::capture
