/// \file kernel_template.cpp
/// Kernel templates: building one from two lowerings, matching a lowering against one.
///
/// Note [Kernel templates]
/// A function whose sizes change should not need LLVM per size. Its graph at any size is known
/// (runtime/dynamic_program.h: the graph template), and the passes are cheap (well under a
/// millisecond for a transformer block): LLVM is what costs. So kiln compiles machine code once,
/// from a template, and reuses it for every size whose lowering matches the template:
///
/// 1. Building. The graph is lowered at the two captured sizes. Where the two kernel programs
///    have one structure -- the same steps, buffers, products and outputs up to their sizes, and
///    kernels that differ only in integer or float constants and loop counts -- those constants
///    and counts become parameters (one slot per pair of values) of a copy of the second
///    lowering: a loop `for i in 0..p3`, an index `i * p1 + j`, a mean's `x * p2`. A constant
///    that is the same in both stays one, also where it is a size that happened not to change
///    (a clamp that both sizes hit): that only makes fewer sizes match.
/// 2. Matching. At a new size the graph is lowered again (the passes, not LLVM) and walked
///    together with the template: the same expression nodes, loads of the same buffers, the
///    same constants where the template has constants, and one value per parameter throughout.
///    The parameters' values are read from the lowering itself, so nothing about them is
///    assumed (no affine fit, no range).
///
/// Why a match is right: with those values the template's kernels *are* the lowering's kernels
/// at that size, node for node, and the code generator decides nothing from a parameter's value
/// (it is a runtime value there: a loop bound, an operand). Every decision the passes took from
/// sizes -- a div/mod a variable's range removed, a clamp or a comparison folded, a loop split
/// at a concat's boundary, float64 accumulation for a long sum -- is part of the structure that
/// matched, so it was taken at that size too. A size whose lowering differs (a fold that holds
/// at one size and not another) simply does not match, and gets code of its own.
///
/// Expression nodes are hash-consed, and index sums order their terms by `ExprNode::shape`,
/// which leaves integer constants' values out, so lowerings at different sizes build the same
/// sums in the same order.
#include "ir/kernel_template.h"

#include <fmt/format.h>

#include <cstring>
#include <map>
#include <tuple>
#include <utility>

#include "support/hash.h"

namespace kiln::ir {

int64_t float_param_bits(double v) { return static_cast<int64_t>(hash_double(v)); }  // its bits

double float_param_value(int64_t bits) {
  double v;
  std::memcpy(&v, &bits, sizeof v);
  return v;
}

namespace {

/// A constant as a parameter would carry it, or nothing for a dtype parameters do not carry.
bool param_bits(Expr e, int64_t* bits) {
  if (e->dtype == DType::Int64) {
    *bits = e->ival;
    return true;
  }
  if (is_float(e->dtype)) {
    *bits = float_param_bits(e->fval);
    return true;
  }
  return false;
}

/// Empty when `a` and `b` have one structure outside their kernels.
std::string program_shape_difference(const KernelProgram& a, const KernelProgram& b) {
  if (!a.externs.empty() || !b.externs.empty())
    return "the program runs fallback ops (their arguments were captured at one size)";
  if (a.buffers.size() != b.buffers.size() || a.kernels.size() != b.kernels.size() ||
      a.gemms.size() != b.gemms.size() || a.steps.size() != b.steps.size() || a.outputs.size() != b.outputs.size())
    return "the lowering makes other steps at other sizes";
  for (size_t i = 0; i < a.steps.size(); ++i)
    if (a.steps[i].kind != b.steps[i].kind || a.steps[i].index != b.steps[i].index)
      return "the lowering orders its steps differently at other sizes";
  for (size_t i = 0; i < a.buffers.size(); ++i) {
    const auto &x = a.buffers[i], &y = b.buffers[i];
    if (x.kind != y.kind || x.index != y.index || x.dtype != y.dtype || x.sizes.size() != y.sizes.size())
      return fmt::format("buffer {} differs at other sizes", i);
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

/// Whether two nodes agree in everything but their operands (and, for constants, values).
bool same_node(Expr x, Expr y) {
  if (x->op != y->op || x->dtype != y->dtype) return false;
  if (x->op == ExprOp::Var || x->op == ExprOp::Const) return true;  // compared by the callers
  return x->ival == y->ival && std::memcmp(&x->fval, &y->fval, sizeof(double)) == 0;
}

/// Records that loop variable `x` corresponds to `y`; false when `x` already corresponds to
/// another.
bool pair_vars(std::map<Expr, Expr>& vars, Expr x, Expr y) { return vars.emplace(x, y).first->second == y; }

/// Walks two kernels together: loops, phases, reductions and stores must correspond; each pair
/// of expressions goes to `pair` (which compares or rebuilds them), each pair of loops to `loop`.
template <class LoopFn, class ExprFn>
std::string walk_kernels(const Kernel& t, const Kernel& p, LoopFn&& loop, ExprFn&& pair) {
  auto loops = [&](const std::vector<Loop>& x, const std::vector<Loop>& y, bool outer) -> std::string {
    if (x.size() != y.size()) return "another loop nest";
    for (size_t i = 0; i < x.size(); ++i) {
      if (x[i].kind != y[i].kind) return "another loop kind";
      std::string why = loop(x[i], y[i], outer && i == 0);
      if (!why.empty()) return why;
    }
    return "";
  };
  std::string why = loops(t.loops, p.loops, true);
  if (!why.empty() || t.phases.size() != p.phases.size()) return why.empty() ? "other phases" : why;
  for (size_t i = 0; i < t.phases.size(); ++i) {
    const Phase &x = t.phases[i], &y = p.phases[i];
    if (!(why = loops(x.loops, y.loops, false)).empty()) return why;
    if (x.reductions.size() != y.reductions.size() || x.stores.size() != y.stores.size()) return "other reductions or stores";
    for (size_t r = 0; r < x.reductions.size(); ++r) {
      const Reduction &u = x.reductions[r], &v = y.reductions[r];
      if (u.op != v.op || u.acc_dtype != v.acc_dtype || u.out_dtype != v.out_dtype || u.slot != v.slot ||
          u.running != v.running || !u.position != !v.position)
        return "another reduction";
      if (!(why = pair(u.value, v.value)).empty()) return why;
      if (u.position && !(why = pair(u.position, v.position)).empty()) return why;
    }
    for (size_t s = 0; s < x.stores.size(); ++s) {
      if (x.stores[s].buffer != y.stores[s].buffer) return "a store to another buffer";
      if (!(why = pair(x.stores[s].index, y.stores[s].index)).empty()) return why;
      if (!(why = pair(x.stores[s].value, y.stores[s].value)).empty()) return why;
    }
  }
  return "";
}

/// Rebuilds `b`'s kernels with the constants and loop counts that differ from `a`'s as
/// parameters.
class TemplateBuilder {
 public:
  TemplateBuilder(Context& ctx, std::vector<KernelTemplate::ParamInfo>& params) : ctx_(ctx), params_(params) {}

  /// `a`'s and `b`'s kernel: the template kernel in `out`, or the difference.
  std::string kernel(const Kernel& a, const Kernel& b, Kernel* out) {
    *out = b;
    // The rebuilt kernel's loops and expressions, in walk order (the walk visits `b` in order).
    std::vector<Loop*> out_loops;
    for (auto& l : out->loops) out_loops.push_back(&l);
    for (auto& ph : out->phases)
      for (auto& l : ph.loops) out_loops.push_back(&l);
    std::vector<Expr*> out_exprs;
    for (auto& ph : out->phases) {
      for (auto& r : ph.reductions) {
        out_exprs.push_back(&r.value);
        if (r.position) out_exprs.push_back(&r.position);
      }
      for (auto& s : ph.stores) {
        out_exprs.push_back(&s.index);
        out_exprs.push_back(&s.value);
      }
    }
    size_t next_loop = 0, next_expr = 0;
    return walk_kernels(
        b, a,
        [&](const Loop& x, const Loop& y, bool outermost) -> std::string {
          if (!pair_vars(vars_, x.var, y.var)) return "a loop variable reused";
          Loop* l = out_loops[next_loop++];
          // The outer loop's count comes from the instance (the runtime splits it across threads).
          if (!outermost && x.var->ival != y.var->ival) l->extent_param = slot(DType::Int64, x.var->ival, y.var->ival);
          return "";
        },
        [&](Expr x, Expr y) -> std::string {
          Expr r = go(x, y);
          if (!r) return why_;
          *out_exprs[next_expr++] = r;
          return "";
        });
  }

 private:
  int slot(DType t, int64_t in_b, int64_t in_a) {
    auto key = std::make_tuple(t, in_b, in_a);
    auto it = slots_.find(key);
    if (it != slots_.end()) return it->second;
    params_.push_back({t, {in_a, in_b}});
    return slots_[key] = static_cast<int>(params_.size()) - 1;
  }

  /// `x` (of `b`) with the constants that differ in `y` (of `a`) as parameters; null on a
  /// structural difference.
  Expr go(Expr x, Expr y) {
    auto key = std::make_pair(x, y);
    auto it = memo_.find(key);
    if (it != memo_.end()) return it->second;
    Expr r = nullptr;
    if (!same_node(x, y)) {
      why_ = fmt::format("`{}` is `{}` at the other size", print_expr(x), print_expr(y));
    } else if (x->op == ExprOp::Const) {
      int64_t bx, by;
      if (param_bits(x, &bx) && param_bits(y, &by)) {
        r = bx == by ? x : ctx_.param(slot(x->dtype, bx, by), x->dtype);
      } else if (x->ival == y->ival) {
        r = x;
      } else {
        why_ = fmt::format("the {} constant {} is {} at the other size", dtype_name(x->dtype), x->ival, y->ival);
      }
    } else if (x->op == ExprOp::Var) {
      auto v = vars_.find(x);
      if (v != vars_.end() && v->second == y) r = x;
      else why_ = "a loop variable used in another loop";
    } else {
      Expr ops[3] = {nullptr, nullptr, nullptr};
      r = x;
      for (int i = 0; i < expr_op_arity(x->op) && r; ++i)
        if (!(ops[i] = go(x->operand(i), y->operand(i)))) r = nullptr;
      if (r) r = ctx_.with_operands(x, ops[0], ops[1], ops[2]);
    }
    memo_[key] = r;
    return r;
  }

  Context& ctx_;
  std::vector<KernelTemplate::ParamInfo>& params_;
  std::map<std::tuple<DType, int64_t, int64_t>, int> slots_;
  std::map<std::pair<Expr, Expr>, Expr> memo_;
  std::map<Expr, Expr> vars_;
  std::string why_;
};

/// Walks a template kernel and a lowering's kernel together, reading the parameters' values.
class TemplateMatcher {
 public:
  explicit TemplateMatcher(const KernelTemplate& t) : values_(t.params.size()), set_(t.params.size(), false) {}

  std::string kernel(const Kernel& t, const Kernel& p) {
    return walk_kernels(
        t, p,
        [&](const Loop& x, const Loop& y, bool outermost) -> std::string {
          if (!pair_vars(vars_, x.var, y.var)) return "a loop variable reused";
          if (x.extent_param >= 0) return assign(x.extent_param, y.var->ival);
          if (!outermost && x.var->ival != y.var->ival)
            return fmt::format("a loop runs {} times, not {}", y.var->ival, x.var->ival);
          return "";
        },
        [&](Expr x, Expr y) { return go(x, y) ? "" : why_; });
  }

  std::string finish(std::vector<int64_t>* params) {
    for (size_t i = 0; i < set_.size(); ++i)
      if (!set_[i]) return fmt::format("parameter p{} is not used", i);
    *params = std::move(values_);
    return "";
  }

 private:
  std::string assign(int slot, int64_t v) {
    auto i = static_cast<size_t>(slot);
    if (set_[i] && values_[i] != v) return fmt::format("parameter p{} would be both {} and {}", slot, values_[i], v);
    values_[i] = v;
    set_[i] = true;
    return "";
  }

  bool go(Expr x, Expr y) {
    auto key = std::make_pair(x, y);
    auto it = memo_.find(key);
    if (it != memo_.end()) return it->second;
    bool ok = false;
    if (x->op == ExprOp::Param) {
      int64_t bits;
      if (y->op == ExprOp::Const && y->dtype == x->dtype && param_bits(y, &bits)) {
        why_ = assign(static_cast<int>(x->ival), bits);
        ok = why_.empty();
      } else {
        why_ = fmt::format("`{}` where the template has a parameter", print_expr(y));
      }
    } else if (!same_node(x, y)) {
      why_ = fmt::format("`{}` where the template has `{}`", print_expr(y), print_expr(x));
    } else if (x->op == ExprOp::Const) {
      ok = x->ival == y->ival && std::memcmp(&x->fval, &y->fval, sizeof(double)) == 0;
      if (!ok) why_ = fmt::format("the constant {} where the template has {}", print_expr(y), print_expr(x));
    } else if (x->op == ExprOp::Var) {
      auto v = vars_.find(x);
      ok = v != vars_.end() && v->second == y;
      if (!ok) why_ = "a loop variable used in another loop";
    } else {
      ok = true;
      for (int i = 0; i < expr_op_arity(x->op) && ok; ++i) ok = go(x->operand(i), y->operand(i));
    }
    memo_[key] = ok;
    return ok;
  }

  std::vector<int64_t> values_;
  std::vector<bool> set_;
  std::map<std::pair<Expr, Expr>, bool> memo_;
  std::map<Expr, Expr> vars_;
  std::string why_;
};

}  // namespace

std::string make_kernel_template(const KernelProgram& a, const KernelProgram& b, KernelTemplate* out) {
  std::string why = program_shape_difference(a, b);
  if (!why.empty()) return why;
  KernelTemplate t;
  t.program = b;
  TemplateBuilder builder(*t.program.ctx, t.params);
  for (size_t i = 0; i < a.kernels.size(); ++i) {
    why = builder.kernel(a.kernels[i], b.kernels[i], &t.program.kernels[i]);
    if (!why.empty()) return fmt::format("kernel {}: {}", b.kernels[i].name, why);
  }
  t.program.param_count = static_cast<int>(t.params.size());
  *out = std::move(t);
  return "";
}

std::string match_kernel_template(const KernelTemplate& t, const KernelProgram& p, std::vector<int64_t>* params) {
  std::string why = program_shape_difference(t.program, p);
  if (!why.empty()) return why;
  TemplateMatcher m(t);
  for (size_t i = 0; i < p.kernels.size(); ++i) {
    why = m.kernel(t.program.kernels[i], p.kernels[i]);
    if (!why.empty()) return fmt::format("kernel {}: {}", p.kernels[i].name, why);
  }
  return m.finish(params);
}

}  // namespace kiln::ir
