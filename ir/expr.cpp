/// \file expr.cpp
/// Interning, constant folding and index simplification of loop-IR expressions.
#include "ir/expr.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <functional>
#include <map>
#include <numeric>
#include <optional>
#include <tuple>

#include "support/error.h"
#include "support/hash.h"

namespace kiln::ir {
namespace {
struct ExprInfo {
  const char* name;
  int arity;
};
constexpr ExprInfo kExprs[] = {
#define KILN_EXPR(e, n, a) {n, a},
#include "ir/expr_ops.def"
#undef KILN_EXPR
};

bool is_compare(ExprOp op) {
  return op == ExprOp::Eq || op == ExprOp::Ne || op == ExprOp::Lt || op == ExprOp::Le ||
         op == ExprOp::Gt || op == ExprOp::Ge;
}

int64_t floordiv(int64_t a, int64_t b) {
  int64_t q = a / b;
  return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}
int64_t floormod(int64_t a, int64_t b) { return a - floordiv(a, b) * b; }

/// bounds()'s answer for a value whose range it does not know; arithmetic on it stays unknown.
constexpr std::pair<int64_t, int64_t> kUnknownRange{INT64_MIN / 4, INT64_MAX / 4};
bool known_range(std::pair<int64_t, int64_t> r) { return r.first > kUnknownRange.first && r.second < kUnknownRange.second; }
}  // namespace

const char* expr_op_name(ExprOp op) { return kExprs[static_cast<int>(op)].name; }
int expr_op_arity(ExprOp op) { return kExprs[static_cast<int>(op)].arity; }

bool is_const(Expr e) { return e->op == ExprOp::Const; }
bool is_const_int(Expr e, int64_t v) { return e->op == ExprOp::Const && !is_float(e->dtype) && e->ival == v; }

bool Context::KeyEq::operator()(const ExprNode* x, const ExprNode* y) const {
  return x->op == y->op && x->dtype == y->dtype && x->a == y->a && x->b == y->b && x->c == y->c &&
         x->ival == y->ival && std::memcmp(&x->fval, &y->fval, sizeof(double)) == 0 &&
         x->var_id == y->var_id;
}

Expr Context::intern(ExprNode n) {
  uint64_t h = hash_combine(static_cast<uint64_t>(n.op), static_cast<uint64_t>(n.dtype));
  uint64_t shape = h;
  for (Expr o : {n.a, n.b, n.c}) {
    h = hash_combine(h, o ? o->hash : 0);
    shape = hash_combine(shape, o ? o->shape : 0);
  }
  // A variable is its id: its extent stays out of the hash, and an integer constant's value
  // out of the shape, so that index expressions order their terms alike whatever the sizes
  // (a dynamic program matches lowerings at different sizes: ir/kernel_template.h).
  if (n.op != ExprOp::Var) h = hash_combine(h, static_cast<uint64_t>(n.ival));
  if (n.op != ExprOp::Var && n.op != ExprOp::Const) shape = hash_combine(shape, static_cast<uint64_t>(n.ival));
  h = hash_combine(h, hash_double(n.fval));
  h = hash_combine(h, static_cast<uint64_t>(n.var_id));
  shape = hash_combine(shape, static_cast<uint64_t>(n.var_id));
  n.hash = h;
  n.shape = shape;
  auto it = table_.find(&n);
  if (it != table_.end()) return it->second;
  storage_.push_back(n);
  Expr e = &storage_.back();
  table_.emplace(e, e);
  return e;
}

Expr Context::int_const(int64_t v, DType t) {
  KILN_CHECK(!is_float(t), "int_const of a float dtype");
  ExprNode n{ExprOp::Const, t};
  n.ival = t == DType::Bool ? (v != 0) : v;
  return intern(n);
}

Expr Context::float_const(double v, DType t) {
  KILN_CHECK(is_float(t), "float_const of dtype {}", dtype_name(t));
  ExprNode n{ExprOp::Const, t};
  n.fval = v;
  return intern(n);
}

Expr Context::var(int64_t extent) {
  ExprNode n{ExprOp::Var, DType::Int64};
  n.ival = extent;
  n.var_id = next_var_++;
  return intern(n);
}

Expr Context::load(int buffer, Expr index, DType t) {
  ExprNode n{ExprOp::Load, t};
  n.a = index;
  n.ival = buffer;
  return intern(n);
}

Expr Context::param(int slot, DType t) {
  ExprNode n{ExprOp::Param, t};
  n.ival = slot;
  return intern(n);
}

Expr Context::with_operands(Expr x, Expr a, Expr b, Expr c) {
  if (a == x->a && b == x->b && c == x->c) return x;
  ExprNode n = *x;
  n.a = a;
  n.b = b;
  n.c = c;
  return intern(n);
}

Expr Context::unary(ExprOp op, Expr a) {
  KILN_CHECK(expr_op_arity(op) == 1 && op != ExprOp::Load && op != ExprOp::Cast, "unary({})", expr_op_name(op));
  DType t = op == ExprOp::IsNan ? DType::Bool : a->dtype;
  if (op == ExprOp::Neg && a->op == ExprOp::Neg) return a->a;
  ExprNode n{op, t};
  n.a = a;
  return intern(n);
}

Expr Context::cast(Expr a, DType t) {
  if (a->dtype == t) return a;
  if (is_const(a)) {
    if (is_float(t)) {
      double v = is_float(a->dtype) ? a->fval : static_cast<double>(a->ival);
      return float_const(is_half(t) ? round_to_dtype(v, t) : v, t);  // a cast to a half type rounds
    }
    if (t == DType::Bool) return bool_const(is_float(a->dtype) ? a->fval != 0 : a->ival != 0);
    if (!is_float(a->dtype) && dtype_bytes(t) == 8) return int_const(a->ival, t);
  }
  ExprNode n{ExprOp::Cast, t};
  n.a = a;
  return intern(n);
}

Expr Context::binary(ExprOp op, Expr a, Expr b) {
  KILN_CHECK(expr_op_arity(op) == 2, "binary({})", expr_op_name(op));
  KILN_CHECK(a->dtype == b->dtype, "binary {} on {} and {}", expr_op_name(op), dtype_name(a->dtype), dtype_name(b->dtype));
  if (a->dtype == DType::Int64 && !is_compare(op)) {
    switch (op) {
      case ExprOp::Add: return add(a, b);
      case ExprOp::Mul: return mul(a, b);
      case ExprOp::Min:
      case ExprOp::Max: {
        // Clamps that the operands' ranges decide (a concat piece's clamped index inside its
        // own range) fold away.
        auto ba = bounds(a), bb = bounds(b);
        if (ba.second <= bb.first) return op == ExprOp::Min ? a : b;
        if (bb.second <= ba.first) return op == ExprOp::Min ? b : a;
        break;
      }
      default: break;
    }
  }
  if (a->dtype == DType::Int64 && is_compare(op) && op != ExprOp::Eq && op != ExprOp::Ne) {
    // Index comparisons decided by ranges (a select's condition once a loop is split at its
    // boundary) become constants, and the select folds.
    auto ba = bounds(a), bb = bounds(b);
    if (known_range(ba) && known_range(bb)) {
      switch (op) {
        case ExprOp::Lt:
          if (ba.second < bb.first) return bool_const(true);
          if (ba.first >= bb.second) return bool_const(false);
          break;
        case ExprOp::Le:
          if (ba.second <= bb.first) return bool_const(true);
          if (ba.first > bb.second) return bool_const(false);
          break;
        case ExprOp::Gt:
          if (ba.first > bb.second) return bool_const(true);
          if (ba.second <= bb.first) return bool_const(false);
          break;
        case ExprOp::Ge:
          if (ba.first >= bb.second) return bool_const(true);
          if (ba.second < bb.first) return bool_const(false);
          break;
        default: break;
      }
    }
  }
  if (a->dtype == DType::Bool && (op == ExprOp::And || op == ExprOp::Or)) {
    bool and_op = op == ExprOp::And;
    for (int side = 0; side < 2; ++side) {
      Expr c = side ? b : a, other = side ? a : b;
      if (!is_const(c)) continue;
      bool v = c->ival != 0;
      if (and_op) return v ? other : c;
      return v ? c : other;
    }
  }
  ExprNode n{op, is_compare(op) ? DType::Bool : a->dtype};
  n.a = a;
  n.b = b;
  return intern(n);
}

Expr Context::select(Expr c, Expr a, Expr b) {
  KILN_CHECK(c->dtype == DType::Bool && a->dtype == b->dtype, "select operand types");
  if (is_const(c)) return c->ival ? a : b;
  if (a == b) return a;
  ExprNode n{ExprOp::Select, a->dtype};
  n.a = c;
  n.b = a;
  n.c = b;
  return intern(n);
}

Expr Context::fma(Expr a, Expr b, Expr c) {
  KILN_CHECK(is_float(a->dtype) && a->dtype == b->dtype && a->dtype == c->dtype, "fma operand types");
  ExprNode n{ExprOp::Fma, a->dtype};
  n.a = a;
  n.b = b;
  n.c = c;
  return intern(n);
}

// ---- index arithmetic --------------------------------------------------------------------

Expr Context::add(Expr a, Expr b) {
  KILN_CHECK(a->dtype == DType::Int64 && b->dtype == DType::Int64, "index add on non-int64");
  if (is_const(a) && is_const(b)) return int_const(a->ival + b->ival);
  if (is_const_int(a, 0)) return b;
  if (is_const_int(b, 0)) return a;
  if (is_const(a)) std::swap(a, b);  // constants on the right
  ExprNode n{ExprOp::Add, DType::Int64};
  n.a = a;
  n.b = b;
  return intern(n);
}

Expr Context::mul(Expr a, Expr b) {
  KILN_CHECK(a->dtype == DType::Int64 && b->dtype == DType::Int64, "index mul on non-int64");
  if (is_const(a) && is_const(b)) return int_const(a->ival * b->ival);
  if (is_const(a)) std::swap(a, b);
  if (is_const_int(b, 0)) return b;
  if (is_const_int(b, 1)) return a;
  ExprNode n{ExprOp::Mul, DType::Int64};
  n.a = a;
  n.b = b;
  return intern(n);
}

Expr Context::div(Expr a, int64_t c) {
  KILN_CHECK(c > 0, "index div by {}", c);
  if (c == 1) return a;
  if (is_const(a)) return int_const(floordiv(a->ival, c));
  auto [lo, hi] = bounds(a);
  if (lo >= 0 && hi < c) return int_const(0);
  if (floordiv(lo, c) == floordiv(hi, c)) return int_const(floordiv(lo, c));
  // (x / a) / c == x / (a*c) for floor division by positive constants.
  if (a->op == ExprOp::Div && is_const(a->b) && a->b->ival > 0 && a->dtype == DType::Int64 &&
      a->b->ival <= INT64_MAX / c)
    return div(a->a, a->b->ival * c);
  ExprNode n{ExprOp::Div, DType::Int64};
  n.a = a;
  n.b = int_const(c);
  return intern(n);
}

Expr Context::mod(Expr a, int64_t c) {
  KILN_CHECK(c > 0, "index mod by {}", c);
  if (c == 1) return int_const(0);
  if (is_const(a)) return int_const(floormod(a->ival, c));
  auto [lo, hi] = bounds(a);
  if (lo >= 0 && hi < c) return a;
  // (x % a) % c == x % c when c divides a (floor modulo by positive constants).
  if (a->op == ExprOp::Mod && is_const(a->b) && a->b->ival > 0 && a->dtype == DType::Int64 && a->b->ival % c == 0)
    return mod(a->a, c);
  ExprNode n{ExprOp::Mod, DType::Int64};
  n.a = a;
  n.b = int_const(c);
  return intern(n);
}

std::pair<int64_t, int64_t> Context::bounds(Expr e) {
  // Arithmetic on kUnknownRange (or overflowing arithmetic) stays unknown. Computing with the
  // sentinel itself overflowed and gave tiny, wrong ranges that let div() fold a live index term
  // to a constant.
  const auto unknown = kUnknownRange;
  auto known = known_range;
  switch (e->op) {
    case ExprOp::Const: return {e->ival, e->ival};
    case ExprOp::Var: return {0, std::max<int64_t>(e->ival - 1, 0)};
    case ExprOp::Add: {
      auto a = bounds(e->a), b = bounds(e->b);
      if (!known(a) || !known(b)) return unknown;
      int64_t lo, hi;
      if (__builtin_add_overflow(a.first, b.first, &lo) || __builtin_add_overflow(a.second, b.second, &hi))
        return unknown;
      if (!known({lo, hi})) return unknown;
      return {lo, hi};
    }
    case ExprOp::Mul: {
      auto a = bounds(e->a), b = bounds(e->b);
      if (!known(a) || !known(b)) return unknown;
      int64_t c[4];
      if (__builtin_mul_overflow(a.first, b.first, &c[0]) || __builtin_mul_overflow(a.first, b.second, &c[1]) ||
          __builtin_mul_overflow(a.second, b.first, &c[2]) || __builtin_mul_overflow(a.second, b.second, &c[3]))
        return unknown;
      std::pair<int64_t, int64_t> r{*std::min_element(c, c + 4), *std::max_element(c, c + 4)};
      return known(r) ? r : unknown;
    }
    case ExprOp::Div: {
      // Only index division (by a positive constant) has known bounds; data division (a
      // variable or non-positive divisor) does not.
      if (!is_const(e->b) || e->b->ival <= 0 || e->dtype != DType::Int64) break;
      auto a = bounds(e->a);
      if (!known(a)) return unknown;
      return {floordiv(a.first, e->b->ival), floordiv(a.second, e->b->ival)};
    }
    case ExprOp::Mod:
      if (!is_const(e->b) || e->b->ival <= 0 || e->dtype != DType::Int64) break;
      return {0, e->b->ival - 1};
    case ExprOp::Min:
    case ExprOp::Max: {
      // Clamps (roll, pad, boundary handling) have ranges worth knowing.
      if (e->dtype != DType::Int64) break;
      auto a = bounds(e->a), b = bounds(e->b);
      if (e->op == ExprOp::Min) {
        // min(a, b) <= min(a.hi, b.hi) always; its low end needs both lows.
        int64_t hi = std::min(a.second, b.second);
        int64_t lo = std::min(a.first, b.first);
        return known({lo, hi}) ? std::make_pair(lo, hi) : std::make_pair(unknown.first, hi);
      }
      int64_t lo = std::max(a.first, b.first);
      int64_t hi = std::max(a.second, b.second);
      return known({lo, hi}) ? std::make_pair(lo, hi) : std::make_pair(lo, unknown.second);
    }
    default: break;
  }
  return unknown;
}

// ---- linear forms -------------------------------------------------------------------------
namespace {
/// The order of a linear form's atoms: by shape (the same at every size), then by hash, for
/// a deterministic rebuild.
using AtomKey = std::tuple<uint64_t, uint64_t, Expr>;
AtomKey atom_key(Expr atom) { return {atom->shape, atom->hash, atom}; }

/// sum(coef * atom) + constant.
struct Linear {
  std::map<AtomKey, int64_t> terms;
  int64_t constant = 0;
  void add_term(Expr atom, int64_t coef) {
    auto key = atom_key(atom);
    int64_t& c = terms[key];
    c += coef;
    if (c == 0) terms.erase(key);
  }
  void add(const Linear& o, int64_t scale) {
    for (auto& [k, c] : o.terms) add_term(std::get<2>(k), c * scale);
    constant += o.constant * scale;
  }
  /// *this == g * multiples + rest, where `multiples` takes the terms whose coefficient g
  /// divides (divided by g) and rest the others; the constant splits by floor division.
  void split(int64_t g, Linear& multiples, Linear& rest) const {
    for (auto& [k, coef] : terms) {
      if (coef % g == 0) multiples.add_term(std::get<2>(k), coef / g);
      else rest.add_term(std::get<2>(k), coef);
    }
    multiples.constant = floordiv(constant, g);
    rest.constant = floormod(constant, g);
  }
};

/// r = g*big + small with g a factor of c shared by some coefficient and 0 <= small < g for every
/// value of the variables; the largest such g, or nothing.
struct FactorSplit {
  int64_t g;
  Linear big, small;
};
std::optional<FactorSplit> split_by_common_factor(Context& ctx, const Linear& r, int64_t c) {
  // Try each factor g of c that some coefficient shares, largest first wins.
  std::optional<FactorSplit> best;
  for (auto& [k, coef] : r.terms) {
    int64_t g = std::gcd(c, coef < 0 ? -coef : coef);
    if (g <= 1 || g == c || (best && best->g >= g)) continue;
    Linear big, small;
    r.split(g, big, small);
    int64_t lo = small.constant, hi = small.constant;
    for (auto& [k2, coef2] : small.terms) {
      auto [a0, a1] = ctx.bounds(std::get<2>(k2));
      if (a0 <= INT64_MIN / 8 || a1 >= INT64_MAX / 8) {
        lo = -1;  // unbounded: not provably in [0, g)
        break;
      }
      int64_t p0, p1;
      if (__builtin_mul_overflow(a0, coef2, &p0) || __builtin_mul_overflow(a1, coef2, &p1) ||
          __builtin_add_overflow(lo, std::min(p0, p1), &lo) || __builtin_add_overflow(hi, std::max(p0, p1), &hi)) {
        lo = -1;
        break;
      }
    }
    if (lo < 0 || hi >= g) continue;
    best = FactorSplit{g, std::move(big), std::move(small)};
  }
  return best;
}
}  // namespace

Expr Context::simplify_index(Expr e) {
  std::function<Linear(Expr)> lin;
  std::function<Expr(const Linear&)> rebuild = [&](const Linear& l) {
    Expr r = int_const(0);
    for (auto& [k, c] : l.terms) r = add(r, mul(std::get<2>(k), c));
    return add(r, l.constant);
  };
  lin = [&](Expr x) -> Linear {
    Linear l;
    switch (x->op) {
      case ExprOp::Const: l.constant = x->ival; return l;
      case ExprOp::Add: {
        l = lin(x->a);
        l.add(lin(x->b), 1);
        return l;
      }
      case ExprOp::Mul:
        if (is_const(x->b)) {
          l.add(lin(x->a), x->b->ival);
          return l;
        }
        break;
      case ExprOp::Div:
      case ExprOp::Mod: {
        if (!is_const(x->b) || x->b->ival <= 0) break;  // data division: an atom
        int64_t c = x->b->ival;
        Linear inner = lin(x->a);
        // Split off the part that is a multiple of c: (q*c + r) / c = q + r / c and
        // (q*c + r) % c = r % c, exact for floor division.
        Linear q, r;
        inner.split(c, q, r);
        if (auto split = split_by_common_factor(*this, r, c)) {
          // r = g*A + s with 0 <= s < g and g | c: (g*A + s) / c = A / (c/g) and
          // (g*A + s) % c = g*(A % (c/g)) + s. This is how a flat index i*K + j (j < K) divided
          // by a multiple of K loses j, which reshapes of contiguous rows produce everywhere.
          auto& [g, big, small] = *split;
          Expr a = rebuild(big);
          if (x->op == ExprOp::Div) {
            l = q;
            Expr d = div(a, c / g);
            if (is_const(d)) l.constant += d->ival;
            else l.add_term(d, 1);
          } else {
            l = small;
            Expr m = mod(a, c / g);
            if (is_const(m)) l.constant += g * m->ival;
            else if (m == a) l.add(big, g);
            else l.add_term(m, g);
          }
          return l;
        }
        Expr rest = rebuild(r);
        if (x->op == ExprOp::Div) {
          l = q;
          Expr d = div(rest, c);
          if (is_const(d)) l.constant += d->ival;
          else l.add_term(d, 1);
        } else {
          Expr m = mod(rest, c);
          if (is_const(m)) l.constant = m->ival;
          else if (m == rest) l = r;  // the range made the mod vanish
          else l.add_term(m, 1);
        }
        return l;
      }
      default: break;
    }
    l.add_term(x, 1);
    return l;
  };
  Linear l = lin(e);
  // Merge (x/c)*(k*c) + (x%c)*k into x*k, repeatedly (reshape chains nest these).
  for (bool changed = true; changed;) {
    changed = false;
    for (auto& [key, coef] : l.terms) {
      Expr atom = std::get<2>(key);
      if (atom->op != ExprOp::Mod || !is_const(atom->b) || atom->b->ival <= 0) continue;
      int64_t c = atom->b->ival;
      Expr d = div(atom->a, c);
      auto it = l.terms.find(atom_key(d));
      if (it == l.terms.end() || it->second != coef * c) continue;
      int64_t k = coef;
      Expr inner = atom->a;
      l.terms.erase(it);
      l.terms.erase(atom_key(atom));
      l.add(lin(inner), k);
      changed = true;
      break;
    }
  }
  return rebuild(l);
}

Expr Context::substitute(Expr e, const std::unordered_map<Expr, Expr>& map) {
  std::unordered_map<Expr, Expr> memo;
  std::function<Expr(Expr)> go = [&](Expr x) -> Expr {
    if (!x) return x;
    auto m = map.find(x);
    if (m != map.end()) return m->second;
    auto it = memo.find(x);
    if (it != memo.end()) return it->second;
    Expr r = x;
    switch (x->op) {
      case ExprOp::Const:
      case ExprOp::Var:
      case ExprOp::Param: break;
      case ExprOp::Load: r = load(static_cast<int>(x->ival), simplify_index(go(x->a)), x->dtype); break;
      case ExprOp::Cast: r = cast(go(x->a), x->dtype); break;
      case ExprOp::Select: r = select(go(x->a), go(x->b), go(x->c)); break;
      case ExprOp::Fma: r = fma(go(x->a), go(x->b), go(x->c)); break;
      default:
        if (x->dtype == DType::Int64 && (x->op == ExprOp::Div || x->op == ExprOp::Mod) && is_const(x->b) &&
            x->b->ival > 0) {
          r = x->op == ExprOp::Div ? div(go(x->a), x->b->ival) : mod(go(x->a), x->b->ival);
        } else if (expr_op_arity(x->op) == 1) {
          r = unary(x->op, go(x->a));
        } else {
          r = binary(x->op, go(x->a), go(x->b));
        }
    }
    memo[x] = r;
    return r;
  };
  return go(e);
}

void visit(Expr e, std::set<Expr>& seen, const std::function<void(Expr)>& f) {
  if (!e || !seen.insert(e).second) return;
  f(e);
  visit(e->a, seen, f);
  visit(e->b, seen, f);
  visit(e->c, seen, f);
}

// ---- printing -----------------------------------------------------------------------------

std::string print_expr(Expr root, std::string* lets_out, const std::string& indent) {
  std::unordered_map<Expr, int> uses;
  std::function<void(Expr)> count = [&](Expr x) {
    if (!x || ++uses[x] > 1) return;
    count(x->a);
    count(x->b);
    count(x->c);
  };
  count(root);
  std::unordered_map<Expr, std::string> names;
  std::string lets;
  int next_let = 0;
  std::function<std::string(Expr)> go = [&](Expr x) -> std::string {
    auto it = names.find(x);
    if (it != names.end()) return it->second;
    std::string s;
    switch (x->op) {
      case ExprOp::Const:
        s = is_float(x->dtype) ? fmt::format("{}", x->fval) : std::to_string(x->ival);
        break;
      case ExprOp::Var: s = fmt::format("i{}", x->var_id); break;
      case ExprOp::Param: s = fmt::format("p{}", x->ival); break;
      case ExprOp::Load:
        s = x->ival < 0 ? fmt::format("acc{}", -1 - x->ival) : fmt::format("buf{}[{}]", x->ival, go(x->a));
        break;
      case ExprOp::Cast: s = fmt::format("{}({})", dtype_name(x->dtype), go(x->a)); break;
      case ExprOp::Add: s = fmt::format("({} + {})", go(x->a), go(x->b)); break;
      case ExprOp::Mul: s = fmt::format("({} * {})", go(x->a), go(x->b)); break;
      default: {
        s = std::string(expr_op_name(x->op)) + "(";
        for (int i = 0; i < expr_op_arity(x->op); ++i) s += (i ? ", " : "") + go(x->operand(i));
        s += ")";
      }
    }
    bool leaf = x->op == ExprOp::Const || x->op == ExprOp::Var || x->op == ExprOp::Param;
    if (lets_out && !leaf && uses[x] > 1 && x != root) {
      std::string name = fmt::format("t{}", next_let++);
      lets += fmt::format("{}{} = {}\n", indent, name, s);
      s = name;
    }
    names[x] = s;
    return s;
  };
  std::string body = go(root);
  if (lets_out) *lets_out += lets;
  return body;
}


std::optional<int64_t> linear_coefficient(Expr e, Expr v) {
  if (e == v) return 1;
  switch (e->op) {
    case ExprOp::Const:
    case ExprOp::Var: return 0;
    case ExprOp::Add:
    case ExprOp::Sub: {
      auto a = linear_coefficient(e->a, v), b = linear_coefficient(e->b, v);
      if (!a || !b) return std::nullopt;
      return e->op == ExprOp::Add ? *a + *b : *a - *b;
    }
    case ExprOp::Mul:
      if (is_const(e->a) && !is_float(e->a->dtype)) {
        auto b = linear_coefficient(e->b, v);
        return b ? std::optional<int64_t>(*b * e->a->ival) : std::nullopt;
      }
      if (is_const(e->b) && !is_float(e->b->dtype)) {
        auto a = linear_coefficient(e->a, v);
        return a ? std::optional<int64_t>(*a * e->b->ival) : std::nullopt;
      }
      [[fallthrough]];
    default: {
      bool uses = false;
      std::set<Expr> seen;
      visit(e, seen, [&](Expr x) { uses = uses || x == v; });
      return uses ? std::nullopt : std::optional<int64_t>(0);
    }
  }
}

std::vector<Expr> buffer_loads(Expr e) {
  std::vector<Expr> out;
  std::set<Expr> seen;
  visit(e, seen, [&](Expr x) {
    if (x->op == ExprOp::Load && x->ival >= 0) out.push_back(x);
  });
  return out;
}

}  // namespace kiln::ir
