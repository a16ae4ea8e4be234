/// \file lower_to_loops.cpp
/// Graph -> loop IR: which values get buffers, which kernel computes each, and the loops.
///
/// Note [Kernels]
/// A pointwise kernel loops over one value's domain in that value's memory order and stores
/// every materialised value of that domain. A row kernel loops over the outer (kept) dims of a
/// reduction's input and, inside, runs phases over the reduced dims: reduction phases (ordered
/// by dependency: softmax's sum needs its max) and then a store phase writing full-size values
/// (softmax's output) and row-size values (a mean). A row of 1024 floats stays in L1 between the
/// phases, so the input is read from memory once. Reductions of a kernel are read by later
/// phases through placeholders (Load of buffer -1 - slot); they are also stored to their own
/// buffer, so a consumer that cannot join the kernel loads them instead.
#include "passes/lower_to_loops.h"

#include <fmt/format.h>

#include <algorithm>
#include <functional>
#include <map>
#include <numeric>
#include <deque>
#include <optional>
#include <set>

#include "passes/lower_pointwise.h"
#include "support/error.h"

namespace kiln::passes {
using namespace kiln::ir;

namespace {

/// Recompute cost above which a value read by a kernel after a fallback step is materialised.
constexpr int kReuseAcrossCost = 16;

/// Relative cost of recomputing a node once per element (for the broadcast rule).
int op_cost(const Node& n) {
  switch (op_category(n.op)) {
    case OpCategory::Leaf:
    case OpCategory::Movement:
      return 0;
    case OpCategory::Cast:
      return 1;
    default:
      switch (n.op) {
        case OpKind::Exp: case OpKind::Exp2: case OpKind::Expm1: case OpKind::Log: case OpKind::Log2:
        case OpKind::Log1p: case OpKind::Sin: case OpKind::Cos: case OpKind::Tan: case OpKind::Tanh:
        case OpKind::Erf: case OpKind::Sigmoid: case OpKind::Pow: case OpKind::Sqrt: case OpKind::Rsqrt:
        case OpKind::Div: case OpKind::Reciprocal: case OpKind::Fmod: case OpKind::Remainder:
          return 8;
        default:
          return 1;
      }
  }
}

ReduceOp reduce_op(OpKind k) {
  switch (k) {
    case OpKind::Sum: return ReduceOp::Sum;
    case OpKind::Prod: return ReduceOp::Prod;
    case OpKind::Amax: return ReduceOp::Max;
    case OpKind::Amin: return ReduceOp::Min;
    case OpKind::ArgMax: return ReduceOp::ArgMax;
    case OpKind::ArgMin: return ReduceOp::ArgMin;
    case OpKind::Any: return ReduceOp::Any;
    case OpKind::All: return ReduceOp::All;
    default: KILN_UNREACHABLE(std::string("not a reduction: ") + op_name(k));
  }
}

/// Loop order of a value: dims sorted outermost-first by the strides eager gave it, when those
/// describe a dense non-overlapping layout; row-major otherwise.
std::vector<int> loop_order(const Node& n, bool* dense_layout) {
  int r = static_cast<int>(n.sizes.size());
  std::vector<int> order(r);
  std::iota(order.begin(), order.end(), 0);
  *dense_layout = false;
  if (n.strides.size() != n.sizes.size()) return order;
  std::vector<int> by(order);
  std::stable_sort(by.begin(), by.end(), [&](int a, int b) { return n.strides[a] > n.strides[b]; });
  int64_t expect = 1;
  for (int k = r - 1; k >= 0; --k) {
    int d = by[k];
    if (n.sizes[d] == 1) continue;
    if (n.strides[d] != expect) return order;
    expect *= n.sizes[d];
  }
  *dense_layout = true;
  return by;
}

/// Thrown while building an expression for a kernel it cannot join.
struct NotFusable {
  std::string why;
};

/// Sums of at least this many float32 elements accumulate in float64 (accuracy on 16M sums).
constexpr int64_t kWideAccumulation = 65536;
/// Whole-tensor reductions of at least this many elements are split across chunks (threads).
constexpr int64_t kSplitReduction = 65536;

/// A kernel under construction.
struct OpenKernel {
  int index = -1;                  ///< into KernelProgram::kernels
  bool row = false;
  bool closed = false;             ///< an extern step came after it: no value may join it
  /// Its innermost loop is serial and, when it is the only loop, not split across threads
  /// (a folding scatter's dim: Note [Scatters]).
  bool serial_innermost = false;
  /// A scan (Note [Scans]): its phase loop stays serial; the threads take its outer loops.
  bool scan = false;
  Sizes full;                      ///< row: the reduced input's sizes; pointwise: the domain
  std::vector<int64_t> rdims;      ///< row: reduced dims of `full`
  std::vector<int> order;          ///< pointwise: dims in loop order
  std::vector<Expr> idx;           ///< per dim of `full`: loop variable or 0
  std::vector<Loop> reduce_loops;  ///< row: the inner loops every phase runs
  std::map<int, std::pair<int, int>> reductions;  ///< node -> (slot, level)
  std::vector<Phase> levels;       ///< row: reduction phases by level
  Phase full_stores, row_stores;   ///< row: stores over the full domain, once per row
};

class Lowering {
 public:
  Lowering(const Graph& g, const PassOptions& opts) : g_(g), opts_(opts) { prog_.ctx = std::make_shared<Context>(); }

  KernelProgram run() {
    make_input_buffers();
    if (opts_.inplace_argument_writes) choose_inplace();
    choose_output_aliases();
    if (opts_.output_views) choose_output_views();
    choose_materialized();
    for (int id : order_) lower_node(id);
    for (auto& ok : open_) finish_kernel(ok);
    for (int o : g_.outputs) {
      auto in = inplace_.find(o);
      auto view = output_views_.find(o);
      if (in != inplace_.end())
        prog_.outputs.push_back({OutputSpec::Kind::Input, in->second.second});
      else if (view != output_views_.end())
        prog_.outputs.push_back({OutputSpec::Kind::InputView, view->second.first, view->second.second});
      else
        prog_.outputs.push_back({OutputSpec::Kind::Buffer, out_buffer_.at(o)});
    }
    return std::move(prog_);
  }

 private:
  Context& ctx() { return *prog_.ctx; }
  void log(const std::string& s) { prog_.fusion_log.push_back(s); }

  void make_input_buffers() {
    for (size_t i = 0; i < g_.nodes.size(); ++i) {
      const Node& n = g_.nodes[i];
      if (n.op != OpKind::Input) continue;
      input_buffer_[i] = add_buffer({BufferKind::Input, static_cast<int>(n.attrs.int_value), n.dtype, n.sizes, n.strides});
    }
  }

  int add_buffer(Buffer b) {
    prog_.buffers.push_back(std::move(b));
    return static_cast<int>(prog_.buffers.size()) - 1;
  }

  /// Note [In-place argument writes]: `cache[:, pos:pos + T] = x` on an argument is captured as
  /// new = slice_scatter(cache, x), an output the caller copies back into the argument. Built
  /// as is, that is a kernel writing a whole new cache plus a copy of it per call. When the old
  /// value is read by nothing but the scatter, the kernel instead writes x into the argument's
  /// own memory, later reads of `new` read the argument, and the output is the argument itself.
  /// Eager would have written the same elements; a call that fails before the write never makes
  /// it (the runtime stops at the first failing step), and one failing after it is redone
  /// eagerly from arguments whose written slice eager writes again with the same values (the
  /// scatter's source cannot read the old value: the scatter is its only reader). A folding
  /// scatter (scatter_add, index_add) is not idempotent: redone eagerly, it would add its
  /// sources a second time. It writes in place only when no step after it can fail (no value
  /// that may raise, no eager op); else into a copy, which the caller gets only after success.
  void choose_inplace() {
    if (g_.output_leaf.size() != g_.outputs.size()) return;
    std::vector<int> uses(g_.nodes.size(), 0);
    for (const Node& n : g_.nodes)
      for (int x : n.inputs) ++uses[x];
    std::set<int> returned(g_.outputs.begin(), g_.outputs.end());
    for (size_t j = 0; j < g_.outputs.size(); ++j) {
      int leaf = g_.output_leaf[j], s = g_.outputs[j];
      const Node& n = g_.nodes[s];
      bool scatter = n.op == OpKind::SliceScatter || is_scatter(n.op);
      if (leaf < 0 || !scatter || n.numel() == 0) continue;
      int base = n.inputs[0];
      const Node& b = g_.nodes[base];
      if (b.op != OpKind::Input || b.attrs.int_value != leaf || uses[base] != 1 || returned.count(base)) continue;
      if (g_.nodes[n.inputs.back()].dtype != n.dtype || (n.op == OpKind::SliceScatter && n.attrs.ints[3] < 1)) continue;
      if (is_scatter(n.op) && scatter_combine(n) != ScatterCombine::Replace && may_fail_after(s)) continue;
      inplace_[s] = {input_buffer_.at(base), leaf};
      log(fmt::format("%{} ({}) writes its slice into argument {} in place", s, op_name(n.op), leaf));
    }
  }

  /// Note [Outputs that are reshapes of a product]: `linear(x3d, w)` without a bias returns
  /// reshape(matmul) (and so does the last product of attention). Eager returns the product's
  /// own memory; kiln would copy it into the output. When the output is a chain of reshapes of
  /// a product that nothing else returns, and eager gave it row-major strides, the product's
  /// buffer is the output buffer (with the output's shape); its readers address it with the
  /// product's own row-major strides. Eager ops reading the product would get a tensor of the
  /// wrong shape, so a product read by a fallback keeps its own buffer.
  void choose_output_aliases() {
    std::set<int> fallback_operands;
    for (const Node& n : g_.nodes)
      for (int x : n.inputs)
        if (op_category(n.op) == OpCategory::Extern) fallback_operands.insert(x);
    for (size_t j = 0; j < g_.outputs.size(); ++j) {
      int o = g_.outputs[j];
      const Node& on = g_.nodes[o];
      if (on.op != OpKind::Reshape || std::count(g_.outputs.begin(), g_.outputs.end(), o) != 1) continue;
      if (!on.strides.empty() && on.strides != contiguous_strides(on.sizes)) continue;
      if (j < g_.output_leaf.size() && g_.output_leaf[j] >= 0) continue;
      int x = o;
      while (g_.nodes[x].op == OpKind::Reshape) x = g_.nodes[x].inputs[0];
      if (g_.nodes[x].op != OpKind::Matmul || output_alias_.count(x) || fallback_operands.count(x) ||
          std::count(g_.outputs.begin(), g_.outputs.end(), x))
        continue;
      output_alias_[x] = o;
      aliased_outputs_.insert(o);
    }
  }

  /// Outputs that are views of an argument (x.t(), x[0], x.view(...)) come back as those views,
  /// aliasing the argument as eager's do (a later write through one is seen in the other), and
  /// nothing copies them. Only dense views with eager's own strides: a later segment of a
  /// function with graph breaks reads a carried value with the strides eager gave it, and
  /// expects a dense one (see _carry in _trace.py).
  void choose_output_views() {
    for (size_t j = 0; j < g_.outputs.size(); ++j) {
      int o = g_.outputs[j];
      const Node& n = g_.nodes[o];
      // a new value written back, or one eager made as a new tensor (kFreshOutput)
      if (j < g_.output_leaf.size() && g_.output_leaf[j] != -1) continue;
      if (inplace_.count(o) || output_alias_.count(o) || aliased_outputs_.count(o) || n.strides.size() != n.sizes.size())
        continue;
      auto v = strided_view_of_input(o);
      if (!v) continue;
      bool dense = false;
      Node probe = n;
      probe.strides = v->second.strides;
      for (size_t d = 0; d < n.sizes.size(); ++d)
        if (n.sizes[d] == 1) probe.strides[d] = n.strides[d];  // eager's stride: it does not matter
      loop_order(probe, &dense);
      bool eagers = true;
      for (size_t d = 0; d < n.sizes.size(); ++d) eagers &= n.sizes[d] == 1 || probe.strides[d] == n.strides[d];
      if (!dense || !eagers) continue;
      v->second.strides = probe.strides;
      // The view is of an argument's buffer (also for a value written into one in place): its
      // index is the leaf, or -1 for a value carried in from an earlier segment (not a leaf of
      // the call: it stays a copy).
      KILN_CHECK(prog_.buffers[v->first].kind == BufferKind::Input, "output view of a non-argument buffer");
      int leaf = prog_.buffers[v->first].index;
      if (leaf < 0) continue;
      output_views_[o] = {leaf, v->second};
      log(fmt::format("%{} (output) is a view of argument {}: returned as that view, not copied", o, leaf));
    }
  }

  /// The strides kernels and products address value `id`'s buffer with.
  Sizes strides_of(int id) const {
    auto v = value_strides_.find(id);
    return v != value_strides_.end() ? v->second : prog_.buffers[buffer_of_.at(id)].strides;
  }

  static bool is_scatter(OpKind op) { return op == OpKind::IndexCopy || op == OpKind::Scatter; }
  static ScatterCombine scatter_combine(const Node& n) { return static_cast<ScatterCombine>(n.attrs.ints.at(1)); }
  /// Computed whole, never inline: scatters (stored from the source side, Note [Scatters]) and
  /// scans (element after element, Note [Scans]).
  static bool stored_whole(OpKind op) { return is_scatter(op) || op == OpKind::Scan; }

  /// Whether a step computing a node after `id` may fail the call (Note [In-place argument
  /// writes]): a value that may raise, or an eager op (any of which may raise).
  bool may_fail_after(int id) const {
    for (size_t i = id + 1; i < g_.nodes.size(); ++i) {
      const Node& n = g_.nodes[i];
      if (n.op == OpKind::Fallback || may_raise(g_, n)) return true;
    }
    return false;
  }

  /// Lowers an in-place slice assignment or scatter (see choose_inplace): a kernel over the
  /// source only.
  void lower_inplace_scatter(int id) {
    const Node& s = g_.nodes[id];
    auto [buf, leaf] = inplace_.at(id);
    (void)leaf;
    buffer_of_[id] = buf;
    if (is_scatter(s.op)) {
      scatter_into(id, buf, "writes kernel {} into its argument in place (a scatter)");
      return;
    }
    const Node& src = g_.nodes[s.inputs[1]];
    if (src.numel() == 0) return;
    int64_t dim = s.attrs.ints[0], start = s.attrs.ints[1], step = s.attrs.ints[3];
    bool dense = false;
    OpenKernel& k = new_pointwise_kernel(src.sizes, loop_order(src, &dense));
    Expr value = value_in_new_kernel(k, s.inputs[1], k.idx);
    std::vector<Expr> dst = k.idx;
    dst[dim] = ctx().add(ctx().mul(k.idx[dim], step), start);
    store_in(k, buf, dst, value);
    note_store(k, id, buf, "writes kernel {} into its argument in place (a slice assignment)");
    k.closed = true;  // later values read the argument from memory, after this kernel
  }

  /// Note [Scatters]: index_copy/index_add (a 1-D index along dim) and scatter/scatter_add/
  /// scatter_reduce (an index of base's rank) are computed from the source side. One kernel
  /// checks the index into a buffer of its own (an index out of range flags the call, which
  /// stops before anything is written and is redone eagerly, raising torch's error), then a
  /// kernel over the source (index_copy) or the index (scatter) stores each element where its
  /// index sends it: into the argument itself when the scatter was in place on an argument
  /// read by nothing else (choose_inplace: HF's StaticCache update, `out.scatter_add_`), else
  /// into a copy of base that a kernel makes first.
  /// - Replace: duplicate indices store in an unspecified order, as eager documents.
  /// - Add, multiply, max, min load the element they land on and store it combined. Two
  ///   sources land on one element only from different positions along dim, so that loop runs
  ///   innermost, in index order (eager's order: the same sum), and neither split across
  ///   threads nor vectorised; the threads take the other dims.
  void lower_scatter(int id) {
    const Node& n = g_.nodes[id];
    bool dense = false;
    std::vector<int> order = loop_order(n, &dense);
    int buf = make_value_buffer(id, dense ? n.strides : contiguous_strides(n.sizes));
    if (n.numel() == 0) return;
    OpenKernel& k = new_pointwise_kernel(n.sizes, order);
    store_in(k, buf, k.idx, value_in_new_kernel(k, n.inputs[0], k.idx));
    note_store(k, id, buf, "copies its base in kernel {} (a scatter)");
    k.closed = true;
    scatter_into(id, buf, "writes kernel {} into the copy (a scatter)");
  }

  /// The checked index and the scatter of Note [Scatters], storing into `buf`.
  void scatter_into(int id, int buf, const char* why) {
    const Node& n = g_.nodes[id];
    const Node& index = g_.nodes[n.inputs[1]];
    int64_t dim = n.attrs.ints[0];
    ScatterCombine combine = scatter_combine(n);
    bool along = n.op == OpKind::IndexCopy;  // a 1-D index along dim
    const Sizes& domain = along ? g_.nodes[n.inputs[2]].sizes : index.sizes;
    if (numel(domain) == 0) return;
    Sizes checked_strides = contiguous_strides(index.sizes);
    int checked = add_buffer({BufferKind::Temp, -1, DType::Int64, index.sizes, checked_strides});
    {
      std::vector<int> all(index.sizes.size());
      std::iota(all.begin(), all.end(), 0);
      OpenKernel& k = new_pointwise_kernel(index.sizes, all);
      Expr i = ctx().cast(value_in_new_kernel(k, n.inputs[1], k.idx), DType::Int64);
      store_in(k, checked, k.idx, ctx().binary(ExprOp::IndexCheck, i, ctx().int_const(n.sizes[dim])));
      note_store(k, n.inputs[1], checked, "is checked by kernel {} (a scatter's index)");
      names_[k.index].insert(names_[k.index].begin(), "index_check");
      k.closed = true;
    }
    bool folds = combine != ScatterCombine::Replace && domain[dim] > 1;
    std::vector<int> order(domain.size());
    std::iota(order.begin(), order.end(), 0);
    if (along) {
      bool dense = false;
      order = loop_order(g_.nodes[n.inputs[2]], &dense);
    }
    if (folds) {  // dim innermost: see the note
      order.erase(std::find(order.begin(), order.end(), static_cast<int>(dim)));
      order.push_back(static_cast<int>(dim));
    }
    OpenKernel& k = new_pointwise_kernel(domain, order);
    k.serial_innermost = folds;
    Expr value = value_in_new_kernel(k, n.inputs[2], k.idx);
    std::vector<Expr> dst = k.idx;
    Expr at = along ? k.idx[dim] : linear_index(ctx(), k.idx, checked_strides);
    dst[dim] = ctx().load(checked, at, DType::Int64);
    if (combine != ScatterCombine::Replace) {
      static const ExprOp how[] = {ExprOp::Add, ExprOp::Add, ExprOp::Mul, ExprOp::Max, ExprOp::Min};
      Expr old = ctx().load(buf, linear_index(ctx(), dst, prog_.buffers[buf].strides), n.dtype);
      value = ctx().binary(how[static_cast<int>(combine)], old, value);
    }
    store_in(k, buf, dst, value);
    note_store(k, id, buf, why);
    k.closed = true;  // later values read the result from memory, after this kernel
  }

  /// Note [Scans]: cumsum/cumprod as one kernel over the value: the other dims are its outer
  /// loops (split across threads), the scanned dim one serial phase loop folding a running
  /// reduction (Reduction::running) whose stores read the value folded so far. It folds in
  /// the accumulation dtype eager's CPU kernel uses (float64 for float32), rounding only what
  /// it stores: the same sums as eager, bit for bit.
  void lower_scan(int id) {
    const Node& n = g_.nodes[id];
    int64_t dim = n.attrs.ints[0];
    bool dense = false;
    std::vector<int> order = loop_order(n, &dense);
    int buf = make_value_buffer(id, dense ? n.strides : contiguous_strides(n.sizes));
    if (n.numel() == 0) return;
    order.erase(std::find(order.begin(), order.end(), static_cast<int>(dim)));
    order.push_back(static_cast<int>(dim));
    OpenKernel& k = new_pointwise_kernel(n.sizes, order);
    k.scan = true;
    Kernel& kern = prog_.kernels[k.index];
    if (n.sizes[dim] > 1) {  // its loop, created last, becomes the phase's
      kern.phases[0].loops.push_back(kern.loops.back());
      kern.loops.pop_back();
    }
    DType acc = n.dtype == DType::Float32 ? DType::Float64 : n.dtype;
    ReduceOp op = scatter_combine(n) == ScatterCombine::Multiply ? ReduceOp::Prod : ReduceOp::Sum;
    Expr x = ctx().cast(value_in_new_kernel(k, n.inputs[0], k.idx), acc);
    Reduction r{op, x, acc, n.dtype, next_slot_++};
    r.running = true;
    kern.phases[0].reductions.push_back(r);
    store_in(k, buf, k.idx, ctx().load(-1 - r.slot, ctx().int_const(0), n.dtype));
    note_store(k, id, buf, "scans in kernel {}");
    k.closed = true;  // later values read the result from memory, after this kernel
  }

  /// Decides which values get a buffer of their own: outputs, reductions, and values a
  /// broadcasting consumer would otherwise recompute many times at a high cost.
  void choose_materialized() {
    size_t n = g_.nodes.size();
    std::vector<std::vector<int>> users(n);
    for (size_t i = 0; i < n; ++i)
      for (int x : g_.nodes[i].inputs) users[x].push_back(static_cast<int>(i));
    // demand[i]: the largest element count at which a consumer evaluates value i (views pass
    // their consumers' demand through, since they are inlined as index arithmetic).
    std::vector<int64_t> demand(n, 0);
    for (int i = static_cast<int>(n) - 1; i >= 0; --i)
      for (int u : users[i]) {
        const Node& un = g_.nodes[u];
        // Concat and pad read each element of an operand once; reductions too.
        bool once = op_category(un.op) == OpCategory::Reduction || un.op == OpKind::Concat || un.op == OpKind::Pad ||
                    un.op == OpKind::SliceScatter || stored_whole(un.op);
        int64_t d = op_category(un.op) == OpCategory::Movement ? std::max(un.numel(), demand[u])
                    : once                                     ? g_.nodes[i].numel()
                                                               : un.numel();
        demand[i] = std::max(demand[i], d);
      }
    std::vector<int> cost(n, 0);
    std::set<int> outputs;
    for (int o : g_.outputs)
      if (!output_views_.count(o)) outputs.insert(o);
    // next_extern[i]: the first fallback or matrix product after node i (kernels are closed at
    // those steps, so a user after it is in a later kernel).
    std::vector<size_t> next_extern(n + 1, n);
    for (size_t i = n; i-- > 0;)
      next_extern[i] = (i + 1 < n && closes_kernels(g_.nodes[i + 1].op)) ? i + 1 : next_extern[i + 1];
    // A matrix product reads its operands from memory. One that is a view (a transpose, a
    // reshape) of a computed value reads that value's buffer through the view: the value is
    // materialised, the view is not copied.
    for (size_t i = 0; i < n; ++i) {
      if (g_.nodes[i].op != OpKind::Matmul) continue;
      for (int x : g_.nodes[i].inputs) {
        int base = gemm_base(x);
        if (base != x && op_category(g_.nodes[base].op) != OpCategory::Leaf) gemm_bases_.insert(base);
      }
    }
    for (size_t i = 0; i < n; ++i) {
      const Node& node = g_.nodes[i];
      int c = op_cost(node);
      for (int x : node.inputs) c += materialized_.count(x) ? 0 : cost[x];
      cost[i] = c;
      bool leaf = op_category(node.op) == OpCategory::Leaf;
      bool reduction = op_category(node.op) == OpCategory::Reduction;
      bool external = op_category(node.op) == OpCategory::Extern || op_category(node.op) == OpCategory::Contraction;
      // An extern op reads real tensors: its operands need buffers (inputs have theirs).
      bool extern_operand = false;
      for (int u : users[i]) extern_operand |= g_.nodes[u].op == OpKind::Fallback;
      extern_operand &= node.op != OpKind::Input;
      bool costly_broadcast = !leaf && !reduction && op_category(node.op) != OpCategory::Movement &&
                              demand[i] > node.numel() && cost[i] >= 4;
      if (costly_broadcast)
        log(fmt::format("materialise %{} ({}): read {}x per element by a broadcasting consumer and costs {} to "
                        "recompute",
                        i, op_name(node.op), demand[i] / std::max<int64_t>(node.numel(), 1), cost[i]));
      if (extern_operand) {
        // A view of an argument (W.t() for a matmul) is passed as that view, not copied.
        if (auto v = strided_view_of_input(static_cast<int>(i))) {
          extern_views_[static_cast<int>(i)] = *v;
          extern_operand = false;
          log(fmt::format("%{} ({}) reaches its fallback as a strided view of an argument, not a copy", i,
                          op_name(node.op)));
        }
      }
      // A costly value read again after a fallback step would be recomputed, with everything it
      // inlines, by a later kernel: a recurrence (an LSTM's cell state) then recomputes every
      // earlier step at every step. Such a value gets a buffer.
      bool read_across_extern = false;
      if (!leaf && !reduction && op_category(node.op) != OpCategory::Movement && cost[i] >= kReuseAcrossCost)
        for (int u : users[i]) read_across_extern |= static_cast<size_t>(u) > next_extern[i];
      if (read_across_extern)
        log(fmt::format("materialise %{} ({}): read after a fallback step and costs {} to recompute", i,
                        op_name(node.op), cost[i]));
      if (extern_operand) shared_.insert(static_cast<int>(i));
      bool gemm_operand = false;
      for (int u : users[i]) gemm_operand |= g_.nodes[u].op == OpKind::Matmul;
      gemm_operand &= node.op != OpKind::Input;
      if (gemm_operand) {
        if (auto v = gemm_view(static_cast<int>(i))) {
          gemm_views_[static_cast<int>(i)] = *v;
          gemm_operand = false;
          log(fmt::format("%{} ({}) reaches its matrix product as a strided view of %{}, not a copy", i,
                          op_name(node.op), v->first));
        }
      }
      gemm_operand |= gemm_bases_.count(static_cast<int>(i)) > 0;
      // An integer division that may divide by zero is computed whole, into a buffer of its own:
      // inlined, only the elements a consumer reads would be divided (x // x then [-1]), or
      // none (an unused result, or one multiplied by 0 and folded away), and eager raises
      // ZeroDivisionError when any element divides by zero. A gather of a user's index too:
      // eager raises IndexError for any index out of range (x[idx][0] with idx = [0, 99]), and
      // the kernel that checks them all runs before anything written in place reads it.
      bool may_divide_by_zero = may_raise(g_, node);
      if (outputs.count(static_cast<int>(i)) || reduction || costly_broadcast || external || extern_operand ||
          gemm_operand || may_divide_by_zero || read_across_extern || stored_whole(node.op)) {
        materialized_.insert(static_cast<int>(i));
        order_.push_back(static_cast<int>(i));
        cost[i] = 0;
      }
    }
  }

  static bool closes_kernels(OpKind op) { return op == OpKind::Fallback || op == OpKind::Matmul; }

  /// The value under a chain of views (reshape, permute, expand, slice) ending at `id`.
  int view_base(int id) const {
    int base = id;
    while (op_category(g_.nodes[base].op) == OpCategory::Movement && g_.nodes[base].op != OpKind::Flip)
      base = g_.nodes[base].inputs[0];
    return base;
  }

  /// The strides of the buffer value `id` is read from: an argument's own memory (also for a
  /// slice assignment written into it in place), else the buffer it gets when materialised.
  Sizes planned_strides(int id) const {
    const Node& n = g_.nodes[id];
    // A slice assignment written in place lives in its argument (Note [In-place argument writes]).
    if (inplace_.count(id)) return g_.nodes[n.inputs[0]].strides;
    if (n.op == OpKind::Input || op_category(n.op) == OpCategory::Extern) return n.strides;
    if (op_category(n.op) == OpCategory::Reduction || n.op == OpKind::Matmul) return contiguous_strides(n.sizes);
    bool dense = false;
    loop_order(n, &dense);
    return dense ? n.strides : contiguous_strides(n.sizes);
  }

  /// The buffer of value `id`, once it has one (an argument, a value written into one in place,
  /// or a materialised value).
  int buffer_for(int id) const {
    auto in = input_buffer_.find(id);
    if (in != input_buffer_.end()) return in->second;
    auto ip = inplace_.find(id);
    if (ip != inplace_.end()) return ip->second.first;
    return buffer_of_.at(id);
  }

  /// When value `id` is views (reshape, permute, expand, slice) of an argument whose addressing
  /// stays affine, that argument's buffer and the view's sizes, strides and offset.
  std::optional<std::pair<int, ExternView>> strided_view_of_input(int id) {
    int base = view_base(id);
    // An argument, or a value written into one in place (its memory is the argument's).
    if (g_.nodes[base].op != OpKind::Input && !inplace_.count(base)) return std::nullopt;
    auto v = strided_view(id);
    if (!v) return std::nullopt;
    return std::make_pair(buffer_for(base), v->second);
  }

  /// When value `id` is views of a value with a buffer (an argument, a value written into one in
  /// place, or one materialised for a matrix product) whose addressing stays affine: that value
  /// and the view's sizes, strides and offset into its buffer.
  std::optional<std::pair<int, ExternView>> strided_view(int id) {
    const Node& top = g_.nodes[id];
    int base = view_base(id);
    bool has_buffer = g_.nodes[base].op == OpKind::Input || inplace_.count(base) || gemm_bases_.count(base);
    if (base == id || !has_buffer || top.numel() == 0) return std::nullopt;
    Context& c = ctx();
    std::vector<Expr> vars, idx;
    for (int64_t s : top.sizes) vars.push_back(s == 1 ? c.int_const(0) : c.var(s));
    idx = vars;
    for (int n = id; n != base; n = g_.nodes[n].inputs[0])
      idx = view_source_index(c, g_.nodes[n], g_.nodes[g_.nodes[n].inputs[0]].sizes, idx);
    Expr lin = c.simplify_index(linear_index(c, idx, planned_strides(base)));
    // The index must be offset + sum(stride_d * var_d): anything else (div/mod left by a reshape
    // of a non-contiguous tensor) is not a strided view.
    std::map<Expr, int64_t> coef;
    int64_t offset = 0;
    std::function<bool(Expr, int64_t)> affine = [&](Expr e, int64_t scale) -> bool {
      switch (e->op) {
        case ExprOp::Const: offset += e->ival * scale; return true;
        case ExprOp::Var: coef[e] += scale; return true;
        case ExprOp::Add: return affine(e->a, scale) && affine(e->b, scale);
        case ExprOp::Mul: return is_const(e->b) && affine(e->a, scale * e->b->ival);
        default: return false;
      }
    };
    if (!affine(lin, 1) || offset < 0) return std::nullopt;
    ExternView v;
    v.is_view = true;
    v.sizes = top.sizes;
    v.offset = offset;
    for (size_t d = 0; d < vars.size(); ++d) {
      int64_t st = is_const(vars[d]) ? 0 : coef[vars[d]];
      if (st < 0) return std::nullopt;
      v.strides.push_back(st);
    }
    size_t used = 0;
    for (auto& [e, k] : coef) used += k != 0;
    size_t have = 0;
    for (Expr e : vars) have += !is_const(e) && coef.count(e) && coef[e] != 0;
    if (used != have) return std::nullopt;  // a variable that is not one of the view's dims
    return std::make_pair(base, v);
  }

  /// A matrix product's operand `id` as a strided view of a value with a buffer. Besides plain
  /// strided views: a reshape that only merges batch dims (matmul's [B, H, M, K] -> [B*H, M, K])
  /// of a strided view whose batch dims do not merge (a transposed cache slice) is read with
  /// its own batch dims, in the same row-major batch order, instead of being copied.
  /// Copies the tracer recorded (a same-dtype cast: matmul's .contiguous() of a view) hold the
  /// same values as their operand, so a product may read the operand instead.
  bool is_copy(const Node& n) const { return n.op == OpKind::Cast && g_.nodes[n.inputs[0]].dtype == n.dtype; }

  /// What a matrix product's operand reads in the end: `id` through views and copies.
  int gemm_base(int id) const {
    int base = id;
    while ((op_category(g_.nodes[base].op) == OpCategory::Movement && g_.nodes[base].op != OpKind::Flip) ||
           is_copy(g_.nodes[base]))
      base = g_.nodes[base].inputs[0];
    return base;
  }

  std::optional<std::pair<int, ExternView>> gemm_view(int id) {
    if (auto v = strided_view(id)) return v;
    // Peel copies and one reshape that keeps the matrix dims (it only regroups batch dims).
    int x = id;
    bool regrouped = false;
    for (;;) {
      const Node& n = g_.nodes[x];
      const Node& src = g_.nodes[n.inputs.empty() ? x : n.inputs[0]];
      size_t r = n.sizes.size(), rs = src.sizes.size();
      if (is_copy(n)) {
        x = n.inputs[0];
      } else if (n.op == OpKind::Reshape && !regrouped && r >= 2 && rs >= 2 && n.sizes[r - 1] == src.sizes[rs - 1] &&
                 n.sizes[r - 2] == src.sizes[rs - 2]) {
        x = n.inputs[0];
        regrouped = true;
      } else {
        break;
      }
    }
    if (x == id) return std::nullopt;
    if (g_.nodes[x].op == OpKind::Input || gemm_bases_.count(x)) {  // the whole value, as stored
      ExternView v;
      v.is_view = true;
      v.sizes = g_.nodes[x].sizes;
      v.strides = planned_strides(x);
      return std::make_pair(x, v);
    }
    return strided_view(x);
  }

  // ---- expressions ------------------------------------------------------------------------

  std::vector<Expr> broadcast_index(const std::vector<Expr>& idx, const Sizes& out, const Sizes& in) {
    std::vector<Expr> r(in.size());
    size_t off = out.size() - in.size();
    for (size_t d = 0; d < in.size(); ++d) r[d] = in[d] == 1 ? ctx().int_const(0) : idx[d + off];
    return r;
  }

  /// The value of node `id` at index `idx` inside kernel `cur_` (`self` is the value being
  /// stored, computed rather than loaded). Values stored by the same kernel are recomputed
  /// inline; reductions of the same kernel become placeholders.
  Expr value_at(int id, const std::vector<Expr>& idx, int self) {
    auto key = std::make_pair(id, idx);
    auto it = memo_.find(key);
    if (it != memo_.end()) return it->second;
    const Node& n = g_.nodes[id];
    Expr r;
    if (cur_ && cur_->reductions.count(id)) {
      // The reduction is only available for the row being computed.
      auto [slot, level] = cur_->reductions.at(id);
      (void)level;
      Sizes st = contiguous_strides(n.sizes);
      if (n.numel() != 1 && linear_index(ctx(), idx, st) != linear_index(ctx(), canonical_out_index(*cur_, n), st))
        throw NotFusable{fmt::format("reads %{} of another row", id)};
      r = ctx().load(-1 - slot, ctx().int_const(0), n.dtype);
      used_slots_.insert(slot);
    } else {
      auto buf = buffer_of_.find(id);
      bool same_kernel = cur_ && buf != buffer_of_.end() && written_by_.count(buf->second) &&
                         written_by_[buf->second] == cur_->index;
      if (n.op == OpKind::Input) {
        // Inputs are always read from their own buffer, also when the value being stored is the
        // input itself (an output that is a copy of an argument, e.g. x.clone() or x + 0).
        const Buffer& b = prog_.buffers[input_buffer_.at(id)];
        r = ctx().load(input_buffer_.at(id), linear_index(ctx(), idx, b.strides), n.dtype);
      } else if (id != self && buf != buffer_of_.end() && !same_kernel) {
        // A kernel runs in creation order: it cannot read what a later kernel writes.
        auto w = written_by_.find(buf->second);
        if (cur_ && w != written_by_.end() && w->second > cur_->index)
          throw NotFusable{fmt::format("reads buf{}, written by the later kernel {}", buf->second, w->second)};
        r = ctx().load(buf->second, linear_index(ctx(), idx, strides_of(id)), n.dtype);
      } else {
        r = compute(n, idx, self);
      }
    }
    memo_.emplace(std::move(key), r);
    return r;
  }

  Expr compute(const Node& n, const std::vector<Expr>& idx, int self) {
    Context& c = ctx();
    switch (op_category(n.op)) {
      case OpCategory::Leaf:
        if (n.op == OpKind::Iota) return c.cast(idx[n.attrs.ints.back()], n.dtype);
        KILN_CHECK(n.op == OpKind::Constant, "input %{} without a buffer", n.attrs.int_value);
        return is_float(n.dtype) ? c.float_const(n.attrs.float_value, n.dtype) : c.int_const(n.attrs.int_value, n.dtype);
      case OpCategory::Assemble:
        return assemble(n, idx, self);
      case OpCategory::Movement:
        return value_at(n.inputs[0], view_source_index(c, n, g_.nodes[n.inputs[0]].sizes, idx), self);
      case OpCategory::Reduction:
        throw NotFusable{"a reduction of another kernel has no buffer yet"};
      default: {
        std::vector<Expr> ops;
        for (int x : n.inputs) ops.push_back(value_at(x, broadcast_index(idx, n.sizes, g_.nodes[x].sizes), self));
        if (opts_.inject_bug == "relu" && n.op == OpKind::Maximum && is_const(ops[0])) return ops[1];
        return lower_pointwise(c, n, ops);
      }
    }
  }

  /// clamp(i, 0, n - 1): an index that is always in bounds (for the branch a select discards).
  Expr clamp_index(Expr i, int64_t n) {
    Context& c = ctx();
    if (n <= 1) return c.int_const(0);  // the only index there is (keeps addressing affine)
    return c.binary(ExprOp::Min, c.binary(ExprOp::Max, i, c.int_const(0)), c.int_const(std::max<int64_t>(n - 1, 0)));
  }

  /// Concat, gather and pad: values picked by index arithmetic. Every load they make is in
  /// bounds, also on the side of a select that is discarded (a select evaluates both).
  Expr assemble(const Node& n, const std::vector<Expr>& idx, int self) {
    Context& c = ctx();
    int64_t dim = n.attrs.ints[0];
    switch (n.op) {
      case OpKind::Concat: {
        std::vector<int64_t> offsets = {0};
        for (int x : n.inputs) offsets.push_back(offsets.back() + g_.nodes[x].sizes[dim]);
        Expr value = nullptr;
        for (int k = static_cast<int>(n.inputs.size()) - 1; k >= 0; --k) {
          const Node& xk = g_.nodes[n.inputs[k]];
          if (xk.sizes[dim] == 0) continue;
          std::vector<Expr> src(idx);
          src[dim] = clamp_index(c.add(idx[dim], -offsets[k]), xk.sizes[dim]);
          Expr v = value_at(n.inputs[k], src, self);
          value = value ? c.select(c.binary(ExprOp::Lt, idx[dim], c.int_const(offsets[k + 1])), v, value) : v;
        }
        return value;
      }
      case OpKind::Gather: {
        const Node& x = g_.nodes[n.inputs[0]];
        int64_t size = x.sizes[dim];
        Expr i = c.cast(value_at(n.inputs[1], idx, self), DType::Int64);
        if (n.attrs.ints[1]) i = c.select(c.binary(ExprOp::Lt, i, c.int_const(0)), c.add(i, size), i);
        std::vector<Expr> src(idx);
        src[dim] = c.binary(ExprOp::IndexCheck, i, c.int_const(size));
        return value_at(n.inputs[0], src, self);
      }
      case OpKind::Pad: {
        const Node& x = g_.nodes[n.inputs[0]];
        std::vector<Expr> src(idx);
        Expr inside = c.bool_const(true);
        for (size_t d = 0; d < idx.size(); ++d) {
          int64_t lo = n.attrs.ints[2 * d], hi = n.attrs.ints[2 * d + 1];
          if (lo == 0 && hi == 0) continue;
          Expr s = c.add(idx[d], -lo);
          inside = c.binary(ExprOp::And, inside,
                            c.binary(ExprOp::And, c.binary(ExprOp::Ge, s, c.int_const(0)),
                                     c.binary(ExprOp::Lt, s, c.int_const(x.sizes[d]))));
          src[d] = clamp_index(s, x.sizes[d]);
        }
        Expr fill = is_float(n.dtype) ? c.float_const(n.attrs.floats[0], n.dtype)
                                      : c.int_const(static_cast<int64_t>(n.attrs.floats[0]), n.dtype);
        return c.select(inside, value_at(n.inputs[0], src, self), fill);
      }
      case OpKind::SliceScatter: {
        // Inside the slice (and on its step): the source's element; elsewhere the base's.
        int64_t start = n.attrs.ints[1], end = n.attrs.ints[2], step = n.attrs.ints[3];
        const Node& src = g_.nodes[n.inputs[1]];
        Expr rel = c.add(idx[dim], -start);
        Expr inside = c.binary(ExprOp::And, c.binary(ExprOp::Ge, idx[dim], c.int_const(start)),
                               c.binary(ExprOp::Lt, idx[dim], c.int_const(end)));
        Expr pos = c.binary(ExprOp::Max, rel, c.int_const(0));
        if (step > 1) {
          inside = c.binary(ExprOp::And, inside, c.binary(ExprOp::Eq, c.mod(pos, step), c.int_const(0)));
          pos = c.div(pos, step);
        }
        std::vector<Expr> sidx(idx);
        sidx[dim] = clamp_index(pos, src.sizes[dim]);
        return c.select(inside, value_at(n.inputs[1], sidx, self), value_at(n.inputs[0], idx, self));
      }
      default:  // scatters and scans are always materialised (lower_scatter, lower_scan): never inline
        KILN_UNREACHABLE(std::string("not an assembly op computed inline: ") + op_name(n.op));
    }
  }

  /// Index of reduction `n`'s output for the current row of kernel `k`.
  std::vector<Expr> canonical_out_index(const OpenKernel& k, const Node& n) {
    bool keep = n.attrs.int_value != 0;
    std::vector<Expr> out;
    for (size_t d = 0; d < k.full.size(); ++d) {
      bool red = std::find(k.rdims.begin(), k.rdims.end(), static_cast<int64_t>(d)) != k.rdims.end();
      if (!red) out.push_back(k.idx[d]);
      else if (keep) out.push_back(ctx().int_const(0));
    }
    return out;
  }

  // ---- kernels ------------------------------------------------------------------------------

  /// Creates the buffer of materialised value `id` (output or temporary).
  int make_value_buffer(int id, Sizes strides) {
    const Node& n = g_.nodes[id];
    auto out_it = std::find(g_.outputs.begin(), g_.outputs.end(), id);
    bool is_output = out_it != g_.outputs.end();
    BufferKind kind = op_category(n.op) == OpCategory::Extern ? BufferKind::Extern
                      : is_output                             ? BufferKind::Output
                      : shared_.count(id)                     ? BufferKind::Shared
                                                              : BufferKind::Temp;
    int buf = add_buffer({kind, is_output ? static_cast<int>(out_it - g_.outputs.begin()) : -1, n.dtype, n.sizes,
                          std::move(strides)});
    if (is_output) out_buffer_[id] = buf;
    buffer_of_[id] = buf;
    return buf;
  }

  void lower_node(int id) {
    const Node& n = g_.nodes[id];
    if (inplace_.count(id)) {
      lower_inplace_scatter(id);
      return;
    }
    if (n.op == OpKind::FallbackOutput) return;  // its buffer comes with its Fallback
    if (aliased_outputs_.count(id)) return;       // written by its product (lower_gemm)
    if (n.op == OpKind::Fallback) {
      lower_extern(id);
      return;
    }
    if (n.op == OpKind::Matmul) {
      lower_gemm(id);
      return;
    }
    if (is_scatter(n.op)) {
      lower_scatter(id);
      return;
    }
    if (n.op == OpKind::Scan) {
      lower_scan(id);
      return;
    }
    if (op_category(n.op) == OpCategory::Reduction) {
      lower_reduction(id);
      return;
    }
    bool dense = false;
    std::vector<int> order = loop_order(n, &dense);
    // Not planned_strides(id): an argument returned as an output is copied here into a dense
    // buffer of its own, while planned_strides gives the argument's (maybe strided) memory.
    int buf = make_value_buffer(id, dense ? n.strides : contiguous_strides(n.sizes));
    if (n.numel() == 0) return;  // nothing to compute: the buffer is allocated empty
    // Epilogue of a row kernel: a value reading that kernel's reductions.
    for (auto it = open_.rbegin(); it != open_.rend(); ++it)
      if (it->row && !it->closed && try_row_store(*it, id, buf)) return;
    pointwise_store(id, buf, order);
  }

  /// Adds value `id` as a store of row kernel `k` if it reads k's reductions for the same row.
  bool try_row_store(OpenKernel& k, int id, int buf) {
    const Node& n = g_.nodes[id];
    std::vector<Expr> idx;
    Phase* phase = nullptr;
    if (n.sizes == k.full) {
      idx = k.idx;
      phase = &k.full_stores;
    } else {
      // A row-size value: the kept dims of the row, with or without the reduced ones as 1s.
      Sizes kept, keepdim;
      std::vector<Expr> kept_idx, keepdim_idx;
      for (size_t d = 0; d < k.full.size(); ++d) {
        bool red = std::find(k.rdims.begin(), k.rdims.end(), static_cast<int64_t>(d)) != k.rdims.end();
        keepdim.push_back(red ? 1 : k.full[d]);
        keepdim_idx.push_back(red ? ctx().int_const(0) : k.idx[d]);
        if (!red) {
          kept.push_back(k.full[d]);
          kept_idx.push_back(k.idx[d]);
        }
      }
      if (n.sizes == keepdim) idx = keepdim_idx;
      else if (n.sizes == kept) idx = kept_idx;
      else return false;
      phase = &k.row_stores;
    }
    Expr value;
    if (!build_in(k, id, idx, &value)) return false;
    phase->stores.push_back({buf, linear_index(ctx(), idx, prog_.buffers[buf].strides), value});
    note_store(k, id, buf, "fuses into row kernel {} as an epilogue: it reads that kernel's reductions of the same row");
    return true;
  }

  /// Builds value `id` inside kernel `k`; false when it does not read k's reductions (or cannot).
  bool build_in(OpenKernel& k, int id, const std::vector<Expr>& idx, Expr* value) {
    cur_ = &k;
    memo_.clear();
    used_slots_.clear();
    bool ok = true;
    try {
      *value = value_at(id, idx, id);
    } catch (const NotFusable& nf) {
      log(fmt::format("%{} ({}) stays out of kernel {}: {}", id, op_name(g_.nodes[id].op), k.index, nf.why));
      ok = false;
    }
    cur_ = nullptr;
    return ok && (!k.row || !used_slots_.empty());
  }

  /// The value of `id` at `idx`, built in kernel `k` just opened by new_pointwise_kernel (the
  /// newest kernel: nothing it reads is written later, so building cannot fail).
  Expr value_in_new_kernel(OpenKernel& k, int id, const std::vector<Expr>& idx) {
    cur_ = &k;
    memo_.clear();
    used_slots_.clear();
    Expr value = value_at(id, idx, -1);
    cur_ = nullptr;
    return value;
  }

  /// Adds `value` to kernel `k`'s stores, at element `at` of buffer `buf`.
  void store_in(OpenKernel& k, int buf, const std::vector<Expr>& at, Expr value) {
    prog_.kernels[k.index].phases[0].stores.push_back({buf, linear_index(ctx(), at, prog_.buffers[buf].strides), value});
  }

  void note_store(OpenKernel& k, int id, int buf, const char* why) {
    Kernel& kern = prog_.kernels[k.index];
    kern.provenance += fmt::format("{}%{}", kern.provenance.empty() ? "" : " ", id);
    collect_names(id, k.index);
    written_by_[buf] = k.index;
    log(fmt::format("%{} ({}) ", id, op_name(g_.nodes[id].op)) + fmt::format(fmt::runtime(why), k.index));
  }

  /// An op run eagerly by the caller: its operands' buffers in, its results' buffers out. Every
  /// kernel opened so far is closed to later values, so steps stay in dependency order.
  void lower_extern(int id) {
    const Node& n = g_.nodes[id];
    ExternCall call;
    call.table_index = static_cast<int>(n.attrs.int_value);
    call.name = fmt::format("fallback #{}", n.attrs.int_value);
    for (int x : n.inputs) {
      auto in = input_buffer_.find(x);
      auto view = extern_views_.find(x);
      if (view != extern_views_.end() && !buffer_of_.count(x)) {
        call.inputs.push_back(view->second.first);
        call.views.push_back(view->second.second);
        continue;
      }
      call.inputs.push_back(in != input_buffer_.end() ? in->second : buffer_of_.at(x));
      call.views.emplace_back();
    }
    std::vector<int> results = {id};
    for (size_t u = id + 1; u < g_.nodes.size(); ++u)
      if (g_.nodes[u].op == OpKind::FallbackOutput && g_.nodes[u].inputs[0] == id) results.push_back(static_cast<int>(u));
    std::sort(results.begin() + 1, results.end(),
              [&](int a, int b) { return g_.nodes[a].attrs.ints[0] < g_.nodes[b].attrs.ints[0]; });
    for (int r : results) call.outputs.push_back(make_value_buffer(r, planned_strides(r)));
    for (auto& ok : open_) ok.closed = true;
    prog_.externs.push_back(call);
    prog_.steps.push_back({Step::Kind::Extern, static_cast<int>(prog_.externs.size()) - 1});
    log(fmt::format("%{} runs eagerly (fallback #{}): kernels before it are closed", id, n.attrs.int_value));
  }

  /// A matrix product: a BLAS step reading its operands' buffers (through views where they are
  /// views) into a contiguous buffer. Like an extern step, it closes every kernel opened so far.
  void lower_gemm(int id) {
    const Node& n = g_.nodes[id];
    GemmCall call;
    call.name = fmt::format("%{} matmul", id);
    call.zero_start = n.attrs.int_value != 0;
    auto operand = [&](int x) {
      GemmOperand o;
      auto view = gemm_views_.find(x);
      if (view != gemm_views_.end()) {
        o.buffer = buffer_for(view->second.first);
        o.sizes = view->second.second.sizes;
        o.strides = view->second.second.strides;
        o.offset = view->second.second.offset;
      } else {
        o.buffer = buffer_for(x);
        o.sizes = g_.nodes[x].sizes;
        o.strides = input_buffer_.count(x) ? prog_.buffers[o.buffer].strides : strides_of(x);
      }
      const Sizes& want = g_.nodes[x].sizes;
      KILN_CHECK(o.sizes.size() >= 2 && o.sizes[o.sizes.size() - 1] == want.back() &&
                     o.sizes[o.sizes.size() - 2] == want[want.size() - 2] && numel(o.sizes) == numel(want),
                 "matmul operand %{} has a view of another shape", x);
      return o;
    };
    call.a = operand(n.inputs[0]);
    call.b = operand(n.inputs[1]);
    auto alias = output_alias_.find(id);
    if (alias != output_alias_.end()) {
      // Note [Outputs that are reshapes of a product]: the product writes the output itself.
      int o = alias->second;
      int j = static_cast<int>(std::find(g_.outputs.begin(), g_.outputs.end(), o) - g_.outputs.begin());
      call.out = add_buffer({BufferKind::Output, j, n.dtype, g_.nodes[o].sizes, contiguous_strides(g_.nodes[o].sizes)});
      buffer_of_[id] = buffer_of_[o] = out_buffer_[o] = call.out;
      value_strides_[id] = contiguous_strides(n.sizes);
      log(fmt::format("%{} (output) is %{}'s buffer: a reshape of a product needs no copy", o, id));
    } else {
      call.out = make_value_buffer(id, planned_strides(id));
    }
    for (auto& ok : open_) ok.closed = true;
    prog_.gemms.push_back(call);
    prog_.steps.push_back({Step::Kind::Gemm, static_cast<int>(prog_.gemms.size()) - 1});
    log(fmt::format("%{} (matmul) runs as a BLAS step: kernels before it are closed", id));
  }

  OpenKernel& new_kernel() {
    prog_.steps.push_back({Step::Kind::Kernel, static_cast<int>(prog_.kernels.size())});
    prog_.kernels.emplace_back();
    names_.emplace_back();
    open_.emplace_back();
    open_.back().index = static_cast<int>(prog_.kernels.size()) - 1;
    return open_.back();
  }

  /// A new kernel looping over `sizes` in `order` (size-1 dims get no loop), with one phase.
  OpenKernel& new_pointwise_kernel(const Sizes& sizes, const std::vector<int>& order) {
    OpenKernel& k = new_kernel();
    k.full = sizes;
    k.order = order;
    k.idx.assign(sizes.size(), nullptr);
    Kernel& kern = prog_.kernels[k.index];
    for (int d : order) {
      if (sizes[d] == 1) {
        k.idx[d] = ctx().int_const(0);
        continue;
      }
      k.idx[d] = ctx().var(sizes[d]);
      kern.loops.push_back({k.idx[d], LoopKind::Serial});
    }
    kern.phases.emplace_back();
    return k;
  }

  /// Stores value `id` in the pointwise kernel of its domain and layout (a new one if needed).
  void pointwise_store(int id, int buf, const std::vector<int>& order) {
    const Node& n = g_.nodes[id];
    Expr value = nullptr;
    OpenKernel* k = nullptr;
    for (auto& ok : open_)
      if (!ok.row && !ok.closed && ok.full == n.sizes && ok.order == order) k = &ok;
    if (k && !build_in(*k, id, k->idx, &value)) k = nullptr;  // e.g. it reads a later kernel's output
    bool joined = k != nullptr;
    if (!k) {
      k = &new_pointwise_kernel(n.sizes, order);
      bool built = build_in(*k, id, k->idx, &value);
      KILN_CHECK(built, "a pointwise value could not be built in its own kernel");
    }
    prog_.kernels[k->index].phases[0].stores.push_back(
        {buf, linear_index(ctx(), k->idx, prog_.buffers[buf].strides), value});
    note_store(*k, id, buf, joined ? "fuses into kernel {}: same iteration domain and layout" : "starts kernel {}");
  }

  void lower_reduction(int id) {
    const Node& n = g_.nodes[id];
    const Node& x = g_.nodes[n.inputs[0]];
    int buf = make_value_buffer(id, planned_strides(id));
    if (n.numel() == 0) return;
    std::vector<int64_t> rdims = n.attrs.ints;
    int64_t reduce_n = 1;
    for (int64_t d : rdims) reduce_n *= x.sizes[d];
    ReduceOp op = reduce_op(n.op);
    bool splittable = op != ReduceOp::ArgMax && op != ReduceOp::ArgMin;
    if (n.numel() == 1 && reduce_n >= kSplitReduction && splittable && split_chunks(reduce_n) > 1) {
      lower_split_reduction(id, buf, rdims, reduce_n);
      return;
    }
    // Join the newest row kernel over the same rows, if the value can be built there.
    for (auto it = open_.rbegin(); it != open_.rend(); ++it)
      if (it->row && !it->closed && it->full == x.sizes && it->rdims == rdims && add_reduction(*it, id, buf, reduce_n)) {
        log(fmt::format("%{} ({}) fuses into row kernel {}: same rows", id, op_name(n.op), it->index));
        return;
      }
    OpenKernel& k = new_kernel();
    k.row = true;
    k.full = x.sizes;
    k.rdims = rdims;
    k.idx.assign(x.sizes.size(), nullptr);
    Kernel& kern = prog_.kernels[k.index];
    for (size_t d = 0; d < x.sizes.size(); ++d) {
      bool red = std::find(rdims.begin(), rdims.end(), static_cast<int64_t>(d)) != rdims.end();
      if (x.sizes[d] == 1) {
        k.idx[d] = ctx().int_const(0);
        continue;
      }
      k.idx[d] = ctx().var(x.sizes[d]);
      (red ? k.reduce_loops : kern.loops).push_back({k.idx[d], LoopKind::Serial});
    }
    bool added = add_reduction(k, id, buf, reduce_n);
    KILN_CHECK(added, "a reduction could not be built in its own kernel");
    log(fmt::format("%{} ({}) starts row kernel {}", id, op_name(n.op), k.index));
  }

  /// Adds reduction `id` to row kernel `k` at the level after the reductions it reads.
  bool add_reduction(OpenKernel& k, int id, int buf, int64_t reduce_n) {
    const Node& n = g_.nodes[id];
    Expr value;
    cur_ = &k;
    memo_.clear();
    used_slots_.clear();
    try {
      value = value_at(n.inputs[0], k.idx, -1);
    } catch (const NotFusable& nf) {
      cur_ = nullptr;
      log(fmt::format("%{} ({}) stays out of kernel {}: {}", id, op_name(n.op), k.index, nf.why));
      return false;
    }
    cur_ = nullptr;
    int level = 0;
    for (int s : used_slots_)
      for (auto& [node, sl] : k.reductions)
        if (sl.first == s) level = std::max(level, sl.second + 1);
    int slot = next_slot_++;
    k.reductions[id] = {slot, level};
    if (static_cast<int>(k.levels.size()) <= level) k.levels.resize(level + 1);
    Reduction r = make_reduction(n, value, slot, reduce_n);
    // Arg reductions count positions in row-major order over the reduced dims.
    if (r.op == ReduceOp::ArgMax || r.op == ReduceOp::ArgMin) {
      Sizes rsizes;
      std::vector<Expr> ridx;
      for (int64_t d : k.rdims) {
        rsizes.push_back(k.full[d]);
        ridx.push_back(k.idx[d]);
      }
      r.position = linear_index(ctx(), ridx, contiguous_strides(rsizes));
    }
    k.levels[level].reductions.push_back(r);
    Expr placeholder = ctx().load(-1 - slot, ctx().int_const(0), n.dtype);
    std::vector<Expr> out_idx = canonical_out_index(k, n);
    k.row_stores.stores.push_back({buf, linear_index(ctx(), out_idx, prog_.buffers[buf].strides), placeholder});
    Kernel& kern = prog_.kernels[k.index];
    kern.provenance += fmt::format("{}%{}", kern.provenance.empty() ? "" : " ", id);
    collect_names(id, k.index);
    written_by_[buf] = k.index;
    return true;
  }

  Reduction make_reduction(const Node& n, Expr value, int slot, int64_t reduce_n) {
    ReduceOp op = reduce_op(n.op);
    DType acc = n.dtype;
    if (op == ReduceOp::ArgMax || op == ReduceOp::ArgMin) acc = value->dtype;
    if (op == ReduceOp::Any || op == ReduceOp::All) value = ctx().cast(value, DType::Bool);
    if (op == ReduceOp::Sum || op == ReduceOp::Prod) {
      value = ctx().cast(value, n.dtype);
      // A float32 product accumulates in float64 at any length: in float32 a running product
      // can overflow before a zero later in the row (1e30 * 1e30 * 0 = nan), which order alone
      // decides (eager's vector lanes meet the zero first: -0; found by the fuzzer); in float64
      // it is the true product, rounded once.
      if (n.dtype == DType::Float32 && (reduce_n >= kWideAccumulation || op == ReduceOp::Prod)) acc = DType::Float64;
    }
    return Reduction{op, value, acc, n.dtype, slot};
  }

  /// Number of chunks a whole-tensor reduction of `n` elements is split into (1: no split).
  static int64_t split_chunks(int64_t n) {
    for (int64_t c = 64; c >= 8; --c)
      if (n % c == 0) return c;
    return 1;
  }

  /// A whole-tensor reduction in two kernels: partial results per chunk (in parallel), then the
  /// reduction of the partials.
  void lower_split_reduction(int id, int buf, const std::vector<int64_t>& rdims, int64_t reduce_n) {
    const Node& n = g_.nodes[id];
    const Node& x = g_.nodes[n.inputs[0]];
    int64_t chunks = split_chunks(reduce_n), per = reduce_n / chunks;
    Context& c = ctx();
    // Stage 1: outer loop over chunks, inner loop over a chunk's elements.
    OpenKernel& k1 = new_kernel();
    Expr ci = c.var(chunks), ei = c.var(per);
    prog_.kernels[k1.index].loops.push_back({ci, LoopKind::Serial});
    Expr flat = c.add(c.mul(ci, per), ei);
    Sizes rsizes;
    for (int64_t d : rdims) rsizes.push_back(x.sizes[d]);
    Sizes rst = contiguous_strides(rsizes);
    std::vector<Expr> idx(x.sizes.size(), c.int_const(0));
    for (size_t j = 0; j < rdims.size(); ++j)
      idx[rdims[j]] = c.simplify_index(c.mod(c.div(flat, rst[j]), rsizes[j]));
    cur_ = &k1;
    memo_.clear();
    Expr value = value_at(n.inputs[0], idx, -1);
    cur_ = nullptr;
    Reduction r1 = make_reduction(n, value, next_slot_++, reduce_n);
    int partial = add_buffer({BufferKind::Temp, -1, r1.acc_dtype, {chunks}, {1}});
    r1.out_dtype = r1.acc_dtype;
    k1.levels.push_back({{}, {r1}, {}});
    k1.reduce_loops.push_back({ei, LoopKind::Serial});
    k1.row = true;
    k1.full = {chunks, per};
    k1.rdims = {1};
    k1.idx = {ci, ei};
    k1.row_stores.stores.push_back({partial, ci, c.load(-1 - r1.slot, c.int_const(0), r1.acc_dtype)});
    written_by_[partial] = k1.index;
    prog_.kernels[k1.index].provenance = fmt::format("%{} (partials)", id);
    collect_names(id, k1.index);
    // Stage 2: one iteration folding the partials.
    OpenKernel& k2 = new_kernel();
    Expr pi = c.var(chunks);
    Reduction r2 = r1;
    r2.slot = next_slot_++;
    r2.value = c.load(partial, pi, r1.acc_dtype);
    r2.out_dtype = n.dtype;
    k2.levels.push_back({{}, {r2}, {}});
    k2.reduce_loops.push_back({pi, LoopKind::Serial});
    k2.row = true;
    k2.full = {chunks};
    k2.rdims = {0};
    k2.idx = {pi};
    k2.reductions[id] = {r2.slot, 0};
    k2.row_stores.stores.push_back({buf, c.int_const(0), c.load(-1 - r2.slot, c.int_const(0), n.dtype)});
    written_by_[buf] = k2.index;
    prog_.kernels[k2.index].provenance = fmt::format("%{}", id);
    collect_names(id, k2.index);
    log(fmt::format("%{} ({}) of {} elements splits into {} chunks (kernel {}) and their combination (kernel {})", id,
                    op_name(n.op), reduce_n, chunks, k1.index, k2.index));
  }

  void collect_names(int id, int kidx) {
    auto& names = names_[kidx];
    std::set<int> seen;
    std::function<void(int, bool)> go = [&](int x, bool root) {
      const Node& n = g_.nodes[x];
      if (!seen.insert(x).second) return;
      if (op_category(n.op) == OpCategory::Leaf || (!root && materialized_.count(x))) return;
      for (int in : n.inputs) go(in, false);
      if (op_category(n.op) == OpCategory::Movement) return;
      std::string name = op_name(n.op);
      if (std::find(names.begin(), names.end(), name) == names.end()) names.push_back(name);
    };
    go(id, true);
  }

  /// Assembles phases, names the kernel, collapses loops that stay affine, assigns loop kinds.
  void finish_kernel(OpenKernel& ok) {
    Kernel& k = prog_.kernels[ok.index];
    if (ok.row) {
      if (opts_.reuse_reduced_values) reuse_reduced_values(ok);
      for (auto& lvl : ok.levels) {
        lvl.loops = ok.reduce_loops;
        k.phases.push_back(std::move(lvl));
      }
      if (!ok.full_stores.stores.empty()) {
        ok.full_stores.loops = ok.reduce_loops;
        k.phases.push_back(std::move(ok.full_stores));
      }
      if (!ok.row_stores.stores.empty()) k.phases.push_back(std::move(ok.row_stores));
    }
    std::string name = fmt::format("k{}", ok.index);
    const auto& ops = names_[ok.index];
    for (size_t i = 0; i < ops.size() && i < 5; ++i) name += "_" + ops[i];
    if (ops.empty()) name += "_copy";
    k.name = name;
    collapse(k, k.loops);
    if (ok.row) {
      std::vector<Loop> inner = ok.reduce_loops;
      collapse(k, inner);
      for (auto& ph : k.phases)
        if (!ph.loops.empty()) ph.loops = inner;
      for (auto& ph : k.phases)
        if (!ph.loops.empty()) ph.loops.back().kind = LoopKind::Vectorized;
    }
    bool split = !ok.row && !ok.serial_innermost && !ok.scan && split_at_select_boundaries(k);
    for (auto& l : k.loops) l.kind = LoopKind::Serial;
    if (split) {
      for (auto& ph : k.phases) {
        for (auto& l : ph.loops) l.kind = LoopKind::Serial;
        if (!ph.loops.empty()) ph.loops.back().kind = LoopKind::Vectorized;
      }
    }
    if (ok.scan) {
      if (!k.loops.empty()) k.loops.front().kind = LoopKind::Parallel;
    } else if (ok.serial_innermost) {
      if (k.loops.size() > 1) k.loops.front().kind = LoopKind::Parallel;
    } else if (!k.loops.empty()) {
      if (!ok.row && !split) k.loops.back().kind = LoopKind::Vectorized;
      k.loops.front().kind = LoopKind::Parallel;
    }
  }

  /// Note [Splitting loops at select boundaries]: a concat (or pad, roll, slice_scatter) picks
  /// each element from one of its operands with a select on the index. A select evaluates both
  /// sides, so a concat of 9 pieces loads 9 values per element. When, for each value of one
  /// loop variable, every such condition is decided (the concat boundary falls between its
  /// values, as for a concat along that dim), that loop is cut into ranges: the loops inside it
  /// become one phase per range, where the conditions fold to constants and each element is one
  /// load. The outermost such variable is cut (never loop 0, which is split across threads).
  bool split_at_select_boundaries(Kernel& k) {
    if (k.phases.size() != 1 || !k.phases[0].loops.empty() || !k.phases[0].reductions.empty() || k.loops.size() < 2)
      return false;
    Phase& ph = k.phases[0];
    std::vector<Expr> conds;
    std::set<Expr> seen;
    for (const auto& st : ph.stores)
      visit(st.value, seen, [&](Expr e) {
        if (e->op == ExprOp::Select) conds.push_back(e->a);
      });
    if (conds.empty()) return false;
    constexpr int64_t kMaxExtent = 4096, kMaxRanges = 16;
    for (size_t li = 1; li < k.loops.size(); ++li) {
      Expr v = k.loops[li].var;
      int64_t n = v->ival;
      if (n > kMaxExtent || n < 2) continue;
      std::vector<Expr> mine;
      for (Expr c : conds) {
        std::set<Expr> s2;
        if (contains(c, v, s2)) mine.push_back(c);
      }
      if (mine.empty()) continue;
      // The decided value of every condition for each value of v; a cut where they change.
      std::vector<int64_t> cuts = {0};
      std::vector<int64_t> prev;
      bool decided = true;
      for (int64_t x = 0; x < n && decided; ++x) {
        std::unordered_map<Expr, Expr> sub = {{v, ctx().int_const(x)}};
        std::vector<int64_t> state;
        for (Expr c : mine) {
          Expr r = ctx().substitute(c, sub);
          if (!is_const(r)) {
            decided = false;
            break;
          }
          state.push_back(r->ival);
        }
        if (x > 0 && state != prev) cuts.push_back(x);
        prev = std::move(state);
      }
      if (!decided || cuts.size() < 2 || static_cast<int64_t>(cuts.size()) > kMaxRanges) continue;
      cuts.push_back(n);
      std::vector<Loop> inner(k.loops.begin() + li + 1, k.loops.end());
      std::vector<Phase> phases;
      for (size_t r = 0; r + 1 < cuts.size(); ++r) {
        int64_t len = cuts[r + 1] - cuts[r];
        Expr vr = len == 1 ? ctx().int_const(0) : ctx().var(len);
        std::unordered_map<Expr, Expr> sub = {{v, ctx().add(vr, cuts[r])}};
        Phase p;
        if (len > 1) p.loops.push_back({vr, LoopKind::Serial});
        p.loops.insert(p.loops.end(), inner.begin(), inner.end());
        // (No loops left: the cut loop was the innermost and this range is one value; the
        // phase then stores once per outer iteration.)
        for (const auto& st : ph.stores)
          p.stores.push_back({st.buffer, ctx().simplify_index(ctx().substitute(st.index, sub)), ctx().substitute(st.value, sub)});
        phases.push_back(std::move(p));
      }
      k.loops.resize(li);
      k.phases = std::move(phases);
      log(fmt::format("{}: loop {} cut into {} ranges at its select boundaries (one load per element)", k.name,
                      print_expr(v), cuts.size() - 1));
      return true;
    }
    return false;
  }

  static bool contains(Expr e, Expr part, std::set<Expr>& seen) {
    if (!e || !seen.insert(e).second) return false;
    return e == part || contains(e->a, part, seen) || contains(e->b, part, seen) || contains(e->c, part, seen);
  }

  static bool expensive(Expr e, std::set<Expr>& seen) {
    if (!e || !seen.insert(e).second) return false;
    switch (e->op) {
      case ExprOp::Exp: case ExprOp::Exp2: case ExprOp::Expm1: case ExprOp::Log: case ExprOp::Log2:
      case ExprOp::Log1p: case ExprOp::Tanh: case ExprOp::Erf: case ExprOp::Pow: case ExprOp::Sin:
      case ExprOp::Cos: case ExprOp::Tan:
        return true;
      default:
        return expensive(e->a, seen) || expensive(e->b, seen) || expensive(e->c, seen);
    }
  }

  Expr replace(Expr e, Expr part, Expr with) {
    std::unordered_map<Expr, Expr> memo;
    std::function<Expr(Expr)> go = [&](Expr x) -> Expr {
      if (!x) return x;
      if (x == part) return with;
      auto it = memo.find(x);
      if (it != memo.end()) return it->second;
      Expr r = x;
      Expr a = go(x->a), b = go(x->b), c = go(x->c);
      if (a != x->a || b != x->b || c != x->c) {
        if (x->op == ExprOp::Select) r = ctx().select(a, b, c);
        else if (x->op == ExprOp::Fma) r = ctx().fma(a, b, c);
        else if (x->op == ExprOp::Cast) r = ctx().cast(a, x->dtype);
        else if (x->op == ExprOp::Load) r = ctx().load(static_cast<int>(x->ival), a, x->dtype);
        else if (expr_op_arity(x->op) == 1) r = ctx().unary(x->op, a);
        else r = ctx().binary(x->op, a, b);
      }
      memo[x] = r;
      return r;
    };
    return go(e);
  }

  /// Note [Reusing a reduced value]: softmax's store phase recomputes exp(x - max), which its
  /// sum phase already computed for the same element. When a full-size store's value contains
  /// an expensive reduction value of an earlier phase, that phase also stores the value into
  /// the output (same element, same dtype) and the store phase reads it back from L1, halving
  /// the transcendental work.
  /// Later reduction phases read the kept value too (LayerNorm's variance phase reads the
  /// element its mean phase computed), and a reduction that folds a widened value (LayerNorm's
  /// float64 mean of float32 elements) keeps the element before the cast.
  void reuse_reduced_values(OpenKernel& ok) {
    for (auto& st : ok.full_stores.stores) {
      DType t = prog_.buffers[st.buffer].dtype;
      for (size_t li = 0; li < ok.levels.size(); ++li)
        for (const auto& r : ok.levels[li].reductions) {
          Expr v = r.value;
          if (v->op == ExprOp::Cast && v->a->dtype == t) v = v->a;
          std::set<Expr> s1, s2;
          if (v->dtype != t || !expensive(v, s1) || !contains(st.value, v, s2)) continue;
          if (st.value == v) continue;  // nothing left to compute: the store moves instead
          Expr kept = ctx().load(st.buffer, st.index, t);
          ok.levels[li].stores.push_back({st.buffer, st.index, v});
          st.value = replace(st.value, v, kept);
          for (size_t later = li + 1; later < ok.levels.size(); ++later)
            for (auto& r2 : ok.levels[later].reductions) r2.value = replace(r2.value, v, kept);
          log(fmt::format("kernel {}: buf{} keeps the reduced value of acc{} for the later phases", ok.index,
                          st.buffer, r.slot));
          goto next_store;
        }
    next_store:;
    }
  }

  static int count_divmod(Expr e, std::set<Expr>& seen) {
    if (!e || !seen.insert(e).second) return 0;
    int n = (e->op == ExprOp::Div || e->op == ExprOp::Mod) && e->dtype == DType::Int64 && is_const(e->b) ? 1 : 0;
    return n + count_divmod(e->a, seen) + count_divmod(e->b, seen) + count_divmod(e->c, seen);
  }

  static int divmods(const std::vector<Expr>& es) {
    std::set<Expr> seen;
    int n = 0;
    for (Expr e : es) n += count_divmod(e, seen);
    return n;
  }

  /// Merges adjacent loops of `loops` (outer a, inner b) into one of extent a*b when every
  /// address stays as cheap (no new div/mod): a contiguous [64, 64] becomes one loop of 4096.
  void collapse(Kernel& k, std::vector<Loop>& loops) {
    for (size_t i = 0; i + 1 < loops.size();) {
      Expr a = loops[i].var, b = loops[i + 1].var;
      if (a->ival == 0 || b->ival == 0) {  // an empty loop: nothing to gain, and no div by 0
        ++i;
        continue;
      }
      Expr w = ctx().var(a->ival * b->ival);
      std::unordered_map<Expr, Expr> sub = {{a, ctx().div(w, b->ival)}, {b, ctx().mod(w, b->ival)}};
      Kernel trial = k;
      for (auto& ph : trial.phases) {
        for (auto& r : ph.reductions) {
          r.value = ctx().substitute(r.value, sub);
          if (r.position) r.position = ctx().simplify_index(ctx().substitute(r.position, sub));
        }
        for (auto& s : ph.stores) {
          s.index = ctx().simplify_index(ctx().substitute(s.index, sub));
          s.value = ctx().substitute(s.value, sub);
        }
      }
      if (divmods(trial.exprs()) <= divmods(k.exprs())) {
        k.phases = std::move(trial.phases);
        loops[i] = {w, LoopKind::Serial};
        loops.erase(loops.begin() + i + 1);
      } else {
        ++i;
      }
    }
  }

  const Graph& g_;
  const PassOptions& opts_;
  KernelProgram prog_;
  std::set<int> materialized_;
  std::set<int> shared_;  // materialised values an extern op reads
  std::map<int, std::pair<int, ExternView>> extern_views_;  // value -> (input buffer, view) for externs
  std::map<int, std::pair<int, ExternView>> gemm_views_;    // value -> (value with a buffer, view) for gemms
  std::set<int> gemm_bases_;  // computed values a matrix product reads through a view
  std::map<int, int> output_alias_;  // product -> the output (a reshape of it) whose buffer it writes
  std::set<int> aliased_outputs_;
  std::map<int, std::pair<int, ExternView>> output_views_;  // output -> (leaf, view of it)
  std::map<int, Sizes> value_strides_;  // value -> strides into its buffer, where not the buffer's own
  std::map<int, std::pair<int, int>> inplace_;  // slice_scatter written in place -> (input buffer, leaf)
  std::vector<int> order_;
  std::map<int, int> input_buffer_;  // Input node -> its buffer
  std::map<int, int> buffer_of_;     // materialised node -> the buffer it is stored in
  std::map<int, int> out_buffer_;  // output node -> its output buffer
  std::map<int, int> written_by_;  // buffer -> kernel index
  std::deque<OpenKernel> open_;    // every kernel, in creation order
  OpenKernel* cur_ = nullptr;      // kernel being built into
  std::map<std::pair<int, std::vector<Expr>>, Expr> memo_;
  std::set<int> used_slots_;
  int next_slot_ = 0;
  std::vector<std::vector<std::string>> names_;  // per kernel: the ops it computes
};

}  // namespace

KernelProgram run_lower_to_loops(const Graph& g, const PassOptions& opts) { return Lowering(g, opts).run(); }

}  // namespace kiln::passes
