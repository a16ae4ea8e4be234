/// \file attention_ops.h
/// Scaled dot-product attention (ATen's _scaled_dot_product_flash_attention_for_cpu and its
/// backward) as matrix products and row kernels: softmax(q k^T * scale + mask) v forward, and
/// the flash-attention backward, which rebuilds the probabilities from the saved logsumexp
/// instead of storing them. Grouped-query attention (fewer key/value heads than query heads)
/// reads each key/value head through a broadcast view, never a copy; its gradients sum over
/// the query heads that shared a key/value head.
#pragma once

#include "ir/graph_editor.h"

namespace kiln::capture {

/// The operands of one attention: q [.., H, L, D], k [.., Hkv, S, D], v [.., Hkv, S, Dv] (one
/// float dtype; Hkv divides H), an optional mask broadcast to [.., H, L, S] (additive in q's
/// dtype, or boolean: false hides), and causal masking (query row i sees keys 0..i, counted
/// from the top left as eager's CPU kernel does, also when L != S).
struct Attention {
  int q = -1, k = -1, v = -1;
  int mask = -1;  ///< -1: none
  bool causal = false;
  double scale = 0;  ///< the scores' factor (ATen's default: 1 / sqrt(D))
};

/// The attention's output [.., H, L, Dv]. A row that the mask hides entirely is 0, as eager's
/// fused kernel gives it (a plain softmax would be NaN there).
int attention(ir::GraphEditor& e, const Attention& a);

/// The logsumexp of each row of scores [.., H, L] (float32 for half inputs, as eager's): the
/// row max plus the log of the sum of exp(s - max); 0 on a row the mask hides entirely (eager
/// replaces the max by 0 and the empty sum by 1 there).
int attention_logsumexp(ir::GraphEditor& e, const Attention& a);

struct AttentionGrads {
  int q = -1, k = -1, v = -1;
};

/// The gradients of q, k and v from the output's gradient `grad_out`, the output `out` and the
/// forward's logsumexp `lse` (same dtype as q): P = exp(S - lse), dV = P^T dO, dP = dO V^T,
/// dS = P * (dP - rowsum(dO * O)), dQ = dS K * scale, dK = dS^T Q * scale.
AttentionGrads attention_backward(ir::GraphEditor& e, const Attention& a, int grad_out, int out, int lse);

}  // namespace kiln::capture
