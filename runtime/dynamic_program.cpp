/// \file dynamic_program.cpp
/// Dynamic programs over one size symbol (see dynamic_program.h).
///
/// Note [Dynamic sizes]
/// A function called with a batch, token or row count that changes should not recompile per
/// size. kiln makes the changing size a symbol `s` without teaching every pass symbolic
/// arithmetic, in three steps, each of which proves what it relies on:
///
/// 1. The graph template. The first capture (at s_a) and the one that missed because sizes
///    changed (at s_b) must be the same graph except for integers, and each integer must be a
///    constant, k*s or s+c (fitted at s_a, checked at s_b). Python cannot steer on the size
///    behind the two captures' backs: inside a capture the sizes it reads are SizeInts
///    (python/kiln/_size_int.py), and any decision on one keeps the function specialised, but
///    for an argument's size compared with a constant, which becomes a range of s the guards
///    check (_dynamic.symbol_range). The forms are linear, so every linear relation between
///    sizes (a broadcast, a concat, a reshape's element count) that held at both captures holds
///    at every s; the non-linear ones are checked per size by sizes_hold (a slice clamped to
///    its operand) or refused at capture, where kiln's tracer computes a size by a rule that
///    is not affine in another (GraphEditor::note_size_rule: a pooled or resampled length, a
///    slice bound Python clamped to its dim, a split's pieces, a roll's shift, arange's count).
/// 2. The kernel template. The graph is lowered at both captured sizes, and the constants and
///    loop counts in which the two kernel programs differ become parameters of one template,
///    compiled once (Note [Kernel templates] in ir/kernel_template.cpp).
/// 3. Instances. At a new size the graph template gives the graph (checked by sizes_hold), the
///    passes lower it, and when the lowering matches the kernel template it runs on the shared
///    machine code with the parameter values read from it, with its own buffers, products and
///    arena plan. A size whose lowering differs (a decision the passes take only at some sizes)
///    misses, and the caller specialises on it.
///
/// What this covers: every size of one symbol whose lowering has the captures' structure --
/// the batch of an MLP, the rows of a norm, a softmax's length, a sequence length inside
/// attention (a loop count, the stride `T` of an index, a mean's 1/T are parameters).
#include "runtime/dynamic_program.h"

#include <fmt/format.h>

#include <chrono>

#include "passes/pipeline.h"
#include "support/error.h"
#include "support/hash.h"

namespace kiln::runtime {

namespace {

/// Where an integer of a graph sits in its node (visit_graph_ints).
enum class IntField : uint8_t { Size, Stride, Attr, Value };

/// Every integer of a graph that may depend on sizes, in a fixed order: f(value, node, field),
/// over a mutable or a const graph.
template <class G, class F>
void visit_graph_ints(G& g, const F& f) {
  for (auto& n : g.nodes) {
    for (auto& v : n.sizes) f(v, n, IntField::Size);
    for (auto& v : n.strides) f(v, n, IntField::Stride);
    for (auto& v : n.attrs.ints) f(v, n, IntField::Attr);
    if (n.op != ir::OpKind::Input) f(n.attrs.int_value, n, IntField::Value);  // an Input's is its leaf index
  }
}

std::vector<int64_t> graph_ints(const ir::Graph& g) {
  std::vector<int64_t> out;
  visit_graph_ints(g, [&](int64_t v, const ir::Node&, IntField) { out.push_back(v); });
  return out;
}

/// Empty when `a` and `b` are one graph up to integers; else the first difference.
std::string graph_difference(const ir::Graph& a, const ir::Graph& b) {
  if (a.nodes.size() != b.nodes.size())
    return fmt::format("the captures have {} and {} nodes", a.nodes.size(), b.nodes.size());
  for (size_t i = 0; i < a.nodes.size(); ++i) {
    const ir::Node &x = a.nodes[i], &y = b.nodes[i];
    bool floats_same = x.attrs.floats.size() == y.attrs.floats.size() && same_double(x.attrs.float_value, y.attrs.float_value);
    for (size_t k = 0; floats_same && k < x.attrs.floats.size(); ++k)
      floats_same = same_double(x.attrs.floats[k], y.attrs.floats[k]);
    if (x.op != y.op || x.inputs != y.inputs || x.dtype != y.dtype || x.attrs.dtype != y.attrs.dtype)
      return fmt::format("node %{} is {} in one capture and {} in the other", i, ir::op_name(x.op), ir::op_name(y.op));
    if (!floats_same) return fmt::format("node %{} ({}) has another float constant", i, ir::op_name(x.op));
    if (x.sizes.size() != y.sizes.size() || x.strides.size() != y.strides.size() ||
        x.attrs.ints.size() != y.attrs.ints.size())
      return fmt::format("node %{} ({}) has another rank", i, ir::op_name(x.op));
  }
  if (a.outputs != b.outputs || a.output_leaf != b.output_leaf || a.input_ids != b.input_ids)
    return "the captures return different values";
  return "";
}

/// The form of a value seen as `va` at s_a and `vb` at s_b: constant, k*s or s+c.
bool fit(int64_t va, int64_t vb, int64_t sa, int64_t sb, Affine* out) {
  if (va == vb) {
    *out = {va, 0};
    return true;
  }
  if (va % sa == 0 && va / sa != 0 && vb == (va / sa) * sb) {
    *out = {0, va / sa};
    return true;
  }
  if (vb - sb == va - sa) {
    *out = {va - sa, 1};
    return true;
  }
  return false;
}

bool slice_holds(const ir::Node& n, const ir::Node& in, const ir::Sizes& out_sizes, std::string* why) {
  int64_t dim = n.attrs.ints[0], start = n.attrs.ints[1], end = n.attrs.ints[2], step = n.attrs.ints[3];
  if (dim < 0 || static_cast<size_t>(dim) >= in.sizes.size() || in.sizes.size() != out_sizes.size() || step < 1)
    return false;
  int64_t len = in.sizes[dim];
  if (start < 0 || start > end || end > len) {
    *why = fmt::format("a slice [{}:{}] of a dim of {}", start, end, len);
    return false;
  }
  if (out_sizes[dim] != (end - start + step - 1) / step) {
    *why = fmt::format("a slice [{}:{}:{}] that made {} elements", start, end, step, out_sizes[dim]);
    return false;
  }
  return true;
}

}  // namespace

ir::Graph GraphTemplate::at(int64_t s) const {
  ir::Graph g = graph;
  size_t i = 0;
  visit_graph_ints(g, [&](int64_t& v, const ir::Node&, IntField) { v = ints[i++].at(s); });
  return g;
}

std::optional<ir::Graph> GraphTemplate::valid_at(int64_t s, std::string* why) const {
  if (s < kMinSymbol || s > max_symbol()) {
    *why = fmt::format("s = {} is outside {}..{}", s, kMinSymbol, max_symbol());
    return std::nullopt;
  }
  ir::Graph g = at(s);
  if (!sizes_hold(g, why)) return std::nullopt;
  return g;
}

int64_t max_symbol() { return int64_t{1} << 31; }

GraphTemplate fit_graph_template(const ir::Graph& a, const ir::Graph& b, const std::vector<ChangedInt>& changed,
                                 const SizeRules& rules_a, const SizeRules& rules_b) {
  std::string diff = graph_difference(a, b);
  KILN_UNSUPPORTED_IF(!diff.empty(), "the function traced to another graph at the new sizes: {}", diff);
  // A size computed from a changing size by a rule that is not affine -- a pooled or resampled
  // length (floor(s / 2) is 2 at both 4 and 5), a slice bound clamped to it, a split's pieces --
  // cannot be told from two captures, so such a size stays specialised.
  KILN_UNSUPPORTED_IF(rules_a.size() != rules_b.size(),
                      "the captures applied different size rules (pooling, resampling, a clamped slice, a split)");
  for (size_t i = 0; i < rules_a.size(); ++i)
    KILN_UNSUPPORTED_IF(rules_a[i].first != rules_b[i].first,
                        "a size rule over the changing size ({} -> {} and {} -> {}: pooling, resampling, a clamped "
                        "slice or a split): not affine",
                        rules_a[i].first, rules_a[i].second, rules_b[i].first, rules_b[i].second);
  GraphTemplate t;
  t.graph = b;
  // The symbol: the first input size that changed.
  int64_t sa = -1, sb = -1;
  for (int id : b.input_ids)
    for (size_t d = 0; d < b.nodes[id].sizes.size() && sa < 0; ++d)
      if (a.nodes[id].sizes[d] != b.nodes[id].sizes[d]) {
        sa = a.nodes[id].sizes[d];
        sb = b.nodes[id].sizes[d];
        t.source = fmt::format("leaf {} size({})", b.nodes[id].attrs.int_value, d);
      }
  if (sa < 0 && !changed.empty()) {
    sa = changed[0].a;
    sb = changed[0].b;
    t.source = fmt::format("leaf {} (an int)", changed[0].leaf);
  }
  KILN_UNSUPPORTED_IF(sa < 0, "no argument size changed");
  KILN_UNSUPPORTED_IF(sa < kMinSymbol || sb < kMinSymbol,
                      "a size changed from or to {} (sizes 0 and 1 stay specialised: broadcasting depends on them)",
                      sa < kMinSymbol ? sa : sb);
  t.seen[0] = sa;
  t.seen[1] = sb;
  std::vector<int64_t> va = graph_ints(a), vb = graph_ints(b);
  t.ints.resize(va.size());
  for (size_t i = 0; i < va.size(); ++i)
    KILN_UNSUPPORTED_IF(!fit(va[i], vb[i], sa, sb, &t.ints[i]),
                        "a size went from {} to {} while {} went from {} to {}: not k*s or s+c of one symbol", va[i],
                        vb[i], t.source, sa, sb);
  for (const ChangedInt& c : changed) {
    Affine f;
    KILN_UNSUPPORTED_IF(!fit(c.a, c.b, sa, sb, &f), "int argument {} went from {} to {} while {} went from {} to {}",
                        c.leaf, c.a, c.b, t.source, sa, sb);
    t.values.emplace_back(c.leaf, f);
  }
  // Per Input node, the forms of its sizes and strides (the guards').
  size_t i = 0;
  const ir::Node* last = nullptr;
  visit_graph_ints(b, [&](int64_t, const ir::Node& n, IntField field) {
    const Affine& f = t.ints[i++];
    if (n.op != ir::OpKind::Input || field == IntField::Attr) return;
    if (&n != last) t.inputs.push_back({static_cast<int>(n.attrs.int_value), {}, {}});
    last = &n;
    (field == IntField::Size ? t.inputs.back().sizes : t.inputs.back().strides).push_back(f);
  });
  return t;
}

bool sizes_hold(const ir::Graph& g, std::string* why) {
  try {
    ir::verify(g);
  } catch (const InternalError&) {
    *why = "the graph is not valid at this size (a negative size or an element count that differs)";
    return false;
  }
  for (size_t i = 0; i < g.nodes.size(); ++i) {
    const ir::Node& n = g.nodes[i];
    bool ok = true;
    if (n.op == ir::OpKind::Slice) {
      ok = slice_holds(n, g.nodes[n.inputs[0]], n.sizes, why);
    } else if (n.op == ir::OpKind::SliceScatter) {
      ok = slice_holds(n, g.nodes[n.inputs[0]], g.nodes[n.inputs[1]].sizes, why);
    } else if (n.op == ir::OpKind::Expand) {
      const ir::Node& in = g.nodes[n.inputs[0]];
      size_t lead = n.sizes.size() - std::min(n.sizes.size(), in.sizes.size());
      for (size_t d = 0; d < in.sizes.size() && ok; ++d)
        ok = in.sizes[d] == 1 || in.sizes[d] == n.sizes[lead + d];
      if (!ok) *why = "an expand of a dim that is not 1";
    }
    if (!ok) {
      if (why->empty()) *why = "a view out of its operand's bounds";
      *why = fmt::format("node %{} ({}): {}", i, ir::op_name(n.op), *why);
      return false;
    }
  }
  return true;
}

TemplateCode::TemplateCode(const ir::KernelProgram& a, const ir::KernelProgram& b, const CpuCompileOptions& opts,
                           std::vector<std::string>* timings)
    : profile_(opts.profile) {
  std::string why = ir::make_kernel_template(a, b, &template_);
  KILN_UNSUPPORTED_IF(!why.empty(), "{}", why);
  cpu::CpuCode code = cpu::compile_cpu(template_.program, opts.codegen);
  if (timings) append_codegen_timings(code, opts.codegen.opt_level, timings);
  code_ = std::make_shared<const cpu::CpuCode>(std::move(code));
}

std::shared_ptr<CompiledProgram> TemplateCode::instance(ir::KernelProgram p, std::string* why) const {
  std::vector<int64_t> params;
  *why = ir::match_kernel_template(template_, p, &params);
  if (!why->empty()) return nullptr;
  auto out = std::make_shared<CompiledProgram>(std::move(p), code_, std::move(params));
  out->set_profiling(profile_);
  out->set_arena_pool(arenas_);
  return out;
}

std::string describe_params(const ir::KernelTemplate& t, const int64_t seen[2], const std::string& indent) {
  std::string out;
  for (size_t i = 0; i < t.params.size(); ++i) {
    const auto& pi = t.params[i];
    auto show = [&](int64_t v) {
      return pi.dtype == ir::DType::Int64 ? std::to_string(v) : fmt::format("{}", ir::float_param_value(v));
    };
    out += fmt::format("\n{}p{} ({}): {} at s = {}, {} at s = {}", indent, i, ir::dtype_name(pi.dtype),
                       show(pi.seen[0]), seen[0], show(pi.seen[1]), seen[1]);
  }
  return out;
}

ir::KernelProgram DynamicCpuProgram::lower(const ir::Graph& g, std::vector<std::string>* timings) const {
  passes::PassOptions popts = passes_;
  popts.timings = timings;
  return passes::run_pipeline(g, popts);
}

DynamicCpuProgram::DynamicCpuProgram(GraphTemplate t, const CpuCompileOptions& opts)
    : t_(std::move(t)), passes_(opts.passes) {
  auto t0 = std::chrono::steady_clock::now();
  ir::KernelProgram lowered[2];
  for (int k = 0; k < 2; ++k) {
    ir::Graph g = t_.at(t_.seen[k]);
    std::string why;
    KILN_UNSUPPORTED_IF(!sizes_hold(g, &why), "the graph is not valid at s = {}: {}", t_.seen[k], why);
    lowered[k] = lower(g, k == 1 ? &timings_ : nullptr);
  }
  // Only a dynamic program's own instances read a template; per-size logs and dumps stop here.
  passes_.dump = nullptr;
  passes_.log_ir = passes_.log_fusion = false;
  try {
    code_ = std::make_unique<TemplateCode>(lowered[0], lowered[1], opts, &timings_);
  } catch (const Unsupported& e) {
    throw Unsupported(fmt::format("the lowerings at {} and {} differ: {}", t_.seen[0], t_.seen[1], e.what()));
  }
  const ir::KernelTemplate& kt = code_->kernel_template();
  describe_ = fmt::format("s = {} (seen {} and {}); one program for the sizes {} <= s <= {} whose lowering matches "
                          "its template; {} kernel parameters",
                          t_.source, t_.seen[0], t_.seen[1], kMinSymbol, max_symbol(), kt.params.size());
  describe_ += describe_params(kt, t_.seen, "  ");
  compile_ms_ = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

std::shared_ptr<CompiledProgram> DynamicCpuProgram::for_graph(const ir::Graph& g, std::string* why) const {
  ir::KernelProgram p;
  try {
    p = lower(g, nullptr);
  } catch (const Unsupported& e) {
    *why = e.what();
    return nullptr;
  }
  return code_->instance(std::move(p), why);
}

std::shared_ptr<CompiledProgram> DynamicCpuProgram::at(int64_t s, std::string* why) const {
  std::optional<ir::Graph> g = t_.valid_at(s, why);
  return g ? for_graph(*g, why) : nullptr;
}

}  // namespace kiln::runtime
