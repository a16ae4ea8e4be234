/// \file column_reductions.cpp
/// Note [Column reductions]
/// A row kernel folds each kept position's values with a scalar accumulator while its inner
/// loops walk the reduced dims. That is right when the innermost reduced dim is contiguous. When
/// instead the innermost *kept* dim is the contiguous one (squeeze-excitation's mean over H and W
/// of a channels-last activation, x.sum(0) of a row-major matrix), every element the inner loop
/// reads is a gather at the reduced dim's stride: mbconv's mean over [16, 196, 480] spent 300 us
/// on 6 MB that a streaming read takes 60 us for.
///
/// The rewrite moves that kept loop (`c`) inside every phase as the vectorised innermost loop,
/// and turns each reduction into stores to a column of accumulators (one per kept position, in
/// a temporary buffer): set to the reduction's identity, then `col = combine(col, value)` per
/// reduced element, read by later phases where they read the reduction's placeholder. Each
/// element is then one contiguous vector load. The phases keep their order; iterations of `c`
/// are independent (they were iterations of an outer loop), so running each phase for all of c
/// before the next is the same computation. Each column still folds its elements in order, one
/// at a time (a float sum is no longer split into vector partial sums: it rounds as a
/// sequential sum does).
///
/// When the other outer loops leave the threads too little work (x.sum(0) has none), c is cut
/// into blocks of columns so the threads still share it. Sum, max and min of floating-point values are rewritten;
/// others (products, arg reductions, integer folds) keep the row form.
#include "passes/column_reductions.h"

#include <fmt/format.h>

#include <cmath>
#include <limits>

namespace kiln::passes {
namespace {

using namespace ir;

/// Whether kernel `k` has the shape this rewrite handles and gains on: reductions it can fold
/// column-wise, every access contiguous (or constant) along the innermost outer loop `c`, and
/// at least one reduced operand read with a gather today.
bool worth_rewriting(const Kernel& k) {
  if (k.loops.empty()) return false;
  Expr c = k.loops.back().var;
  if (c->ival < 16) return false;  // too narrow for a vector: the row form is as good
  bool has_reduction = false, gains = false;
  for (const Phase& ph : k.phases) {
    for (const Reduction& r : ph.reductions) {
      has_reduction = true;
      bool foldable = r.op == ReduceOp::Sum || r.op == ReduceOp::Max || r.op == ReduceOp::Min;
      if (!foldable || r.running || r.position || !is_float(r.acc_dtype) || ph.loops.empty()) return false;
      Expr inner = ph.loops.back().var;
      for (Expr ld : buffer_loads(r.value)) {
        auto sc = linear_coefficient(ld->a, c), si = linear_coefficient(ld->a, inner);
        if (!sc || !si) return false;
        if (*sc == 1 && *si != 1 && *si != 0) gains = true;
        if (*sc == 1 && *si == 1) return false;  // a contiguous row: the row form reads it best
      }
    }
    for (const Store& s : ph.stores) {
      auto sc = linear_coefficient(s.index, c);
      if (!sc || *sc != 1) return false;
    }
  }
  for (Expr e : k.exprs())
    for (Expr ld : buffer_loads(e)) {
      auto sc = linear_coefficient(ld->a, c);
      if (!sc || (*sc != 0 && *sc != 1)) return false;
    }
  return has_reduction && gains;
}

/// Columns per block when `c` (extent `C`) must be cut to give the threads work: `rest` is the
/// product of the other outer loops. 0: no cut.
int64_t column_block(int64_t C, int64_t rest) {
  if (rest >= 16) return 0;
  // Whole vectors of 8 (a column block of fewer floats than a cache line wastes the rest of
  // each line it reads), the widest that still leaves 16 blocks to share out.
  int64_t best = 0;
  for (int64_t b = 256; b >= 8; b -= 8) {
    if (C % b != 0 || C / b < 2) continue;
    best = b;
    if (rest * (C / b) >= 16) break;
  }
  return best;
}

/// Elements a column kernel that cannot be split may read on one thread.
constexpr int64_t kOneThreadWork = 1 << 16;

Expr identity(Context& ctx, ReduceOp op, DType t) {
  double inf = std::numeric_limits<double>::infinity();
  return ctx.float_const(op == ReduceOp::Sum ? 0.0 : op == ReduceOp::Max ? -inf : inf, t);
}

Expr combine(Context& ctx, ReduceOp op, Expr acc, Expr v) {
  return ctx.binary(op == ReduceOp::Sum ? ExprOp::Add : op == ReduceOp::Max ? ExprOp::Max : ExprOp::Min, acc, v);
}

void rewrite(KernelProgram& p, Kernel& k) {
  Context& ctx = *p.ctx;
  Expr c = k.loops.back().var;
  int64_t C = c->ival;
  std::vector<Loop> outer(k.loops.begin(), k.loops.end() - 1);
  int64_t rest = 1;
  for (const Loop& l : outer) rest *= l.var->ival;
  int64_t block = column_block(C, rest);
  Expr inner = c, column = c;
  std::unordered_map<Expr, Expr> sub;
  if (block) {
    Expr cb = ctx.var(C / block);
    inner = ctx.var(block);
    column = ctx.add(ctx.mul(cb, block), inner);
    sub[c] = column;
    outer.push_back({cb, LoopKind::Serial});
  }
  // The accumulators of kept position (outer..., c) sit at its row-major rank.
  Expr pos = ctx.int_const(0);
  for (size_t i = 0; i + (block ? 1 : 0) < outer.size(); ++i) pos = ctx.add(ctx.mul(pos, outer[i].var->ival), outer[i].var);
  Expr acc_index = ctx.simplify_index(ctx.add(ctx.mul(pos, C), column));
  struct Column {
    const Reduction* r;
    int buffer;
    Expr load;
  };
  std::vector<std::vector<Column>> columns(k.phases.size());
  for (size_t pi = 0; pi < k.phases.size(); ++pi)
    for (const Reduction& r : k.phases[pi].reductions) {
      p.buffers.push_back({BufferKind::Temp, -1, r.acc_dtype, {rest * C}, {1}});
      int buf = static_cast<int>(p.buffers.size()) - 1;
      Expr ld = ctx.load(buf, acc_index, r.acc_dtype);
      columns[pi].push_back({&r, buf, ld});
      Expr placeholder = ctx.load(-1 - r.slot, ctx.int_const(0), r.out_dtype);
      sub[placeholder] = r.acc_dtype == r.out_dtype ? ld : ctx.cast(ld, r.out_dtype);
    }
  auto vector_loop = [&](std::vector<Loop> loops) {
    for (Loop& l : loops) l.kind = LoopKind::Serial;
    loops.push_back({inner, LoopKind::Vectorized});
    return loops;
  };
  std::vector<Phase> phases;
  for (size_t pi = 0; pi < k.phases.size(); ++pi) {
    const Phase& ph = k.phases[pi];
    if (!columns[pi].empty()) {
      Phase init;
      init.loops = vector_loop({});
      for (const Column& col : columns[pi]) init.stores.push_back({col.buffer, acc_index, identity(ctx, col.r->op, col.r->acc_dtype)});
      phases.push_back(std::move(init));
    }
    Phase out;
    out.loops = vector_loop(ph.loops);
    for (const Column& col : columns[pi]) {
      Expr v = ctx.cast(ctx.substitute(col.r->value, sub), col.r->acc_dtype);
      out.stores.push_back({col.buffer, acc_index, combine(ctx, col.r->op, col.load, v)});
    }
    for (const Store& s : ph.stores)
      out.stores.push_back({s.buffer, ctx.simplify_index(ctx.substitute(s.index, sub)), ctx.substitute(s.value, sub)});
    phases.push_back(std::move(out));
  }
  k.phases = std::move(phases);
  k.loops = std::move(outer);
  for (Loop& l : k.loops) l.kind = LoopKind::Serial;
  if (!k.loops.empty()) k.loops.front().kind = LoopKind::Parallel;
  p.fusion_log.push_back(fmt::format(
      "kernel {}: its reductions read gathers along the reduced dims while the kept dim of {} is contiguous: folded as "
      "columns vectorised along it{}",
      k.name, C, block ? fmt::format(" (blocks of {} columns across threads)", block) : ""));
}

}  // namespace

void run_column_reductions(KernelProgram& p, const PassOptions&) {
  for (Kernel& k : p.kernels) {
    if (!worth_rewriting(k)) continue;
    // A kernel with no other outer loop and columns that cannot be cut runs on one thread:
    // right for a small one only (a larger one keeps the row form, split across threads).
    int64_t rest = 1;
    for (size_t i = 0; i + 1 < k.loops.size(); ++i) rest *= k.loops[i].var->ival;
    if (rest == 1 && column_block(k.loops.back().var->ival, rest) == 0 && k.inner_work() * k.outer_extent() > kOneThreadWork)
      continue;
    rewrite(p, k);
  }
}

}  // namespace kiln::passes
