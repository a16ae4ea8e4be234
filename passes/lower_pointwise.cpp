/// \file lower_pointwise.cpp
/// Per-element semantics of pointwise graph ops and index maps of views.
#include "passes/lower_pointwise.h"

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

Expr zero(Context& c, DType t) { return is_float(t) ? c.float_const(0, t) : c.int_const(0, t); }

  // torch's div_floor for floating point: exact when a/b is an exact integer, matches Python.
Expr floor_divide_float(Context& c, Expr a, Expr b) {
    DType t = a->dtype;
    Expr mod = c.binary(ExprOp::Fmod, a, b);
    Expr div = c.binary(ExprOp::Div, c.binary(ExprOp::Sub, a, mod), b);
    Expr adjust = c.binary(ExprOp::And, c.binary(ExprOp::Ne, mod, zero(c, t)),
                           c.binary(ExprOp::Ne, c.binary(ExprOp::Lt, b, zero(c, t)), c.binary(ExprOp::Lt, mod, zero(c, t))));
    div = c.select(adjust, c.binary(ExprOp::Sub, div, c.float_const(1.0, t)), div);
    Expr floordiv = c.unary(ExprOp::Floor, div);
    Expr rounded = c.select(c.binary(ExprOp::Gt, c.binary(ExprOp::Sub, div, floordiv), c.float_const(0.5, t)),
                            c.binary(ExprOp::Add, floordiv, c.float_const(1.0, t)), floordiv);
    // div == 0: a signed zero with the sign of a / b. b == 0: a / b (inf or nan), as torch.
    Expr q = c.binary(ExprOp::Div, a, b);
    Expr signed_zero = c.binary(ExprOp::Mul, c.float_const(0.0, t), q);
    Expr r = c.select(c.binary(ExprOp::Eq, div, zero(c, t)), signed_zero, rounded);
    return c.select(c.binary(ExprOp::Eq, b, zero(c, t)), q, r);
  }


/// Note [Integer pow]: torch's integer pow (powi in ATen's Pow.h) is exponentiation by squaring
/// on the exponent's bits, low bit first, with every product wrapping in the result type; a
/// negative exponent gives 0, except for bases 1 (1) and -1 (-1 for an odd exponent, else 1).
/// Unrolled here over every bit a non-negative exponent of type `t` can have (7 for int8, 63
/// for int64, 8 for uint8): the products are the same ones in the same order, so the wrapped
/// result is eager's bit for bit. A bit past the exponent's top one leaves the result alone.
Expr integer_power(Context& c, Expr a, Expr b) {
  DType t = a->dtype;
  int bits = static_cast<int>(8 * dtype_bytes(t)) - (t == DType::UInt8 ? 0 : 1);
  Expr one = c.int_const(1, t), zero_t = c.int_const(0, t), two = c.int_const(2, t);
  Expr r = one, base = a, e = b;
  for (int k = 0; k < bits; ++k) {
    Expr bit = c.binary(ExprOp::Ne, c.binary(ExprOp::And, e, one), zero_t);
    r = c.select(bit, c.binary(ExprOp::Mul, r, base), r);
    if (k + 1 == bits) break;
    e = c.binary(ExprOp::TruncDiv, e, two);
    base = c.binary(ExprOp::Mul, base, base);
  }
  if (t == DType::UInt8) return r;
  Expr odd = c.binary(ExprOp::Ne, c.binary(ExprOp::And, b, one), zero_t);
  Expr minus_one = c.int_const(-1, t);
  Expr negative = c.select(c.binary(ExprOp::Eq, a, one), one,
                           c.select(c.binary(ExprOp::Eq, a, minus_one), c.select(odd, minus_one, one), zero_t));
  return c.select(c.binary(ExprOp::Lt, b, zero_t), negative, r);
}

  /// pow with torch's special cases for constant exponents (x*x, sqrt, reciprocal, ...), which
  /// torch itself takes, so results match bit for bit.
Expr power(Context& c, Expr a, Expr b) {
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
        KILN_UNSUPPORTED_IF(t == DType::Bool, "integer pow of bools");
        if (e < 0 || e > 64) return integer_power(c, a, b);
        Expr r = c.int_const(1, t);
        for (int k = 0; k < static_cast<int>(e); ++k) r = c.binary(ExprOp::Mul, r, a);
        return r;
      }
    }
    if (!is_float(t)) {
      KILN_UNSUPPORTED_IF(t == DType::Bool, "integer pow of bools");
      return integer_power(c, a, b);
    }
    return c.binary(ExprOp::Pow, a, b);
  }


}  // namespace

Expr linear_index(Context& c, const std::vector<Expr>& idx, const Sizes& strides) {
  Expr e = c.int_const(0);
  for (size_t d = 0; d < idx.size(); ++d) e = c.add(e, c.mul(idx[d], strides[d]));
  return c.simplify_index(e);
}

namespace {
Expr lower_pointwise_op(Context& c, const Node& n, const std::vector<Expr>& ops);

/// Ops whose CUDA kernels take a Python number operand in the tensor's half type (rounded)
/// rather than in float32 (add, sub, mul, div, floor division, maximum and minimum keep it exact).
bool rounds_number_operand(OpKind op) {
  switch (op) {
    case OpKind::Fmod: case OpKind::Remainder: case OpKind::Pow:
    case OpKind::Eq: case OpKind::Ne: case OpKind::Lt: case OpKind::Le: case OpKind::Gt: case OpKind::Ge:
      return true;
    default:
      return false;
  }
}
}  // namespace

// Note [Half arithmetic]: PyTorch computes a float16/bfloat16 op in float32 (its "opmath" type)
// and rounds the result to the half type once; the next op reads that rounded tensor. So each
// half-typed graph node is lowered on float32 copies of its operands (exact, and free in
// registers) and cast back: the code generator rounds at that cast. An op lowered as several
// expressions (remainder, floor division, sigmoid) thus rounds once, as eager's kernel does,
// and a chain of nodes rounds at every node, as eager's tensors do.
Expr lower_pointwise(Context& c, const Node& n, const std::vector<Expr>& ops) {
  bool half = is_half(n.dtype);
  for (Expr x : ops) half |= is_half(x->dtype);
  if (!half || op_category(n.op) == OpCategory::Cast) return lower_pointwise_op(c, n, ops);
  std::vector<Expr> wide;
  for (Expr x : ops) {
    if (is_half(x->dtype)) {
      if (is_const(x) && rounds_number_operand(n.op)) x = c.float_const(round_to_dtype(x->fval, x->dtype), x->dtype);
      x = c.cast(x, DType::Float32);
    }
    wide.push_back(x);
  }
  Node n32 = n;
  if (is_half(n.dtype)) n32.dtype = DType::Float32;
  Expr r;
  if (n.op == OpKind::TruncDiv && is_half(n.dtype) && !is_const(ops[1])) {
    // eager's kernel is trunc(a / b) on half values: the quotient rounds to the half type first
    // (19.96 becomes 20, then trunc keeps 20). By a Python number, eager's kernel divides in
    // float32 and truncates that (the general path below).
    Expr q = c.cast(c.cast(c.binary(ExprOp::Div, wide[0], wide[1]), n.dtype), DType::Float32);
    r = c.unary(ExprOp::Trunc, q);
  } else {
    r = lower_pointwise_op(c, n32, wide);
  }
  return is_half(n.dtype) ? c.cast(r, n.dtype) : r;
}

namespace {
Expr lower_pointwise_op(Context& c, const Node& n, const std::vector<Expr>& ops) {
  switch (op_category(n.op)) {
case OpCategory::Cast:
    return c.cast(ops[0], n.dtype);
  case OpCategory::Unary: {
    Expr x = ops[0];
    DType t = x->dtype;
    switch (n.op) {
      case OpKind::Rsqrt: return c.binary(ExprOp::Div, c.float_const(1.0, t), c.unary(ExprOp::Sqrt, x));
      case OpKind::Reciprocal: return c.binary(ExprOp::Div, c.float_const(1.0, t), x);
      case OpKind::Sigmoid:
        // 1 / (1 + exp(-x)): exact limits at +-inf, no NaN from inf/inf.
        return c.binary(ExprOp::Div, c.float_const(1.0, t),
                        c.binary(ExprOp::Add, c.float_const(1.0, t), c.unary(ExprOp::Exp, c.unary(ExprOp::Neg, x))));
      case OpKind::LogicalNot:
        return t == DType::Bool ? c.unary(ExprOp::Not, x) : c.binary(ExprOp::Eq, x, zero(c, t));
      case OpKind::BitwiseNot:
        return t == DType::Bool ? c.unary(ExprOp::Not, x) : c.unary(ExprOp::BitNot, x);
      case OpKind::Sign: {
        // (0 < x) - (x < 0), in x's dtype; bool: x itself.
        if (t == DType::Bool) return x;
        Expr pos = c.cast(c.binary(ExprOp::Lt, zero(c, t), x), t);
        Expr neg = c.cast(c.binary(ExprOp::Lt, x, zero(c, t)), t);
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
    Expr a = ops[0], b = ops[1];
    DType t = a->dtype;
    if (n.op == OpKind::FloorDiv) {
      if (!is_float(t)) return c.binary(ExprOp::Div, a, b);
      return floor_divide_float(c, a, b);
    }
    if (n.op == OpKind::TruncDiv && is_float(t)) return c.unary(ExprOp::Trunc, c.binary(ExprOp::Div, a, b));
    if (n.op == OpKind::Remainder && is_float(t)) {
      // torch: m = fmod(a, b); m != 0 and sign(m) != sign(b) ? m + b : m
      Expr m = c.binary(ExprOp::Fmod, a, b);
      Expr fix = c.binary(ExprOp::And, c.binary(ExprOp::Ne, m, zero(c, t)),
                          c.binary(ExprOp::Ne, c.binary(ExprOp::Lt, b, zero(c, t)), c.binary(ExprOp::Lt, m, zero(c, t))));
      return c.select(fix, c.binary(ExprOp::Add, m, b), m);
    }
    if (n.op == OpKind::Pow) return power(c, a, b);
    return c.binary(binary_expr_op(n.op, t), a, b);
  }
  case OpCategory::Ternary:
    if (n.op == OpKind::Fma) return c.fma(ops[0], ops[1], ops[2]);
    return c.select(ops[0], ops[1], ops[2]);
    default:
      KILN_UNREACHABLE(std::string("not a pointwise primitive: ") + op_name(n.op));
  }
}

}  // namespace

  /// Index into a view's source for index `idx` of the view.
std::vector<Expr> view_source_index(Context& c, const Node& n, const Sizes& src_sizes, const std::vector<Expr>& idx) {
    const auto& a = n.attrs.ints;
    switch (n.op) {
      case OpKind::Permute: {
        std::vector<Expr> r(idx.size());
        for (size_t i = 0; i < idx.size(); ++i) r[a[i]] = idx[i];
        return r;
      }
      case OpKind::Expand:
        {
      std::vector<Expr> r(src_sizes.size());
      size_t off = n.sizes.size() - src_sizes.size();
      for (size_t d = 0; d < r.size(); ++d) r[d] = src_sizes[d] == 1 ? c.int_const(0) : idx[d + off];
      return r;
    }
      case OpKind::Slice: {
        std::vector<Expr> r(idx);
        r[a[0]] = c.add(c.mul(idx[a[0]], a[3]), a[1]);
        return r;
      }
      case OpKind::Reshape: {
        Expr lin = linear_index(c, idx, contiguous_strides(n.sizes));
        Sizes st = contiguous_strides(src_sizes);
        std::vector<Expr> r(src_sizes.size());
        for (size_t d = 0; d < r.size(); ++d)
          r[d] = src_sizes[d] <= 1 ? c.int_const(0)  // size 0: nothing is read
                                   : c.simplify_index(c.mod(c.div(lin, st[d]), src_sizes[d]));
        return r;
      }
      case OpKind::Flip: {
        std::vector<Expr> r(idx);
        for (int64_t d : a) r[d] = c.add(c.mul(idx[d], int64_t{-1}), src_sizes[d] - 1);
        return r;
      }
      default:
        KILN_UNREACHABLE("not a view");
    }
  }

}  // namespace kiln::passes
