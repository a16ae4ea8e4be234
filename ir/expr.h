/// \file expr.h
/// Loop-IR scalar expressions: immutable, hash-consed in a per-compilation Context, so equal
/// expressions are pointer-equal and common subexpressions are shared for free.
///
/// Index arithmetic (int64 Add/Mul/Div/Mod over loop variables) is simplified as it is built:
/// constants fold, identities vanish, and div/mod that a variable's range makes trivial
/// disappear (see simplify_index). That keeps view addressing (permute, slice, reshape,
/// broadcast) as cheap as hand-written strides.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "ir/dtype.h"

namespace kiln::ir {

enum class ExprOp : uint8_t {
#define KILN_EXPR(e, n, a) e,
#include "ir/expr_ops.def"
#undef KILN_EXPR
};
const char* expr_op_name(ExprOp op);
int expr_op_arity(ExprOp op);

struct ExprNode;
using Expr = const ExprNode*;

struct ExprNode {
  ExprOp op;
  DType dtype;
  Expr a = nullptr, b = nullptr, c = nullptr;
  int64_t ival = 0;   ///< Const (integral/bool) value; Var extent; Load buffer id; Param slot
  double fval = 0;    ///< Const (floating) value
  int var_id = -1;    ///< Var identity (its name is only a printing hint)
  uint64_t hash = 0;  ///< structural hash, stable across runs
  /// The hash without integer constants' values: the order of index terms, so that lowerings
  /// of one graph at different sizes order their terms alike (ir/kernel_template.h).
  uint64_t shape = 0;
  Expr operand(int i) const { return i == 0 ? a : i == 1 ? b : c; }
};

/// Owns and interns the expressions of one compilation.
class Context {
 public:
  Expr int_const(int64_t v, DType t = DType::Int64);
  Expr float_const(double v, DType t);
  Expr bool_const(bool v) { return int_const(v ? 1 : 0, DType::Bool); }
  /// A fresh loop variable ranging over [0, extent).
  Expr var(int64_t extent);
  Expr load(int buffer, Expr index, DType t);
  /// A value the runtime passes to the kernel (slot `slot` of its parameters): a kernel
  /// template's size-dependent constant (ir/kernel_template.h).
  Expr param(int slot, DType t);
  /// `x` with other operands, as is: no folding or simplification (rebuilding a kernel with
  /// some constants replaced must keep its structure exactly).
  Expr with_operands(Expr x, Expr a, Expr b, Expr c);
  Expr unary(ExprOp op, Expr a);
  Expr cast(Expr a, DType t);
  /// Binary op; comparisons give Bool, others the operands' dtype (which must agree).
  Expr binary(ExprOp op, Expr a, Expr b);
  Expr select(Expr c, Expr a, Expr b);
  /// a * b + c with one rounding (operands of one float dtype).
  Expr fma(Expr a, Expr b, Expr c);

  /// Index helpers (int64), simplified as they are built.
  Expr add(Expr a, Expr b);
  Expr mul(Expr a, Expr b);
  Expr add(Expr a, int64_t b) { return add(a, int_const(b)); }
  Expr mul(Expr a, int64_t b) { return mul(a, int_const(b)); }
  Expr div(Expr a, int64_t b);
  Expr mod(Expr a, int64_t b);
  /// Replaces variables by expressions everywhere in `e`, re-simplifying index math.
  Expr substitute(Expr e, const std::unordered_map<Expr, Expr>& map);
  /// Canonical linear form of an index expression: merges `(x/c)*(k*c) + (x%c)*k` into `x*k`,
  /// splits div/mod over multiples of the divisor, drops div/mod made trivial by ranges.
  Expr simplify_index(Expr e);

  /// Inclusive bounds of an integer expression from its variables' ranges.
  std::pair<int64_t, int64_t> bounds(Expr e);

 private:
  Expr intern(ExprNode n);
  struct KeyHash {
    size_t operator()(const ExprNode* n) const { return n->hash; }
  };
  struct KeyEq {
    bool operator()(const ExprNode* x, const ExprNode* y) const;
  };
  std::deque<ExprNode> storage_;
  std::unordered_map<const ExprNode*, Expr, KeyHash, KeyEq> table_;
  int next_var_ = 0;
};

bool is_const(Expr e);
bool is_const_int(Expr e, int64_t v);

/// Calls `f` once on every node of the DAG under `e` (expressions share subterms: a walk
/// without the visited set can be exponential).
void visit(Expr e, std::set<Expr>& seen, const std::function<void(Expr)>& f);

/// The coefficient of variable `v` in index expression `e` when `e` is affine in `v`; nullopt
/// when `v` appears under a div, mod, load or a product of variables.
std::optional<int64_t> linear_coefficient(Expr e, Expr v);

/// Every load of a buffer under `e` (not the placeholders through which kernels read their
/// reductions), each once.
std::vector<Expr> buffer_loads(Expr e);

/// Prints an expression. Shared subexpressions print once, as `tN = ...` lines appended to
/// `lets` (indented by `indent`) when it is given, else inline.
std::string print_expr(Expr e, std::string* lets = nullptr, const std::string& indent = "  ");

}  // namespace kiln::ir
