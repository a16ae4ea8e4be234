/// \file layout.cpp
/// Channels-last operands for eager convolutions (Note [Channels-last convolutions]).
#include "passes/layout.h"

#include <map>
#include <set>

#include "ir/graph_editor.h"

namespace kiln::passes {
using namespace kiln::ir;

namespace {

/// NHWC strides of an NCHW-shaped value.
Sizes channels_last(const Sizes& s) { return {s[1] * s[2] * s[3], 1, s[3] * s[1], s[1]}; }

/// Whether torch treats a 4-D value as channels-last at all: with one channel or one pixel the
/// two layouts are the same memory and torch keeps calling it contiguous.
bool layout_matters(const Sizes& s) { return s.size() == 4 && s[1] > 1 && s[2] * s[3] > 1; }

}  // namespace

Graph run_choose_layouts(const Graph& g, const PassOptions& opts) {
  if (!opts.channels_last_convolutions) return g;
  std::set<int> outputs(g.outputs.begin(), g.outputs.end());
  auto wants_channels_last = [&](size_t i) {
    const Node& n = g.nodes[i];
    if (n.op != OpKind::Fallback || n.attrs.ints.empty() || !(n.attrs.ints[0] & kFallbackPrefersChannelsLast))
      return false;
    int x = n.inputs.at(0);
    const Node& xn = g.nodes[x];
    // Lowering stores pointwise values, views and assembled values in their preferred layout
    // (reductions and matrix products always row-major; a result of another eager op has the
    // layout that op gives it); leaves are copied. The caller sees outputs in eager's layout.
    OpCategory c = op_category(xn.op);
    bool stored_as_asked = is_pointwise(xn.op) || c == OpCategory::Movement || c == OpCategory::Assemble ||
                           c == OpCategory::Leaf;
    return stored_as_asked && is_float(xn.dtype) && layout_matters(xn.sizes) && layout_matters(n.sizes) &&
           !outputs.count(x) && !outputs.count(static_cast<int>(i));
  };
  Graph out;
  GraphEditor e(out);
  std::vector<int> remap(g.nodes.size(), -1);
  std::vector<Sizes> layout(g.nodes.size());
  std::vector<bool> conv_cl(g.nodes.size(), false);
  for (size_t i = 0; i < g.nodes.size(); ++i)
    if ((conv_cl[i] = wants_channels_last(i))) {
      layout[g.nodes[i].inputs[0]] = channels_last(g.nodes[g.nodes[i].inputs[0]].sizes);
      layout[i] = channels_last(g.nodes[i].sizes);
    }
  // Forward: a pointwise value computed from a channels-last value of its shape is stored
  // channels-last too (batch norm + activation after a convolution, feeding the next one), so
  // its kernel reads and writes in one order instead of transposing.
  for (size_t i = 0; i < g.nodes.size(); ++i) {
    const Node& n = g.nodes[i];
    if (!layout[i].empty() || !is_pointwise(n.op) || !layout_matters(n.sizes) || outputs.count(static_cast<int>(i)))
      continue;
    for (int x : n.inputs)
      if (!layout[x].empty() && g.nodes[x].sizes == n.sizes) layout[i] = channels_last(n.sizes);
  }
  std::map<int, int> copy_of;  // argument -> its channels-last copy (one per argument)
  for (size_t i = 0; i < g.nodes.size(); ++i) {
    Node n = g.nodes[i];
    for (int& x : n.inputs) x = remap[x];
    int x = n.inputs.empty() ? -1 : g.nodes[i].inputs[0];
    if (conv_cl[i] && op_category(g.nodes[x].op) == OpCategory::Leaf) {
      // An argument keeps its memory: the convolution reads a channels-last copy.
      auto it = copy_of.find(x);
      if (it == copy_of.end()) {
        const Node& src = g.nodes[x];
        Node copy{OpKind::Cast, {remap[x]}, {}, src.dtype, src.sizes, channels_last(src.sizes)};
        copy.attrs.dtype = src.dtype;
        it = copy_of.emplace(x, e.append(std::move(copy))).first;
      }
      n.inputs[0] = it->second;
    }
    if (!layout[i].empty() && op_category(n.op) != OpCategory::Leaf) n.strides = layout[i];
    remap[i] = e.append(std::move(n));
    if (g.nodes[i].op == OpKind::Input) out.input_ids.push_back(remap[i]);
  }
  for (int o : g.outputs) out.outputs.push_back(remap[o]);
  out.output_leaf = g.output_leaf;
  return out;
}

}  // namespace kiln::passes
