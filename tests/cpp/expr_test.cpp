/// \file expr_test.cpp
/// Loop IR: interning, constant folding, index simplification (with a random-expression fuzzer
/// that checks equivalence and idempotency), substitution and printing.
#include <gtest/gtest.h>

#include <algorithm>
#include <functional>
#include <random>
#include <unordered_map>

#include "ir/expr.h"

using namespace kiln::ir;

TEST(Expr, HashConsing) {
  Context c;
  Expr i = c.var(10);
  Expr a = c.binary(ExprOp::Mul, c.load(0, i, DType::Float32), c.float_const(2.0, DType::Float32));
  Expr b = c.binary(ExprOp::Mul, c.load(0, i, DType::Float32), c.float_const(2.0, DType::Float32));
  EXPECT_EQ(a, b);
  EXPECT_NE(c.var(10), i);  // variables have identity, not names
  EXPECT_NE(c.float_const(0.0, DType::Float32), c.float_const(-0.0, DType::Float32));
}

TEST(Expr, IndexFolding) {
  Context c;
  Expr i = c.var(8);
  EXPECT_EQ(c.add(i, int64_t{0}), i);
  EXPECT_EQ(c.mul(i, 1), i);
  EXPECT_TRUE(is_const_int(c.mul(i, int64_t{0}), 0));
  EXPECT_EQ(c.mod(i, 8), i);          // i < 8
  EXPECT_TRUE(is_const_int(c.div(i, 8), 0));
  EXPECT_TRUE(is_const_int(c.add(c.int_const(3), c.int_const(4)), 7));
}

TEST(Expr, MergesDivModPairs) {
  Context c;
  Expr w = c.var(64);
  // (w / 8) * 8 + w % 8 == w: what a reshape of a contiguous buffer produces.
  Expr e = c.add(c.mul(c.div(w, 8), 8), c.mod(w, 8));
  EXPECT_EQ(c.simplify_index(e), w);
  // with a stride: ((w / 8) * 8 + w % 8) * 3 == w * 3
  Expr f = c.add(c.mul(c.div(w, 8), 24), c.mul(c.mod(w, 8), 3));
  EXPECT_EQ(c.simplify_index(f), c.mul(w, 3));
}

TEST(Expr, SplitsDivOverMultiples) {
  Context c;
  Expr i = c.var(4), j = c.var(5);
  Expr lin = c.add(c.mul(i, 5), j);  // i*5 + j, j < 5
  EXPECT_EQ(c.simplify_index(c.div(lin, 5)), i);
  EXPECT_EQ(c.simplify_index(c.mod(lin, 5)), j);
}

TEST(Expr, DropsRemaindersBelowACommonFactor) {
  // A flat index i*384 + j (j < 384) reshaped to (b, h, w, c) and back: what a permute of
  // channels-last rows and a reshape produce. The whole expression must fold to the identity so
  // the kernel's loads are contiguous and vectorize.
  Context c;
  Expr i = c.var(6272), j = c.var(384);
  Expr t = c.add(c.mul(i, 384), j);
  Expr e = c.add(c.add(c.add(c.mul(c.div(t, 301056), 301056), j), c.mul(c.mod(c.div(t, 10752), 28), 10752)),
                 c.mul(c.mod(i, 28), 384));
  EXPECT_EQ(c.simplify_index(e), c.simplify_index(t)) << print_expr(c.simplify_index(e));
  EXPECT_EQ(c.simplify_index(c.div(t, 768)), c.div(i, 2));
  // (i*384 + j) % 768 == (i % 2) * 384 + j
  EXPECT_EQ(c.simplify_index(c.mod(t, 768)), c.simplify_index(c.add(c.mul(c.mod(i, 2), 384), j)));
  EXPECT_EQ(c.div(c.div(i, 4), 7), c.div(i, 28));
  EXPECT_EQ(c.mod(c.mod(i, 28), 7), c.mod(i, 7));
}

namespace {
/// Evaluates an index expression for given variable values.
int64_t eval(Expr e, const std::unordered_map<Expr, int64_t>& env) {
  auto fdiv = [](int64_t a, int64_t b) { return a / b - ((a % b != 0) && ((a < 0) != (b < 0))); };
  switch (e->op) {
    case ExprOp::Const: return e->ival;
    case ExprOp::Var: return env.at(e);
    case ExprOp::Add: return eval(e->a, env) + eval(e->b, env);
    case ExprOp::Mul: return eval(e->a, env) * eval(e->b, env);
    case ExprOp::Div: return fdiv(eval(e->a, env), e->b->ival);
    case ExprOp::Load: {
      int64_t i = eval(e->a, env);
      return (i * 7919 % 23 + 23) % 23 - 11;
    }
    case ExprOp::Min: return std::min(eval(e->a, env), eval(e->b, env));
    case ExprOp::Max: return std::max(eval(e->a, env), eval(e->b, env));
    case ExprOp::Mod: {
      int64_t a = eval(e->a, env), b = e->b->ival;
      return a - fdiv(a, b) * b;
    }
    default: ADD_FAILURE() << "unexpected op"; return 0;
  }
}
}  // namespace

TEST(Expr, SimplifierFuzz) {
  std::mt19937 rng(1234);
  for (int trial = 0; trial < 3000; ++trial) {
    Context c;
    std::vector<Expr> vars = {c.var(1 + rng() % 7), c.var(1 + rng() % 9), c.var(1 + rng() % 5)};
    std::function<Expr(int)> gen = [&](int depth) -> Expr {
      int k = depth <= 0 ? rng() % 2 : rng() % 8;
      switch (k) {
        case 0: return vars[rng() % vars.size()];
        case 1: return c.int_const(static_cast<int64_t>(rng() % 13) - 6);  // flips give negative terms
        case 2: return c.add(gen(depth - 1), gen(depth - 1));
        case 3: return c.mul(gen(depth - 1), c.int_const(static_cast<int64_t>(rng() % 13) - 6));
        case 4: return c.div(gen(depth - 1), 1 + rng() % 12);
        case 5: return c.mod(gen(depth - 1), 1 + rng() % 12);
        case 6:  // a value read from data (gather indices): an atom of unknown range, maybe negative
          return c.load(0, gen(depth - 1), DType::Int64);
        default:  // a clamp (what roll, pad and boundary handling produce): an atom of unknown range
          return c.binary(ExprOp::Min, c.binary(ExprOp::Max, gen(depth - 1), c.int_const(0)),
                          c.int_const(rng() % 9));
      }
    };
    Expr e = gen(4);
    // Comparisons and clamps fold when the operands' ranges decide them: a folded result must
    // hold for every value of the variables.
    Expr other = gen(3);
    ExprOp cmp_ops[] = {ExprOp::Lt, ExprOp::Le, ExprOp::Gt, ExprOp::Ge};
    ExprOp cmp = cmp_ops[rng() % 4];
    Expr folded = c.binary(cmp, e, other);
    Expr mn = c.binary(ExprOp::Min, e, other), mx = c.binary(ExprOp::Max, e, other);
    for (int a = 0; a < vars[0]->ival; ++a)
      for (int b = 0; b < vars[1]->ival; ++b)
        for (int d = 0; d < vars[2]->ival; ++d) {
          std::unordered_map<Expr, int64_t> env = {{vars[0], a}, {vars[1], b}, {vars[2], d}};
          int64_t x = eval(e, env), y = eval(other, env);
          ASSERT_EQ(eval(mn, env), std::min(x, y)) << print_expr(mn);
          ASSERT_EQ(eval(mx, env), std::max(x, y)) << print_expr(mx);
          if (!is_const(folded)) continue;
          bool want = cmp == ExprOp::Lt ? x < y : cmp == ExprOp::Le ? x <= y : cmp == ExprOp::Gt ? x > y : x >= y;
          ASSERT_EQ(folded->ival != 0, want) << expr_op_name(cmp) << " " << print_expr(e) << " , " << print_expr(other);
        }
    Expr s = c.simplify_index(e);
    EXPECT_EQ(c.simplify_index(s), s) << "not idempotent: " << print_expr(e);
    for (int a = 0; a < vars[0]->ival; ++a)
      for (int b = 0; b < vars[1]->ival; ++b)
        for (int d = 0; d < vars[2]->ival; ++d) {
          std::unordered_map<Expr, int64_t> env = {{vars[0], a}, {vars[1], b}, {vars[2], d}};
          ASSERT_EQ(eval(e, env), eval(s, env)) << print_expr(e) << "  =>  " << print_expr(s);
        }
  }
}

TEST(Expr, SubstituteAndPrint) {
  Context c;
  Expr i = c.var(4), j = c.var(6);
  Expr load = c.load(1, c.add(c.mul(i, 6), j), DType::Float32);
  Expr w = c.var(24);
  Expr out = c.substitute(load, {{i, c.div(w, 6)}, {j, c.mod(w, 6)}});
  EXPECT_EQ(out, c.load(1, w, DType::Float32));
  std::string lets;
  Expr sq = c.binary(ExprOp::Mul, out, out);
  EXPECT_EQ(print_expr(sq, &lets), "(t0 * t0)");
  EXPECT_EQ(lets, "  t0 = buf1[i2]\n");
}

TEST(Expr, WindowReverseAfterRollKeepsEveryTerm) {
  // Swin's window_reverse of a rolled image: a flat index over clamped coordinates, unflattened
  // into (4, 7, 4, 7, 96) windows and re-flattened in another order. The clamps once had
  // unknown ranges whose arithmetic overflowed, and the window term folded to 0.
  Context c;
  Expr i1 = c.var(28), i2 = c.var(28), i3 = c.var(96);
  auto clamp = [&](Expr v) {
    return c.binary(ExprOp::Min, c.binary(ExprOp::Max, c.add(v, c.int_const(-3)), c.int_const(0)), c.int_const(24));
  };
  Expr f1 = c.add(c.add(c.mul(clamp(i1), 2688), c.mul(clamp(i2), 96)), i3);
  Expr f2 = c.add(c.add(c.add(c.add(c.mul(c.mod(c.div(f1, 18816), 4), 18816), c.mul(c.mod(c.div(f1, 672), 4), 4704)),
                              c.mul(c.mod(c.div(f1, 2688), 7), 672)),
                        c.mul(c.mod(c.div(f1, 96), 7), 96)),
                  c.mod(f1, 96));
  Expr s = c.simplify_index(f2);
  for (int x = 0; x < 28; ++x)
    for (int y = 0; y < 28; ++y)
      for (int z = 0; z < 96; z += 5) {
        std::unordered_map<Expr, int64_t> env = {{i1, x}, {i2, y}, {i3, z}};
        ASSERT_EQ(eval(f2, env), eval(s, env)) << x << "," << y << "," << z << ": " << print_expr(s);
      }
}
