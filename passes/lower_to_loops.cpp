/// \file lower_to_loops.cpp
/// Graph -> loop IR: materialisation, inlining of pointwise and view chains, kernel grouping,
/// loop ordering and collapsing.
#include "passes/lower_to_loops.h"

#include <fmt/format.h>

#include <algorithm>
#include <functional>
#include <map>
#include <numeric>
#include <set>

#include "support/error.h"

namespace kiln::passes {
using namespace kiln::ir;

namespace {

ExprOp unary_expr_op(OpKind op) {
  switch (op) {
    case OpKind::Neg: return ExprOp::Neg;
    case OpKind::Abs: return ExprOp::Abs;
    case OpKind::Exp: return ExprOp::Exp;
    case OpKind::Exp2: return ExprOp::Exp2;
    case OpKind::Expm1: return ExprOp::Expm1;
    case OpKind::Log: return ExprOp::Log;
    case OpKind::Log2: return ExprOp::Log2;
    case OpKind::Log1p: return ExprOp::Log1p;
    case OpKind::Sqrt: return ExprOp::Sqrt;
    case OpKind::Sin: return ExprOp::Sin;
    case OpKind::Cos: return ExprOp::Cos;
    case OpKind::Tan: return ExprOp::Tan;
    case OpKind::Tanh: return ExprOp::Tanh;
    case OpKind::Erf: return ExprOp::Erf;
    case OpKind::Floor: return ExprOp::Floor;
    case OpKind::Ceil: return ExprOp::Ceil;
    case OpKind::Round: return ExprOp::Round;
    case OpKind::Trunc: return ExprOp::Trunc;
    case OpKind::IsNan: return ExprOp::IsNan;
    default: KILN_UNREACHABLE(std::string("unary op ") + op_name(op));
  }
}

ExprOp binary_expr_op(OpKind op, DType t) {
  switch (op) {
    case OpKind::Add: return ExprOp::Add;
    case OpKind::Sub: return ExprOp::Sub;
    case OpKind::Mul: return ExprOp::Mul;
    case OpKind::Div: return ExprOp::Div;
    case OpKind::FloorDiv: return is_float(t) ? ExprOp::Div : ExprOp::Div;  // refined by the caller
    case OpKind::TruncDiv: return ExprOp::TruncDiv;
    case OpKind::Fmod: return ExprOp::Fmod;
    case OpKind::Remainder: return ExprOp::Mod;
    case OpKind::Pow: return ExprOp::Pow;
    case OpKind::Maximum: return ExprOp::Max;
    case OpKind::Minimum: return ExprOp::Min;
    case OpKind::Eq: return ExprOp::Eq;
    case OpKind::Ne: return ExprOp::Ne;
    case OpKind::Lt: return ExprOp::Lt;
    case OpKind::Le: return ExprOp::Le;
    case OpKind::Gt: return ExprOp::Gt;
    case OpKind::Ge: return ExprOp::Ge;
    case OpKind::LogicalAnd: case OpKind::BitwiseAnd: return ExprOp::And;
    case OpKind::LogicalOr: case OpKind::BitwiseOr: return ExprOp::Or;
    case OpKind::LogicalXor: case OpKind::BitwiseXor: return ExprOp::Xor;
    default: KILN_UNREACHABLE(std::string("binary op ") + op_name(op));
  }
}

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

class Lowering {
 public:
  Lowering(const Graph& g, const PassOptions& opts) : g_(g), opts_(opts) {
    prog_.ctx = std::make_shared<Context>();
  }

  KernelProgram run() {
    for (const Node& n : g_.nodes)
      KILN_UNSUPPORTED_IF(op_category(n.op) == OpCategory::Reduction, "reductions are not lowered yet ({})", op_name(n.op));
    for (const Node& n : g_.nodes)
      KILN_UNSUPPORTED_IF(n.dtype == DType::Float16 || n.dtype == DType::BFloat16,
                          "{} is not supported by the CPU code generator yet", dtype_name(n.dtype));
    make_input_buffers();
    choose_materialized();
    for (int id : order_) build_store(id);
    for (auto& k : prog_.kernels) finish_kernel(k);
    for (int o : g_.outputs) prog_.outputs.push_back({OutputSpec::Kind::Buffer, out_buffer_.at(o)});
    return std::move(prog_);
  }

 private:
  Context& ctx() { return *prog_.ctx; }

  void log(const std::string& s) { prog_.fusion_log.push_back(s); }

  void make_input_buffers() {
    for (size_t i = 0; i < g_.nodes.size(); ++i) {
      const Node& n = g_.nodes[i];
      if (n.op != OpKind::Input) continue;
      buffer_of_[i] = add_buffer({BufferKind::Input, static_cast<int>(n.attrs.int_value), n.dtype, n.sizes, n.strides});
    }
  }

  int add_buffer(Buffer b) {
    prog_.buffers.push_back(std::move(b));
    return static_cast<int>(prog_.buffers.size()) - 1;
  }

  /// Decides which values get a buffer of their own, in topological order.
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
        demand[i] = std::max(demand[i], op_category(un.op) == OpCategory::Movement ? std::max(un.numel(), demand[u]) : un.numel());
      }
    // cost[i]: ops recomputed per element if value i is inlined.
    std::vector<int> cost(n, 0);
    std::set<int> outputs(g_.outputs.begin(), g_.outputs.end());
    for (size_t i = 0; i < n; ++i) {
      const Node& node = g_.nodes[i];
      int c = op_cost(node);
      for (int x : node.inputs) c += materialized_.count(x) ? 0 : cost[x];
      cost[i] = c;
      bool is_out = outputs.count(static_cast<int>(i)) > 0;
      bool leaf = op_category(node.op) == OpCategory::Leaf;
      if (is_out) {
        materialized_.insert(static_cast<int>(i));
        order_.push_back(static_cast<int>(i));
        continue;
      }
      if (!leaf && op_category(node.op) != OpCategory::Movement && demand[i] > node.numel() && cost[i] >= 4) {
        log(fmt::format("materialise %{} ({}): read {}x per element by a broadcasting consumer and costs {} to "
                        "recompute", i, op_name(node.op), demand[i] / std::max<int64_t>(node.numel(), 1), cost[i]));
        materialized_.insert(static_cast<int>(i));
        order_.push_back(static_cast<int>(i));
        cost[i] = 0;
      }
    }
  }

  /// Broadcast `idx` (for sizes `out`) down to an operand of sizes `in`.
  std::vector<Expr> broadcast_index(const std::vector<Expr>& idx, const Sizes& out, const Sizes& in) {
    std::vector<Expr> r(in.size());
    size_t off = out.size() - in.size();
    for (size_t d = 0; d < in.size(); ++d) r[d] = in[d] == 1 ? ctx().int_const(0) : idx[d + off];
    return r;
  }

  Expr linear_index(const std::vector<Expr>& idx, const Sizes& strides) {
    Expr e = ctx().int_const(0);
    for (size_t d = 0; d < idx.size(); ++d) e = ctx().add(e, ctx().mul(idx[d], strides[d]));
    return ctx().simplify_index(e);
  }

  /// The value of node `id` at index `idx`, with everything not materialised inlined.
  Expr value_at(int id, const std::vector<Expr>& idx, int current) {
    auto key = std::make_pair(id, idx);
    auto it = memo_.find(key);
    if (it != memo_.end()) return it->second;
    const Node& n = g_.nodes[id];
    Expr r;
    auto buf = buffer_of_.find(id);
    bool same_kernel = buf != buffer_of_.end() && written_by_.count(buf->second) &&
                       written_by_[buf->second] == current_kernel_;
    if (id != current && buf != buffer_of_.end() && !same_kernel) {
      const Buffer& b = prog_.buffers[buffer_of_[id]];
      r = ctx().load(buffer_of_[id], linear_index(idx, b.strides), n.dtype);
      reads_.insert(buffer_of_[id]);
    } else {
      r = compute(n, idx, current);
    }
    memo_.emplace(std::move(key), r);
    return r;
  }

  Expr operand(const Node& n, int k, const std::vector<Expr>& idx, int current) {
    const Node& in = g_.nodes[n.inputs[k]];
    return value_at(n.inputs[k], broadcast_index(idx, n.sizes, in.sizes), current);
  }

  Expr compute(const Node& n, const std::vector<Expr>& idx, int current) {
    Context& c = ctx();
    switch (op_category(n.op)) {
      case OpCategory::Leaf:
        KILN_CHECK(n.op == OpKind::Constant, "input %{} without a buffer", n.attrs.int_value);
        return is_float(n.dtype) ? c.float_const(n.attrs.float_value, n.dtype) : c.int_const(n.attrs.int_value, n.dtype);
      case OpCategory::Cast:
        return c.cast(operand(n, 0, idx, current), n.dtype);
      case OpCategory::Unary: {
        Expr x = operand(n, 0, idx, current);
        DType t = x->dtype;
        switch (n.op) {
          case OpKind::Rsqrt: return c.binary(ExprOp::Div, c.float_const(1.0, t), c.unary(ExprOp::Sqrt, x));
          case OpKind::Reciprocal: return c.binary(ExprOp::Div, c.float_const(1.0, t), x);
          case OpKind::Sigmoid:
            // 1 / (1 + exp(-x)): exact limits at +-inf, no NaN from inf/inf.
            return c.binary(ExprOp::Div, c.float_const(1.0, t),
                            c.binary(ExprOp::Add, c.float_const(1.0, t), c.unary(ExprOp::Exp, c.unary(ExprOp::Neg, x))));
          case OpKind::LogicalNot:
            return t == DType::Bool ? c.unary(ExprOp::Not, x) : c.binary(ExprOp::Eq, x, zero(t));
          case OpKind::BitwiseNot:
            return t == DType::Bool ? c.unary(ExprOp::Not, x) : c.unary(ExprOp::BitNot, x);
          case OpKind::Sign: {
            // (0 < x) - (x < 0), in x's dtype; bool: x itself.
            if (t == DType::Bool) return x;
            Expr pos = c.cast(c.binary(ExprOp::Lt, zero(t), x), t);
            Expr neg = c.cast(c.binary(ExprOp::Lt, x, zero(t)), t);
            return c.binary(ExprOp::Sub, pos, neg);
          }
          case OpKind::IsNan:
            return is_float(t) ? c.unary(ExprOp::IsNan, x) : c.bool_const(false);
          case OpKind::Abs:
            return t == DType::Bool ? x : c.unary(ExprOp::Abs, x);
          default:
            return c.unary(unary_expr_op(n.op), x);
        }
      }
      case OpCategory::Binary: {
        Expr a = operand(n, 0, idx, current), b = operand(n, 1, idx, current);
        DType t = a->dtype;
        if (n.op == OpKind::FloorDiv) {
          if (!is_float(t)) return c.binary(ExprOp::Div, a, b);
          return floor_divide_float(a, b);
        }
        if (n.op == OpKind::TruncDiv && is_float(t)) return c.unary(ExprOp::Trunc, c.binary(ExprOp::Div, a, b));
        if (n.op == OpKind::Remainder && is_float(t)) {
          // torch: m = fmod(a, b); m != 0 and sign(m) != sign(b) ? m + b : m
          Expr m = c.binary(ExprOp::Fmod, a, b);
          Expr fix = c.binary(ExprOp::And, c.binary(ExprOp::Ne, m, zero(t)),
                              c.binary(ExprOp::Ne, c.binary(ExprOp::Lt, b, zero(t)), c.binary(ExprOp::Lt, m, zero(t))));
          return c.select(fix, c.binary(ExprOp::Add, m, b), m);
        }
        if (n.op == OpKind::Pow) return power(a, b);
        return c.binary(binary_expr_op(n.op, t), a, b);
      }
      case OpCategory::Ternary:
        return c.select(operand(n, 0, idx, current), operand(n, 1, idx, current), operand(n, 2, idx, current));
      case OpCategory::Movement:
        return value_at(n.inputs[0], view_source_index(n, idx), current);
      default:
        KILN_UNREACHABLE(std::string("cannot lower ") + op_name(n.op));
    }
  }

  Expr zero(DType t) { return is_float(t) ? ctx().float_const(0, t) : ctx().int_const(0, t); }

  // torch's div_floor for floating point: exact when a/b is an exact integer, matches Python.
  Expr floor_divide_float(Expr a, Expr b) {
    Context& c = ctx();
    DType t = a->dtype;
    Expr mod = c.binary(ExprOp::Fmod, a, b);
    Expr div = c.binary(ExprOp::Div, c.binary(ExprOp::Sub, a, mod), b);
    Expr adjust = c.binary(ExprOp::And, c.binary(ExprOp::Ne, mod, zero(t)),
                           c.binary(ExprOp::Ne, c.binary(ExprOp::Lt, b, zero(t)), c.binary(ExprOp::Lt, mod, zero(t))));
    div = c.select(adjust, c.binary(ExprOp::Sub, div, c.float_const(1.0, t)), div);
    Expr floordiv = c.unary(ExprOp::Floor, div);
    Expr rounded = c.select(c.binary(ExprOp::Gt, c.binary(ExprOp::Sub, div, floordiv), c.float_const(0.5, t)),
                            c.binary(ExprOp::Add, floordiv, c.float_const(1.0, t)), floordiv);
    // div == 0: a signed zero with the sign of a / b. b == 0: a / b (inf or nan), as torch.
    Expr q = c.binary(ExprOp::Div, a, b);
    Expr signed_zero = c.binary(ExprOp::Mul, c.float_const(0.0, t), q);
    Expr r = c.select(c.binary(ExprOp::Eq, div, zero(t)), signed_zero, rounded);
    return c.select(c.binary(ExprOp::Eq, b, zero(t)), q, r);
  }

  /// pow with torch's special cases for constant exponents (x*x, sqrt, reciprocal, ...), which
  /// torch itself takes, so results match bit for bit.
  Expr power(Expr a, Expr b) {
    Context& c = ctx();
    DType t = a->dtype;
    if (is_const(b)) {
      double e = is_float(t) ? b->fval : static_cast<double>(b->ival);
      if (is_float(t)) {
        Expr one = c.float_const(1.0, t);
        if (e == 1) return a;
        if (e == 2) return c.binary(ExprOp::Mul, a, a);
        if (e == 3) return c.binary(ExprOp::Mul, c.binary(ExprOp::Mul, a, a), a);
        if (e == 0.5) return c.unary(ExprOp::Sqrt, a);
        if (e == -0.5) return c.binary(ExprOp::Div, one, c.unary(ExprOp::Sqrt, a));
        if (e == -1) return c.binary(ExprOp::Div, one, a);
        if (e == -2) return c.binary(ExprOp::Div, one, c.binary(ExprOp::Mul, a, a));
      } else {
        KILN_UNSUPPORTED_IF(e < 0 || e > 64 || t == DType::Bool, "integer pow with exponent {}", e);
        Expr r = c.int_const(1, t);
        for (int k = 0; k < static_cast<int>(e); ++k) r = c.binary(ExprOp::Mul, r, a);
        return r;
      }
    }
    KILN_UNSUPPORTED_IF(!is_float(t), "integer pow with a tensor exponent");
    return c.binary(ExprOp::Pow, a, b);
  }

  /// Index into a view's source for index `idx` of the view.
  std::vector<Expr> view_source_index(const Node& n, const std::vector<Expr>& idx) {
    Context& c = ctx();
    const Node& src = g_.nodes[n.inputs[0]];
    const auto& a = n.attrs.ints;
    switch (n.op) {
      case OpKind::Permute: {
        std::vector<Expr> r(idx.size());
        for (size_t i = 0; i < idx.size(); ++i) r[a[i]] = idx[i];
        return r;
      }
      case OpKind::Expand:
        return broadcast_index(idx, n.sizes, src.sizes);
      case OpKind::Slice: {
        std::vector<Expr> r(idx);
        r[a[0]] = c.add(c.mul(idx[a[0]], a[3]), a[1]);
        return r;
      }
      case OpKind::Reshape: {
        Expr lin = linear_index(idx, contiguous_strides(n.sizes));
        Sizes st = contiguous_strides(src.sizes);
        std::vector<Expr> r(src.sizes.size());
        for (size_t d = 0; d < r.size(); ++d)
          r[d] = src.sizes[d] == 1 ? c.int_const(0) : c.simplify_index(c.mod(c.div(lin, st[d]), src.sizes[d]));
        return r;
      }
      default:
        KILN_UNREACHABLE("not a view");
    }
  }

  /// Emits the store of materialised value `id` into the kernel of its iteration domain (a new
  /// one if none is open). Values that kernel already stores are recomputed inline rather than
  /// loaded back (hash-consing makes the recomputation the very same expression, computed once).
  void build_store(int id) {
    const Node& n = g_.nodes[id];
    bool dense = false;
    std::vector<int> order = loop_order(n, &dense);
    Sizes strides = dense ? n.strides : contiguous_strides(n.sizes);
    auto out_it = std::find(g_.outputs.begin(), g_.outputs.end(), id);
    bool is_output = out_it != g_.outputs.end();
    int buf = add_buffer({is_output ? BufferKind::Output : BufferKind::Temp,
                          is_output ? static_cast<int>(out_it - g_.outputs.begin()) : -1, n.dtype, n.sizes, strides});
    if (is_output) out_buffer_[id] = buf;
    if (n.numel() == 0) {  // nothing to compute; the buffer is allocated empty
      buffer_of_[id] = buf;
      return;
    }
    std::vector<int64_t> domain;
    for (int d : order) domain.push_back(n.sizes[d]);
    auto key = std::make_pair(domain, order);
    auto kit = open_kernels_.find(key);
    std::vector<Expr> idx(n.sizes.size());
    int kidx;
    if (kit != open_kernels_.end()) {
      kidx = kit->second;
      const auto& loops = prog_.kernels[kidx].loops;
      for (size_t k = 0, l = 0; k < order.size(); ++k)
        idx[order[k]] = n.sizes[order[k]] == 1 ? ctx().int_const(0) : loops[l++].var;
      log(fmt::format("%{} ({}) fuses into kernel {}: same iteration domain", id, op_name(n.op), kidx));
    } else {
      Kernel k;
      for (int d : order) {
        if (n.sizes[d] == 1) {
          idx[d] = ctx().int_const(0);
          continue;
        }
        idx[d] = ctx().var(n.sizes[d]);
        k.loops.push_back({idx[d], LoopKind::Serial});
      }
      prog_.kernels.push_back(std::move(k));
      names_.emplace_back();
      kidx = static_cast<int>(prog_.kernels.size()) - 1;
      open_kernels_[key] = kidx;
    }
    current_kernel_ = kidx;
    memo_.clear();
    Expr value = value_at(id, idx, id);
    Kernel& k = prog_.kernels[kidx];
    k.stores.push_back({buf, linear_index(idx, strides), value});
    k.provenance += fmt::format("{}%{}", k.provenance.empty() ? "" : " ", id);
    collect_names(id, kidx);
    written_by_[buf] = kidx;
    buffer_of_[id] = buf;
  }

  void collect_names(int id, int kidx) {
    auto& names = names_[kidx];
    std::function<void(int)> go = [&](int x) {
      const Node& n = g_.nodes[x];
      if (op_category(n.op) == OpCategory::Leaf || (x != id && materialized_.count(x))) return;
      for (int in : n.inputs) go(in);
      if (op_category(n.op) == OpCategory::Movement) return;
      std::string name = op_name(n.op);
      if (std::find(names.begin(), names.end(), name) == names.end()) names.push_back(name);
    };
    go(id);
  }

  /// Names the kernel, collapses loops that stay affine, and assigns loop kinds.
  void finish_kernel(Kernel& k) {
    size_t kidx = &k - prog_.kernels.data();
    std::string name = fmt::format("k{}", kidx);
    const auto& ops = names_[kidx];
    for (size_t i = 0; i < ops.size() && i < 5; ++i) name += "_" + ops[i];
    if (ops.empty()) name += "_copy";
    k.name = name;
    collapse_loops(k);
    for (auto& l : k.loops) l.kind = LoopKind::Serial;
    if (!k.loops.empty()) {
      k.loops.back().kind = LoopKind::Vectorized;
      k.loops.front().kind = LoopKind::Parallel;
    }
  }

  static int count_divmod(Expr e, std::set<Expr>& seen) {
    if (!e || !seen.insert(e).second) return 0;
    int n = (e->op == ExprOp::Div || e->op == ExprOp::Mod) && e->dtype == DType::Int64 ? 1 : 0;
    return n + count_divmod(e->a, seen) + count_divmod(e->b, seen) + count_divmod(e->c, seen);
  }

  int kernel_divmods(const Kernel& k) {
    std::set<Expr> seen;
    int n = 0;
    for (const auto& s : k.stores) n += count_divmod(s.index, seen) + count_divmod(s.value, seen);
    return n;
  }

  /// Merges adjacent loops (outer a, inner b) into one of extent a*b when every address stays
  /// as cheap (no new div/mod): a contiguous [64, 64] becomes one loop of 4096.
  void collapse_loops(Kernel& k) {
    for (size_t i = 0; i + 1 < k.loops.size();) {
      Expr a = k.loops[i].var, b = k.loops[i + 1].var;
      Expr w = ctx().var(a->ival * b->ival);
      std::unordered_map<Expr, Expr> sub = {{a, ctx().div(w, b->ival)}, {b, ctx().mod(w, b->ival)}};
      std::vector<Store> stores;
      for (const auto& s : k.stores)
        stores.push_back({s.buffer, ctx().simplify_index(ctx().substitute(s.index, sub)), ctx().substitute(s.value, sub)});
      Kernel trial = k;
      trial.stores = stores;
      if (kernel_divmods(trial) <= kernel_divmods(k)) {
        k.stores = std::move(stores);
        k.loops[i] = {w, LoopKind::Serial};
        k.loops.erase(k.loops.begin() + i + 1);
      } else {
        ++i;
      }
    }
  }

  const Graph& g_;
  const PassOptions& opts_;
  KernelProgram prog_;
  std::set<int> materialized_;
  std::vector<int> order_;
  std::map<int, int> buffer_of_;   // node -> buffer holding its value
  std::map<int, int> out_buffer_;  // output node -> its output buffer
  std::map<int, int> written_by_;  // buffer -> kernel index
  std::map<std::pair<std::vector<int64_t>, std::vector<int>>, int> open_kernels_;
  std::map<std::pair<int, std::vector<Expr>>, Expr> memo_;
  std::set<int> reads_;
  int current_kernel_ = -1;
  std::vector<std::vector<std::string>> names_;  // per kernel: the ops it computes
};

}  // namespace

KernelProgram run_lower_to_loops(const Graph& g, const PassOptions& opts) {
  KernelProgram p = Lowering(g, opts).run();
  if (opts.log_fusion)
    for (const auto& line : p.fusion_log) fmt::print(stderr, "[kiln fusion] {}\n", line);
  if (opts.dump) {
    std::string text;
    for (const auto& line : p.fusion_log) text += line + "\n";
    opts.dump("fusion.txt", text);
    opts.dump("loop_ir.txt", print(p));
  }
  return p;
}

}  // namespace kiln::passes
