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
  // Values the caller sees keep eager's layout; a value only a training step's backward reads
  // (kSavedValue) may take any.
  std::set<int> outputs;
  for (size_t j = 0; j < g.outputs.size(); ++j)
    if (j >= g.output_leaf.size() || g.output_leaf[j] != kSavedValue) outputs.insert(g.outputs[j]);
  auto is_channels_last = [&](const Node& n) { return n.strides == channels_last(n.sizes); };
  // The operands a fallback wants channels-last: a convolution's input; a convolution
  // backward's gradient and input (both, or oneDNN reorders them).
  auto activation_operands = [&](const Node& n) -> std::vector<int> {
    if (n.op != OpKind::Fallback || n.attrs.ints.empty() || !(n.attrs.ints[0] & kFallbackPrefersChannelsLast)) return {};
    if (n.attrs.ints[0] & kFallbackConvolutionBackward) return {0, 1};
    return {0};
  };
  auto wants_channels_last = [&](size_t i) {
    const Node& n = g.nodes[i];
    std::vector<int> ops = activation_operands(n);
    if (ops.empty() || !layout_matters(n.sizes)) return false;
    // A forward convolution returned to the caller keeps eager's layout by staying NCHW; a
    // backward's result (a weight gradient) is copied into eager's layout instead, since the
    // operands, not the result, decide how fast it runs.
    if (outputs.count(static_cast<int>(i)) && !(n.attrs.ints[0] & kFallbackConvolutionBackward)) return false;
    for (int k : ops) {
      int x = n.inputs.at(k);
      const Node& xn = g.nodes[x];
      // Lowering stores pointwise values, views and assembled values in their preferred layout
      // (reductions and matrix products always row-major; a result of another eager op has the
      // layout that op gives it); leaves are copied. The caller sees outputs in eager's layout.
      OpCategory c = op_category(xn.op);
      bool stored_as_asked = is_pointwise(xn.op) || c == OpCategory::Movement || c == OpCategory::Assemble ||
                             c == OpCategory::Leaf;
      if (!stored_as_asked || !is_float(xn.dtype) || !layout_matters(xn.sizes) || outputs.count(x)) return false;
    }
    return true;
  };
  Graph out;
  GraphEditor e(out);
  std::vector<int> remap(g.nodes.size(), -1);
  std::vector<Sizes> layout(g.nodes.size());
  std::vector<bool> conv_cl(g.nodes.size(), false);
  for (size_t i = 0; i < g.nodes.size(); ++i)
    if ((conv_cl[i] = wants_channels_last(i))) {
      for (int k : activation_operands(g.nodes[i])) {
        int x = g.nodes[i].inputs[k];
        layout[x] = channels_last(g.nodes[x].sizes);
      }
      if (!outputs.count(static_cast<int>(i))) layout[i] = channels_last(g.nodes[i].sizes);
    }
  // The other results of such a fallback (a convolution backward's weight gradient): torch
  // returns them channels-last too.
  for (size_t i = 0; i < g.nodes.size(); ++i) {
    const Node& n = g.nodes[i];
    if (n.op == OpKind::FallbackOutput && conv_cl[n.inputs[0]] && layout_matters(n.sizes) &&
        !outputs.count(static_cast<int>(i)))
      layout[i] = channels_last(n.sizes);
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
    for (int k : conv_cl[i] ? activation_operands(g.nodes[i]) : std::vector<int>{}) {
      int x = g.nodes[i].inputs[k];
      const Node& src = g.nodes[x];
      if (op_category(src.op) != OpCategory::Leaf || (src.op == OpKind::Input && is_channels_last(src))) continue;
      // An argument keeps its memory: the convolution reads a channels-last copy (an argument
      // stored channels-last already, a saved value the forward wrote so, is read as it is).
      auto it = copy_of.find(x);
      if (it == copy_of.end()) {
        Node copy{OpKind::Cast, {remap[x]}, {}, src.dtype, src.sizes, channels_last(src.sizes)};
        copy.attrs.dtype = src.dtype;
        it = copy_of.emplace(x, e.append(std::move(copy))).first;
      }
      n.inputs[k] = it->second;
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
