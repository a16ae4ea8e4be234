/// \file simplify.cpp
/// CSE by (op, inputs, attrs, type) keys, identities, then DCE from the outputs.
#include "passes/simplify.h"

#include <map>
#include <tuple>

#include "ir/graph_editor.h"
#include "support/hash.h"

namespace kiln::passes {
using namespace kiln::ir;

namespace {
bool is_const_value(const Graph& g, int id, double v) {
  const Node& n = g.nodes[id];
  if (n.op != OpKind::Constant) return false;
  return is_float(n.dtype) ? n.attrs.float_value == v : static_cast<double>(n.attrs.int_value) == v;
}

/// Returns the node `n` is equivalent to (an existing value of `g`), or -1.
int identity_of(const Graph& g, const Node& n) {
  if (n.inputs.size() != 2) return -1;
  int a = n.inputs[0], b = n.inputs[1];
  const Node& na = g.nodes[a];
  if (na.sizes != n.sizes || na.dtype != n.dtype) return -1;
  // x*1 and x/1 are exact for every value; x-0 too (-0 - 0 = -0). x+0 is not (-0 + 0 = +0)
  // for floats, so it is only removed for integers.
  if ((n.op == OpKind::Mul || n.op == OpKind::Div) && is_const_value(g, b, 1.0)) return a;
  if (n.op == OpKind::Sub && is_const_value(g, b, 0.0)) return a;
  if (n.op == OpKind::Add && !is_float(n.dtype) && is_const_value(g, b, 0.0)) return a;
  return -1;
}

/// permute(permute(x, p), q) is permute(x, p[q[k]]), and x itself when that is the identity
/// and keeps the layout the outer one was asked to have. Autograd's backward of a linear layer
/// transposes its weight gradient twice (t() of the weight, then of the gradient): folded, the
/// product writes the gradient's own buffer instead of a copy of it. Rewrites `n` in place;
/// returns the value it is equal to, or -1.
int fold_permutes(const Graph& g, Node& n) {
  if (n.op != OpKind::Permute || n.inputs.size() != 1) return -1;
  const Node& inner = g.nodes[n.inputs[0]];
  if (inner.op != OpKind::Permute) return -1;
  std::vector<int64_t> composed(n.attrs.ints.size());
  bool identity = true;
  for (size_t k = 0; k < composed.size(); ++k) {
    composed[k] = inner.attrs.ints[n.attrs.ints[k]];
    identity = identity && composed[k] == static_cast<int64_t>(k);
  }
  int x = inner.inputs[0];
  const Node& base = g.nodes[x];
  if (identity) {
    Sizes layout = base.strides.empty() ? contiguous_strides(base.sizes) : base.strides;
    if (n.strides.empty() || n.strides == layout) return x;
  }
  n.inputs[0] = x;
  n.attrs.ints = composed;
  return -1;
}
}  // namespace

Graph run_simplify(const Graph& g, const PassOptions&) {
  // Forward: CSE and identities into a new graph.
  Graph mid;
  GraphEditor e(mid);
  std::vector<int> remap(g.nodes.size(), -1);
  // Floating attributes are keyed by their bits: -0.0 and 0.0 are different constants, and NaN
  // must not compare equivalent to everything.
  using Key = std::tuple<int, std::vector<int>, std::vector<int64_t>, std::vector<uint64_t>, int, int64_t, uint64_t,
                         int, Sizes>;
  std::map<Key, int> seen;
  for (size_t i = 0; i < g.nodes.size(); ++i) {
    Node n = g.nodes[i];
    for (int& x : n.inputs) x = remap[x];
    if (n.op == OpKind::Input || n.op == OpKind::Fallback) {
      // Inputs have identity; fallbacks may have effects (random ops draw from the RNG), so
      // two equal-looking ones are not the same value.
      remap[i] = e.append(n);
      if (n.op == OpKind::Input) mid.input_ids.push_back(remap[i]);
      continue;
    }
    if (int folded = fold_permutes(mid, n); folded >= 0) {
      remap[i] = folded;
      continue;
    }
    int same = identity_of(mid, n);
    if (same >= 0 && n.strides.empty()) {
      remap[i] = same;
      continue;
    }
    std::vector<uint64_t> float_bits;
    for (double f : n.attrs.floats) float_bits.push_back(hash_double(f));
    Key k{static_cast<int>(n.op), n.inputs, n.attrs.ints, float_bits, static_cast<int>(n.attrs.dtype),
          n.attrs.int_value, hash_double(n.attrs.float_value), static_cast<int>(n.dtype), n.sizes};
    auto it = seen.find(k);
    // Two equal values that eager laid out differently (ones_like of a contiguous and of a
    // transposed tensor, both constants after folding) stay two nodes: each output keeps its
    // own layout.
    if (it != seen.end() && !n.strides.empty() && !mid.nodes[it->second].strides.empty() &&
        mid.nodes[it->second].strides != n.strides) {
      remap[i] = e.append(n);
      continue;
    }
    if (it != seen.end()) {
      remap[i] = it->second;
      if (mid.nodes[it->second].strides.empty()) mid.nodes[it->second].strides = n.strides;
      continue;
    }
    remap[i] = e.append(n);
    seen.emplace(std::move(k), remap[i]);
  }
  for (int o : g.outputs) mid.outputs.push_back(remap[o]);

  // Backward: keep inputs, outputs and what they need.
  std::vector<bool> live(mid.nodes.size(), false);
  for (int o : mid.outputs) live[o] = true;
  for (int i = static_cast<int>(mid.nodes.size()) - 1; i >= 0; --i) {
    // Inputs stay (argument positions); fallbacks stay because eager would run them (effects).
    // An integer division that may divide by zero stays too: eager raises even if it is unused.
    if (mid.nodes[i].op == OpKind::Input || mid.nodes[i].op == OpKind::Fallback || may_raise(mid, mid.nodes[i]))
      live[i] = true;
    if (!live[i]) continue;
    for (int x : mid.nodes[i].inputs) live[x] = true;
  }
  Graph out;
  std::vector<int> keep(mid.nodes.size(), -1);
  for (size_t i = 0; i < mid.nodes.size(); ++i) {
    if (!live[i]) continue;
    Node n = mid.nodes[i];
    for (int& x : n.inputs) x = keep[x];
    keep[i] = static_cast<int>(out.nodes.size());
    if (n.op == OpKind::Input) out.input_ids.push_back(keep[i]);
    out.nodes.push_back(std::move(n));
  }
  for (int o : mid.outputs) out.outputs.push_back(keep[o]);
  out.output_leaf = g.output_leaf;
  return out;
}

}  // namespace kiln::passes
