/// \file fold_batch_norm.cpp
/// Note [Folding batch norm]
/// In eval mode batch norm is y * alpha + beta per channel (alpha = gamma / sqrt(var + eps),
/// beta = bias - mean * alpha). After a convolution, whose output channel c reads only weight[c]
/// and bias[c], that is the convolution with weight[c] * alpha[c] and bias (bias[c] - mean[c]) *
/// alpha[c] + beta_bn[c]. A convolution without a bias keeps its signature (the eager op is
/// called as recorded) and beta becomes one add, which fuses into the kernel after it.
///
/// Valid when: the op is a convolution that is not transposed (the tracer marks it,
/// kFallbackConvolution); batch norm is its only reader and it is no output (the unnormalised
/// values are needed nowhere); weight, statistics and output share one float dtype.
///
/// Worth it when: the folded weights are computed on every call (parameters are arguments),
/// so it is done where they are small beside the activation (a weight of at most 1/8 of the
/// output's elements): the scaled weights cost less than the pass they can save, which is the
/// normalised value stored by itself when an eager op (the next convolution) reads it.
/// Rounding: eager rounds conv(x, W) then the normalisation; the fold rounds W * alpha first.
/// The difference is a few ulps of each product, like a different summation order.
#include "passes/fold_batch_norm.h"

#include <set>

#include "ir/graph_editor.h"
#include "passes/decompose.h"

namespace kiln::passes {
using namespace kiln::ir;

namespace {

/// Weight elements per output element above which folding costs more than it can save.
constexpr int64_t kMaxWeightShare = 8;

bool foldable(const Graph& g, const Node& bn, const std::vector<int>& users, const std::set<int>& outputs) {
  int y = bn.inputs[0];
  const Node& conv = g.nodes[y];
  if (conv.op != OpKind::Fallback || conv.attrs.ints.empty() || !(conv.attrs.ints[0] & kFallbackConvolution))
    return false;
  if (users[y] != 1 || outputs.count(y) || conv.inputs.size() < 2 || conv.inputs.size() > 3) return false;
  const Node& w = g.nodes[conv.inputs[1]];
  if (!is_float(conv.dtype) || w.dtype != conv.dtype || bn.dtype != conv.dtype) return false;
  if (conv.sizes.size() < 3 || w.sizes.size() != conv.sizes.size() || w.sizes[0] != conv.sizes[1]) return false;
  for (size_t k = 1; k < bn.inputs.size(); ++k) {
    const Node& p = g.nodes[bn.inputs[k]];
    bool used = k > 2 || bn.attrs.ints.at(k - 1);  // weight and bias are optional
    if (used && (p.dtype != conv.dtype || p.sizes != Sizes{conv.sizes[1]})) return false;
  }
  if (conv.inputs.size() == 3 && g.nodes[conv.inputs[2]].sizes != Sizes{conv.sizes[1]}) return false;
  return w.numel() * kMaxWeightShare <= conv.numel();
}

}  // namespace

Graph run_fold_batch_norm(const Graph& g, const PassOptions&) {
  std::vector<int> users(g.nodes.size(), 0);
  for (const Node& n : g.nodes)
    for (int x : n.inputs) ++users[x];
  std::set<int> outputs(g.outputs.begin(), g.outputs.end());
  std::set<int> folded;  // convolutions re-emitted where their batch norm was
  std::vector<bool> fold_at(g.nodes.size(), false);
  for (size_t i = 0; i < g.nodes.size(); ++i) {
    const Node& n = g.nodes[i];
    if (n.op == OpKind::BatchNormEval && foldable(g, n, users, outputs)) {
      fold_at[i] = true;
      folded.insert(n.inputs[0]);
    }
  }
  Graph out;
  GraphEditor e(out);
  std::vector<int> remap(g.nodes.size(), -1);
  for (size_t i = 0; i < g.nodes.size(); ++i) {
    const Node& n = g.nodes[i];
    if (folded.count(static_cast<int>(i))) continue;  // emitted at its batch norm, which is its only reader
    std::vector<int> in;
    for (int x : n.inputs) in.push_back(remap[x]);
    if (!fold_at[i]) {
      Node copy = n;
      copy.inputs = in;
      remap[i] = e.append(std::move(copy));
      if (n.op == OpKind::Input) out.input_ids.push_back(remap[i]);
      continue;
    }
    const Node& conv = g.nodes[n.inputs[0]];
    auto [alpha, beta] = batch_norm_scale_shift(e, n, in);
    const Node& w = g.nodes[conv.inputs[1]];
    Sizes per_row(w.sizes.size(), 1);
    per_row[0] = w.sizes[0];
    Node c = conv;
    for (int& x : c.inputs) x = remap[x];
    c.inputs[1] = e.binary(OpKind::Mul, c.inputs[1], e.reshape(alpha, per_row));
    out.nodes[c.inputs[1]].strides = w.strides;  // the weight's layout: eager picks its algorithm by it
    if (c.inputs.size() == 3) {
      c.inputs[2] = e.binary(OpKind::Add, e.binary(OpKind::Mul, c.inputs[2], alpha), beta);
      remap[i] = e.append(std::move(c));
    } else {
      Sizes per_channel(conv.sizes.size() - 1, 1);
      per_channel[0] = conv.sizes[1];
      int y = e.append(std::move(c));
      remap[i] = e.binary(OpKind::Add, y, e.reshape(beta, per_channel));
      if (!n.strides.empty()) out.nodes[remap[i]].strides = n.strides;  // the layout eager gave it
    }
  }
  for (int o : g.outputs) out.outputs.push_back(remap[o]);
  out.output_leaf = g.output_leaf;
  return out;
}

}  // namespace kiln::passes
