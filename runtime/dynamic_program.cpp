/// \file dynamic_program.cpp
/// Dynamic programs over one size symbol (see dynamic_program.h).
///
/// Note [Dynamic leading sizes]
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
///    its operand) or refused at capture (a pooled or resampled length:
///    GraphEditor::note_size_rule).
/// 2. Lowering at sentinels. The template is lowered at three values of s above any real size
///    (2^31 and up). Where the three kernel programs are identical except for the integers the
///    runtime reads -- each kernel's outer, thread-split loop count, buffer sizes and strides,
///    matrix-product shapes, returned views -- and each of those is affine in s, the program is
///    right at every s below the sentinels: the symbol is then only an upper bound of outer loop
///    variables, so every decision the passes and LLVM made from a variable's range (a div/mod
///    removed, an index known to fit) holds for the smaller range [0, s) too. Anything else --
///    the symbol in an index expression, a reduction length, an inner loop, a float constant
///    such as a mean's 1/s -- makes the programs differ, and kiln keeps specialising instead.
/// 3. Instances. The machine code is compiled once; per size the runtime evaluates the forms
///    into a copy of the program (its own arena plan) that shares that code.
///
/// What this covers: sizes that are the leading (row) count of the work -- the batch of an MLP,
/// the tokens of a feed-forward layer, the rows of a norm or a softmax over the last dim. A
/// changing sequence length inside attention or a reduction over the changing dim still
/// specialise per size (README: Changing sizes).
#include "runtime/dynamic_program.h"

#include <fmt/format.h>

#include <chrono>
#include <functional>

#include "passes/pipeline.h"
#include "support/error.h"
#include "support/hash.h"

namespace kiln::runtime {

namespace {

// Sentinel values of the symbol the template is lowered at: above any size a tensor on this
// machine has, of both parities and far apart, so that an affine form is identified exactly.
constexpr int64_t kSentinels[3] = {(int64_t{1} << 31) + 1, (int64_t{1} << 31) + (int64_t{1} << 20),
                                   (int64_t{1} << 31) + 3 * (int64_t{1} << 20) + 7};

using IntVisitor = std::function<void(int64_t&)>;

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

/// The integers of a kernel program the runtime reads (and no code depends on), in a fixed
/// order. Kernels' outer loop counts must be in `runtime_extent` first.
void visit_program_ints(ir::KernelProgram& p, const IntVisitor& f) {
  for (auto& b : p.buffers) {
    for (int64_t& v : b.sizes) f(v);
    for (int64_t& v : b.strides) f(v);
  }
  for (auto& k : p.kernels) f(k.runtime_extent);
  auto operand = [&](ir::GemmOperand& o) {
    for (int64_t& v : o.sizes) f(v);
    for (int64_t& v : o.strides) f(v);
    f(o.offset);
  };
  for (auto& g : p.gemms) {
    operand(g.a);
    operand(g.b);
    f(g.epilogue_span);
    f(g.bias_offset);
  }
  for (auto& o : p.outputs) {
    for (int64_t& v : o.view.sizes) f(v);
    for (int64_t& v : o.view.strides) f(v);
    f(o.view.offset);
  }
}

/// A kernel's loop IR without its outer loop's count (the one integer of a kernel that may
/// depend on the symbol: the runtime passes the range of it each thread runs).
std::string kernel_text(const ir::Kernel& k) {
  std::string s = ir::print(k);
  if (k.loops.empty()) return s;
  size_t at = s.find(" in 0..", s.find('\n'));
  size_t end = s.find(' ', at + 7);
  return s.substr(0, at + 7) + "N" + s.substr(end);
}

/// Empty when `a` and `b` are one program up to the runtime's integers; else the difference.
std::string program_difference(const ir::KernelProgram& a, const ir::KernelProgram& b) {
  if (!a.externs.empty())
    return "the program runs fallback ops (their arguments were captured at one size)";
  if (a.buffers.size() != b.buffers.size() || a.kernels.size() != b.kernels.size() ||
      a.gemms.size() != b.gemms.size() || a.steps.size() != b.steps.size() || a.outputs.size() != b.outputs.size() ||
      a.externs.size() != b.externs.size())
    return "the lowering makes other steps at other sizes";
  for (size_t i = 0; i < a.steps.size(); ++i)
    if (a.steps[i].kind != b.steps[i].kind || a.steps[i].index != b.steps[i].index)
      return "the lowering orders its steps differently at other sizes";
  for (size_t i = 0; i < a.buffers.size(); ++i) {
    const auto &x = a.buffers[i], &y = b.buffers[i];
    if (x.kind != y.kind || x.index != y.index || x.dtype != y.dtype || x.sizes.size() != y.sizes.size())
      return fmt::format("buffer {} differs at other sizes", i);
  }
  for (size_t i = 0; i < a.kernels.size(); ++i) {
    std::string x = kernel_text(a.kernels[i]), y = kernel_text(b.kernels[i]);
    if (x == y) continue;
    size_t at = 0;  // the first line that differs, for KILN_LOG=dynamic
    while (at < x.size() && at < y.size() && x[at] == y[at]) ++at;
    size_t line = x.rfind('\n', at) == std::string::npos ? 0 : x.rfind('\n', at) + 1;
    return fmt::format("kernel {} depends on the size beyond its outer loop count (an index, an inner loop, a "
                       "reduction's length or a constant): `{}`",
                       a.kernels[i].name, x.substr(line, x.find('\n', line) - line));
  }
  for (size_t i = 0; i < a.gemms.size(); ++i) {
    const auto &x = a.gemms[i], &y = b.gemms[i];
    if (x.a.buffer != y.a.buffer || x.b.buffer != y.b.buffer || x.out != y.out || x.zero_start != y.zero_start ||
        x.epilogue != y.epilogue || x.bias != y.bias || x.a.sizes.size() != y.a.sizes.size() ||
        x.b.sizes.size() != y.b.sizes.size())
      return fmt::format("matrix product {} differs at other sizes", x.name);
  }
  for (size_t i = 0; i < a.outputs.size(); ++i) {
    const auto &x = a.outputs[i], &y = b.outputs[i];
    if (x.kind != y.kind || x.index != y.index || x.view.is_view != y.view.is_view ||
        x.view.sizes.size() != y.view.sizes.size())
      return fmt::format("output {} differs at other sizes", i);
  }
  return "";
}

std::vector<int64_t> program_ints(ir::KernelProgram& p) {
  for (auto& k : p.kernels) k.runtime_extent = k.outer_extent();
  std::vector<int64_t> out;
  visit_program_ints(p, [&](int64_t& v) { out.push_back(v); });
  return out;
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

int64_t max_symbol() { return kSentinels[0] - 1; }

GraphTemplate fit_graph_template(const ir::Graph& a, const ir::Graph& b, const std::vector<ChangedInt>& changed,
                                 const SizeRules& rules_a, const SizeRules& rules_b) {
  std::string diff = graph_difference(a, b);
  KILN_UNSUPPORTED_IF(!diff.empty(), "the function traced to another graph at the new sizes: {}", diff);
  // A pooled or resampled length of a changing size is not affine in it (floor(s / 2) is 2 at
  // both 4 and 5): the two captures cannot tell its rule, so such a size stays specialised.
  KILN_UNSUPPORTED_IF(rules_a.size() != rules_b.size(), "the captures pooled or resampled different dims");
  for (size_t i = 0; i < rules_a.size(); ++i)
    KILN_UNSUPPORTED_IF(rules_a[i].first != rules_b[i].first,
                        "pooling or resampling over the changing size ({} -> {} and {} -> {}): not affine",
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

DynamicCpuProgram::DynamicCpuProgram(GraphTemplate t, const CpuCompileOptions& opts)
    : t_(std::move(t)), profile_(opts.profile) {
  auto t0 = std::chrono::steady_clock::now();
  passes::PassOptions popts = opts.passes;
  std::vector<ir::KernelProgram> lowered;
  std::vector<std::vector<int64_t>> ints;
  for (int k = 0; k < 3; ++k) {
    ir::Graph g = t_.at(kSentinels[k]);
    std::string why;
    KILN_UNSUPPORTED_IF(!sizes_hold(g, &why), "the graph is not valid at large sizes: {}", why);
    popts.timings = k == 0 ? &timings_ : nullptr;
    lowered.push_back(passes::run_pipeline(g, popts));
    ints.push_back(program_ints(lowered.back()));
    if (k > 0) {
      std::string diff = program_difference(lowered[0], lowered[k]);
      KILN_UNSUPPORTED_IF(!diff.empty(), "{}", diff);
      KILN_UNSUPPORTED_IF(ints[k].size() != ints[0].size(), "the lowering has other views at other sizes");
    }
  }
  // Each runtime integer: affine in s through all three sentinels.
  const int64_t h0 = kSentinels[0], h1 = kSentinels[1], h2 = kSentinels[2];
  size_t depends = 0;
  program_ints_.resize(ints[0].size());
  for (size_t i = 0; i < ints[0].size(); ++i) {
    int64_t d = ints[1][i] - ints[0][i];
    KILN_UNSUPPORTED_IF(d % (h1 - h0) != 0, "a runtime size is not affine in the symbol");
    Affine f{0, d / (h1 - h0)};
    f.base = ints[0][i] - f.coeff * h0;
    KILN_UNSUPPORTED_IF(f.at(h2) != ints[2][i], "a runtime size is not affine in the symbol");
    program_ints_[i] = f;
    if (f.coeff != 0) ++depends;
  }
  template_ = std::move(lowered[0]);
  cpu::CpuCode code = cpu::compile_cpu(template_, opts.codegen);
  append_codegen_timings(code, opts.codegen.opt_level, &timings_);
  code_ = std::make_shared<const cpu::CpuCode>(std::move(code));
  describe_ = fmt::format("s = {} (seen {} and {}); one program for {} <= s <= {}; {} of its {} runtime integers depend on s",
                          t_.source, t_.seen[0], t_.seen[1], kMinSymbol, max_symbol(), depends, program_ints_.size());
  compile_ms_ = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

std::shared_ptr<CompiledProgram> DynamicCpuProgram::for_graph(const ir::Graph& g) const {
  // The symbol's value from the first input size that depends on it.
  int64_t s = -1;
  const std::vector<int64_t> ints = graph_ints(g);
  if (ints.size() != t_.ints.size() || !graph_difference(t_.graph, g).empty()) return nullptr;
  for (size_t i = 0; i < ints.size() && s < 0; ++i)
    if (t_.ints[i].coeff != 0 && (ints[i] - t_.ints[i].base) % t_.ints[i].coeff == 0)
      s = (ints[i] - t_.ints[i].base) / t_.ints[i].coeff;
  if (s < 0 || s > max_symbol()) return nullptr;
  for (size_t i = 0; i < ints.size(); ++i)
    if (ints[i] != t_.ints[i].at(s)) return nullptr;
  std::string why;
  return instance(s, &why);
}

std::shared_ptr<CompiledProgram> DynamicCpuProgram::at(int64_t s, std::string* why) const {
  if (s < kMinSymbol || s > max_symbol()) {
    *why = fmt::format("s = {} is outside {}..{}", s, kMinSymbol, max_symbol());
    return nullptr;
  }
  return instance(s, why);
}

std::shared_ptr<CompiledProgram> DynamicCpuProgram::instance(int64_t s, std::string* why) const {
  if (!sizes_hold(t_.at(s), why)) return nullptr;
  ir::KernelProgram p = template_;
  size_t i = 0;
  visit_program_ints(p, [&](int64_t& v) { v = program_ints_[i++].at(s); });
  auto out = std::make_shared<CompiledProgram>(std::move(p), code_);
  out->set_profiling(profile_);
  out->set_arena_pool(arenas_);
  return out;
}

}  // namespace kiln::runtime
