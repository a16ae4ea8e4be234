/// \file partition_joint.cpp
/// Forward/backward partition of a joint graph by a minimum cut.
///
/// Note [Saving or recomputing]
/// The backward reads forward values (a matmul's operands, an activation's input, a softmax's
/// output). Each one is either saved by the forward (memory held from the forward until the
/// backward runs) or computed again by the backward from other saved values. Following
/// PyTorch's min-cut partitioner (torch/_functorch/partitioners.py), kiln builds a flow network
/// over the forward nodes: node v becomes an edge v_in -> v_out whose capacity is the bytes of
/// v's value (the price of saving it), data edges are infinite, the source feeds every node the
/// backward may not recompute (primal inputs, matrix products, reductions, eager fallback ops —
/// random ones above all, whose draw must happen once — scans and scatters), and every forward
/// value a backward node reads drains into the sink. A minimum cut is then a cheapest set of
/// values to save such that everything else the backward needs is a cheap pointwise or view
/// chain from them: `h = gelu(x @ w)` saves the product, not h as well, and the backward
/// recomputes h where the next product's weight gradient reads it. Views are never saved (their
/// base is), so a saved value is always a dense buffer of its own.
#include "passes/partition_joint.h"

#include <fmt/format.h>

#include <algorithm>

#include "ir/graph_editor.h"
#include "support/error.h"
#include "support/min_cut.h"

namespace kiln::passes {
using namespace kiln::ir;

namespace {

/// Whether the backward may compute `n` again: pointwise work and views, never a product,
/// reduction, fallback (eager op, maybe random), scan or scatter, nor anything that may raise.
bool recomputable(const Graph& g, const Node& n) {
  if (may_raise(g, n)) return false;
  switch (op_category(n.op)) {
    case OpCategory::Unary: case OpCategory::Binary: case OpCategory::Ternary: case OpCategory::Cast:
    case OpCategory::Composite: case OpCategory::Movement:
      return true;
    case OpCategory::Leaf:
      return n.op == OpKind::Constant || n.op == OpKind::Iota;
    default:
      return false;
  }
}

int64_t value_bytes(const Node& n) { return n.numel() * dtype_bytes(n.dtype); }

class Partitioner {
 public:
  Partitioner(const Graph& joint, const JointSpec& spec, const PartitionOptions& opts)
      : g_(joint), spec_(spec), opts_(opts), n_(static_cast<int>(joint.nodes.size())) {}

  Partition run() {
    KILN_CHECK(spec_.forward_outputs <= static_cast<int>(g_.outputs.size()), "joint graph: {} forward outputs of {}",
               spec_.forward_outputs, g_.outputs.size());
    mark_backward();
    cut();
    Partition p;
    gradient_dependencies(p);
    classify_backward_needs(p);
    build_forward(p);
    build_backward(p);
    return p;
  }

 private:
  /// Backward nodes: everything recorded while autograd ran (the tangents, what is computed
  /// from them, and autograd's work that needs none: a weight's transpose, exp of a saved
  /// log-softmax, attention's scores recomputed from saved q and k). It stays in the backward,
  /// as in eager: moved into the forward it would lengthen it and, where it is a product, be
  /// saved (attention's scores: memory quadratic in the sequence).
  void mark_backward() {
    backward_.assign(n_, false);
    for (int t : spec_.tangents) backward_.at(t) = true;
    for (int i = 0; i < n_; ++i) {
      const Node& n = g_.nodes[i];
      backward_[i] = backward_[i] || (i >= spec_.backward_start && n.op != OpKind::Input);
      for (int x : n.inputs) backward_[i] = backward_[i] || backward_[x];
    }
    for (int i = 0; i < spec_.forward_outputs; ++i)
      KILN_CHECK(!backward_[g_.outputs[i]], "forward output %{} depends on a tangent", g_.outputs[i]);
  }

  bool gradient_output(int id) const {
    for (size_t j = spec_.forward_outputs; j < g_.outputs.size(); ++j)
      if (g_.outputs[j] == id) return true;
    return false;
  }

  /// Note [Saving or recomputing]: the source side of a minimum cut is what the forward
  /// computes; a node whose v_in is on it and v_out is not is saved.
  void cut() {
    int source = 2 * n_, sink = 2 * n_ + 1;
    MinCut mc(2 * n_ + 2);
    for (int i = 0; i < n_; ++i) {
      if (backward_[i]) {
        for (int x : g_.nodes[i].inputs)
          if (!backward_[x]) mc.add_edge(2 * x + 1, sink, MinCut::kInfinite);
        continue;
      }
      const Node& n = g_.nodes[i];
      bool view = op_category(n.op) == OpCategory::Movement;
      mc.add_edge(2 * i, 2 * i + 1, view ? MinCut::kInfinite : std::max<int64_t>(1, value_bytes(n)));
      if (n.op == OpKind::Input || !opts_.recompute || !recomputable(g_, n)) mc.add_edge(source, 2 * i, MinCut::kInfinite);
      for (int x : n.inputs) mc.add_edge(2 * x + 1, 2 * i, MinCut::kInfinite);
      if (gradient_output(i)) mc.add_edge(2 * i + 1, sink, MinCut::kInfinite);
    }
    int64_t flow = mc.solve(source, sink);
    KILN_UNSUPPORTED_IF(flow >= MinCut::kInfinite,
                        "training: the backward needs a forward value that can neither be saved nor recomputed");
    in_source_.assign(n_, false);
    out_source_.assign(n_, false);
    for (int i = 0; i < n_; ++i) {
      in_source_[i] = mc.source_side(2 * i);
      out_source_[i] = mc.source_side(2 * i + 1);
    }
  }

  /// Which tangents each gradient is computed from (a walk back through its inputs).
  void gradient_dependencies(Partition& p) {
    std::vector<int> tangent_index(n_, -1);
    for (size_t k = 0; k < spec_.tangents.size(); ++k) tangent_index.at(spec_.tangents[k]) = static_cast<int>(k);
    for (size_t j = spec_.forward_outputs; j < g_.outputs.size(); ++j) {
      std::vector<bool> seen(n_, false);
      std::vector<int> stack{g_.outputs[j]}, deps;
      while (!stack.empty()) {
        int i = stack.back();
        stack.pop_back();
        if (seen[i] || !backward_[i]) continue;
        seen[i] = true;
        if (tangent_index[i] >= 0) deps.push_back(tangent_index[i]);
        for (int x : g_.nodes[i].inputs) stack.push_back(x);
      }
      std::sort(deps.begin(), deps.end());
      p.gradient_tangents.push_back(std::move(deps));
    }
  }

  enum class Need : uint8_t { None, Saved, SavedInput, Recompute, Backward };

  /// Walks back from the gradients: backward nodes, then the forward values they read, each
  /// saved (cut), a primal input (passed through) or recomputed (on the sink side).
  void classify_backward_needs(Partition& p) {
    need_.assign(n_, Need::None);
    std::vector<int> stack;
    for (size_t j = spec_.forward_outputs; j < g_.outputs.size(); ++j) stack.push_back(g_.outputs[j]);
    for (int t : spec_.tangents) need_[t] = Need::Backward;
    while (!stack.empty()) {
      int i = stack.back();
      stack.pop_back();
      if (need_[i] != Need::None) continue;
      const Node& n = g_.nodes[i];
      if (backward_[i]) {
        need_[i] = Need::Backward;
      } else if (in_source_[i] && !out_source_[i]) {
        need_[i] = n.op == OpKind::Input ? Need::SavedInput : Need::Saved;
        continue;  // its inputs stay in the forward
      } else {
        KILN_CHECK(!in_source_[i] && !out_source_[i] && recomputable(g_, n),
                   "partition: the backward reads %{} ({}), which is neither saved nor recomputable", i,
                   op_name(n.op));
        need_[i] = Need::Recompute;
        // (forward work the backward recorded itself, a weight's transpose, is not "again")
        if (i < spec_.backward_start) p.recomputed.push_back(i);
      }
      for (int x : n.inputs) stack.push_back(x);
    }
    std::sort(p.recomputed.begin(), p.recomputed.end());
    for (int i = 0; i < n_; ++i) {
      if (need_[i] == Need::Saved) {
        p.saved.push_back(i);
        p.saved_bytes += value_bytes(g_.nodes[i]);
      } else if (need_[i] == Need::SavedInput) {
        p.saved_inputs.push_back(static_cast<int>(g_.nodes[i].attrs.int_value));
      }
    }
  }

  /// Every node recorded before autograd ran (dead ones are the pipeline's to drop, as for any
  /// captured graph; fallbacks keep their place in the RNG order), and what saved values need.
  void build_forward(Partition& p) {
    std::vector<bool> keep(n_, false), seen(n_, false);
    for (int i = 0; i < std::min(spec_.backward_start, n_); ++i) keep[i] = !backward_[i];
    std::vector<int> stack(p.saved.begin(), p.saved.end());
    while (!stack.empty()) {
      int i = stack.back();
      stack.pop_back();
      if (seen[i]) continue;
      seen[i] = keep[i] = true;
      for (int x : g_.nodes[i].inputs) stack.push_back(x);
    }
    Graph& f = p.forward;
    std::vector<int> remap(n_, -1);
    for (int i = 0; i < n_; ++i) {
      if (!keep[i]) continue;
      KILN_CHECK(!backward_[i], "partition: forward keeps backward node %{}", i);
      Node n = g_.nodes[i];
      for (int& x : n.inputs) x = remap[x];
      remap[i] = static_cast<int>(f.nodes.size());
      if (n.op == OpKind::Input) f.input_ids.push_back(remap[i]);
      f.nodes.push_back(std::move(n));
    }
    for (int j = 0; j < spec_.forward_outputs; ++j) {
      f.outputs.push_back(remap[g_.outputs[j]]);
      f.output_leaf.push_back(j < static_cast<int>(g_.output_leaf.size()) ? g_.output_leaf[j] : -1);
    }
    for (int s : p.saved) {
      auto at = std::find(f.outputs.begin(), f.outputs.end(), remap[s]);
      if (at != f.outputs.end()) {
        p.saved_positions.push_back(static_cast<int>(at - f.outputs.begin()));
        continue;
      }
      p.saved_positions.push_back(static_cast<int>(f.outputs.size()));
      f.outputs.push_back(remap[s]);
      f.output_leaf.push_back(kSavedValue);  // a buffer of its own, in any layout
    }
  }

  void build_backward(Partition& p) {
    Graph& b = p.backward;
    GraphEditor e(b);
    std::vector<int> remap(n_, -1);
    int arg = 0;
    // Saved values: contiguous until the forward program says how it stores them.
    for (int s : p.saved) {
      const Node& n = g_.nodes[s];
      remap[s] = e.input(n.dtype, n.sizes, contiguous_strides(n.sizes), arg++);
    }
    for (int i = 0; i < n_; ++i)
      if (need_[i] == Need::SavedInput) {
        const Node& n = g_.nodes[i];
        remap[i] = e.input(n.dtype, n.sizes, n.strides, arg++);
      }
    for (int t : spec_.tangents) {
      const Node& n = g_.nodes[t];
      remap[t] = e.input(n.dtype, n.sizes, n.strides, arg++);
    }
    b.input_ids.clear();
    for (int k = 0; k < arg; ++k) b.input_ids.push_back(k);
    // Backward nodes in their recorded order; a recomputed forward value just before the first
    // one that reads it (placed by its id, it would be computed at the start and held through
    // most of the backward: a GELU recomputed for the last layer's weight gradient).
    auto emit = [&](int root) {
      std::vector<std::pair<int, bool>> stack{{root, false}};
      while (!stack.empty()) {
        auto [i, expanded] = stack.back();
        stack.pop_back();
        if (remap[i] >= 0) continue;
        if (!expanded) {
          stack.push_back({i, true});
          for (int x : g_.nodes[i].inputs)
            if (remap[x] < 0) stack.push_back({x, false});
          continue;
        }
        KILN_CHECK(need_[i] == Need::Recompute || need_[i] == Need::Backward,
                   "partition: backward node %{} reads %{}, which the backward lacks", root, i);
        Node n = g_.nodes[i];
        for (int& x : n.inputs) x = remap[x];
        remap[i] = e.append(std::move(n));
      }
    };
    for (int i = 0; i < n_; ++i)
      if (need_[i] == Need::Backward) emit(i);
    std::vector<int> copy_of(b.nodes.size(), -1);
    for (size_t j = spec_.forward_outputs; j < g_.outputs.size(); ++j) {
      int src = g_.outputs[j];
      int id = remap[src];
      if (b.nodes[id].op == OpKind::Input) {
        // An output must be a computed value (a gradient equal to a tangent, say): a copy.
        if (copy_of[id] < 0) {
          const Node& in = b.nodes[id];
          Node n{OpKind::Cast, {id}, {}, in.dtype, in.sizes, {}};
          n.attrs.dtype = in.dtype;
          copy_of[id] = e.append(std::move(n));
        }
        id = copy_of[id];
      }
      auto at = std::find(b.outputs.begin(), b.outputs.end(), id);
      if (at != b.outputs.end()) {
        p.gradient_positions.push_back(static_cast<int>(at - b.outputs.begin()));
        continue;
      }
      p.gradient_positions.push_back(static_cast<int>(b.outputs.size()));
      b.outputs.push_back(id);
      // A gradient made from tangents may be a view of one (eager's is too); one that is not
      // (a constant) must be a fresh tensor, never a view of a saved value.
      b.output_leaf.push_back(backward_[src] ? -1 : kFreshOutput);
    }
  }

  const Graph& g_;
  const JointSpec& spec_;
  const PartitionOptions& opts_;
  int n_;
  std::vector<bool> backward_, in_source_, out_source_;
  std::vector<Need> need_;
};

}  // namespace

Partition partition_joint_graph(const Graph& joint, const JointSpec& spec, const PartitionOptions& opts) {
  return Partitioner(joint, spec, opts).run();
}

void adopt_saved_layouts(const KernelProgram& forward, Partition& p) {
  for (size_t k = 0; k < p.saved.size(); ++k) {
    const OutputSpec& o = forward.outputs.at(p.saved_positions[k]);
    KILN_CHECK(o.kind == OutputSpec::Kind::Buffer, "saved value {} is not a buffer of the forward", k);
    Node& in = p.backward.nodes.at(k);
    KILN_CHECK(in.op == OpKind::Input && in.attrs.int_value == static_cast<int64_t>(k),
               "backward input {} is not saved value {}", k, k);
    in.strides = forward.buffers.at(o.index).strides;
  }
}

void plant_gradient_bug(Graph& backward) {
  if (backward.outputs.empty()) return;
  GraphEditor e(backward);
  int g = backward.outputs[0];
  backward.outputs[0] = e.binary(OpKind::Mul, g, e.constant(2.0, backward.nodes[g].dtype));
}

std::string describe(const Graph& joint, const Partition& p) {
  std::string out;
  auto line = [&](const char* what, int id) {
    const Node& n = joint.nodes[id];
    out += fmt::format("  {} %{} = {} : {}[{}] ({} bytes)\n", what, id, op_name(n.op), dtype_name(n.dtype),
                       fmt::join(n.sizes, ", "), value_bytes(n));
  };
  for (int s : p.saved) line("saved     ", s);
  for (int r : p.recomputed) line("recomputed", r);
  for (int a : p.saved_inputs) out += fmt::format("  saved input arg{} (passed through)\n", a);
  out += fmt::format("  saved bytes: {}\n", p.saved_bytes);
  return out;
}

}  // namespace kiln::passes
