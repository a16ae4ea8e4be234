/// \file gemm_bias.cpp
/// Note [Bias in the product]
/// A linear layer is a product and a bias: `x @ w.T + b`, or addmm, which the tracer records
/// as the same two nodes. On CUDA the product is a cuBLAS call, and the bias is added by the
/// kernels after it, which read the product back. cuBLASLt adds a bias vector to every row in
/// the product's epilogue, while the result is still in registers; eager's F.linear on CUDA
/// does the same. This pass hands the product its bias when every read of the product's
/// output is a sum with that bias, and those sums become plain reads. A kernel left copying
/// the product (a linear layer alone) goes: the product writes the copy's buffer.
///
/// What makes that valid, checked here on the loop IR:
///  - every read of the product's output `out` (a temporary no extern, product or output reads)
///    is an operand of a sum `out[idx] + bias[bidx]` of one bias buffer and offset, and of
///    nothing else (for float16/bfloat16: the sum of the two widened loads rounded once, and
///    nothing else reads the widened load either);
///  - bidx is the column of idx (rows of N): per loop variable, idx's coefficient is either a
///    multiple of N (a row: bidx's is 0) or under N (a column: bidx's is the same), the columns
///    reach at most N - 1, and idx's constant is a whole number of rows; bidx's constant is the
///    offset. A broadcast, a transpose or a slice of rows of the product qualifies;
///  - float32, float16 and bfloat16 only, one matrix (no batch), M, N and K in [2, 65535 * 32),
///    and no -0 fix-up (zero_start): the cases eager's F.linear gives cuBLASLt's epilogue too;
///    the bias has the output's dtype, as cuBLASLt requires.
/// On the CPU only half products take their bias (Note [bfloat16 products] in runtime/gemm.cpp):
/// there a float32 bias costs nothing in the epilogue kernel that runs on each tile in cache.
/// The sum rounds once: for a half product, eager's addmm (F.linear) rounds once too, while a
/// written-out `x @ w.T + b` rounds the product first; the two differ by at most one rounding
/// of the result. (The tracer records a half addmm as a kiln product only within the bounds
/// above, so that it always rounds once.)
#include "passes/gemm_bias.h"

#include <fmt/format.h>

#include <algorithm>
#include <functional>
#include <map>
#include <numeric>
#include <set>
#include <tuple>
#include <unordered_map>

namespace kiln::passes {
namespace {

using namespace ir;

/// The load of `out` and the other load when `v` is their sum: a float32 add, or for a half
/// dtype `t` the cast back to t of the float32 sum of the two widened loads.
std::pair<Expr, Expr> summed_loads(Expr v, DType t, int out) {
  std::pair<Expr, Expr> none{nullptr, nullptr};
  if (is_half(t)) {
    if (v->op != ExprOp::Cast || v->dtype != t) return none;
    v = v->a;
  }
  if (v->op != ExprOp::Add) return none;
  Expr x = v->a, y = v->b;
  if (is_half(t)) {
    if (x->op != ExprOp::Cast || y->op != ExprOp::Cast) return none;
    x = x->a;
    y = y->a;
  }
  if (x->op != ExprOp::Load || y->op != ExprOp::Load || x->dtype != t || y->dtype != t) return none;
  if (y->ival == out) std::swap(x, y);
  if (x->ival != out || y->ival == out) return none;
  return {x, y};
}

/// What folds: each bias sum the product takes over (-> its load of the product's output),
/// per kernel, the bias buffer and its constant offset.
struct Fold {
  std::map<size_t, std::unordered_map<Expr, Expr>> sums;  // kernel -> (sum -> load of the output)
  int bias = -1;
  int64_t offset = 0;
};

/// Whether `bidx` reads the column of element `idx` of a row-major output with rows of N
/// (see the Note), over `loops`; the bias offset (bidx's constant) in `offset`.
bool column_of(Context& ctx, const std::vector<Loop>& loops, Expr idx, Expr bidx, int64_t N, int64_t* offset) {
  std::unordered_map<Expr, Expr> zero;
  int64_t reach = 0;  // the largest column the column variables add up to
  for (const Loop& l : loops) {
    zero[l.var] = ctx.int_const(0);
    auto cs = linear_coefficient(idx, l.var), cb = linear_coefficient(bidx, l.var);
    if (!cs || !cb || *cs < 0) return false;
    if (*cs % N == 0) {
      if (*cb != 0) return false;  // a row (or a broadcast: 0)
    } else if (*cs < N && *cb == *cs) {
      reach += *cs * (l.var->ival - 1);
    } else {
      return false;
    }
  }
  Expr base = ctx.substitute(idx, zero), bias_base = ctx.substitute(bidx, zero);
  if (!is_const(base) || base->ival % N != 0 || !is_const(bias_base) || reach > N - 1) return false;
  *offset = bias_base->ival;
  return true;
}

/// The bias sums of every kernel reading product `g`'s output that it may take over, or an
/// empty Fold.
Fold find_bias(KernelProgram& p, const GemmCall& g, bool half_only) {
  DType t = p.buffers[g.out].dtype;
  if ((t != DType::Float32 || half_only) && !is_half(t)) return {};
  if (g.zero_start || g.bias >= 0) return {};
  // One matrix: eager's F.linear uses this epilogue only there, so that is where it is proven.
  const Sizes& as = g.a.sizes;
  if (std::accumulate(as.begin(), as.end() - 2, int64_t{1}, std::multiplies<int64_t>()) != 1) return {};
  // Eager's bounds for the same epilogue (no dim of 1, none of 65535 * 32 or more).
  for (int64_t d : {as[as.size() - 2], as.back(), g.b.sizes.back()})
    if (d <= 1 || d >= 65535 * 32) return {};
  if (p.buffers[g.out].kind != BufferKind::Temp || read_outside_kernels(p)[g.out]) return {};
  int64_t N = g.b.sizes.back();
  Fold f;
  for (size_t ki = 0; ki < p.kernels.size(); ++ki) {
    const Kernel& k = p.kernels[ki];
    // Operand slots reading each node: the output's loads (and a half sum's casts of them)
    // may be read by their sum only.
    std::set<Expr> seen;
    std::map<Expr, int> uses;
    for (Expr e : k.exprs())
      visit(e, seen, [&](Expr x) {
        for (int i = 0; i < expr_op_arity(x->op); ++i)
          if (x->operand(i)) ++uses[x->operand(i)];
      });
    for (const Phase& ph : k.phases) {
      std::vector<Loop> loops = k.loops;
      loops.insert(loops.end(), ph.loops.begin(), ph.loops.end());
      std::vector<Expr> roots;
      for (const Reduction& r : ph.reductions) roots.push_back(r.value);
      for (const Store& st : ph.stores) {
        if (st.buffer == g.out) return {};
        roots.push_back(st.value);
      }
      for (Expr root : roots)
        if (root->op == ExprOp::Load && root->ival == g.out) return {};  // the product itself, stored
      std::set<Expr> phase_seen, out_loads, summed;
      std::vector<std::tuple<Expr, Expr, Expr>> sums;  // (sum, its load of the output, its bias load)
      for (Expr root : roots)
        visit(root, phase_seen, [&](Expr x) {
          if (x->op == ExprOp::Load && x->ival == g.out) out_loads.insert(x);
          auto [out_load, bias] = summed_loads(x, t, g.out);
          if (out_load) sums.push_back({x, out_load, bias});
        });
      for (auto [sum, out_load, bias] : sums) {
        Expr via = out_load;  // what the add reads: the load, or (half) the cast of it
        if (is_half(t)) via = sum->a->a->a == out_load ? sum->a->a : sum->a->b;
        if (uses[out_load] != 1 || uses[via] != 1) return {};
        int64_t offset = 0;
        if (!column_of(*p.ctx, loops, out_load->a, bias->a, N, &offset)) return {};
        if (f.bias >= 0 && (f.bias != bias->ival || f.offset != offset)) return {};
        f.bias = static_cast<int>(bias->ival);
        f.offset = offset;
        f.sums[ki][sum] = out_load;
        summed.insert(out_load);
      }
      if (summed != out_loads) return {};  // a read of the product outside a bias sum
    }
  }
  if (f.sums.empty()) return {};
  if (f.bias == g.a.buffer || f.bias == g.b.buffer || f.bias == g.out) return {};
  for (const Kernel& k : p.kernels)
    for (const Phase& ph : k.phases)
      for (const Store& st : ph.stores)
        if (st.buffer == f.bias) return {};  // computed: it must not change after the product
  const Buffer& b = p.buffers[f.bias];
  if (f.offset < 0 || f.offset + N > b.storage_numel() || b.dtype != t) return {};
  return f;
}

/// The buffer kernel `k` (now) only copies the product's output into, when the product may
/// write it instead: dense, of the output's dtype, every element once in row-major order; -1
/// otherwise.
int copy_target(const KernelProgram& p, const GemmCall& g, const Kernel& k) {
  if (k.phases.size() != 1 || !k.phases[0].loops.empty() || !k.phases[0].reductions.empty()) return -1;
  const auto& stores = k.phases[0].stores;
  if (stores.size() != 1) return -1;
  const Store& st = stores[0];
  const Buffer& dst = p.buffers[st.buffer];
  const Buffer& out = p.buffers[g.out];
  bool kind = dst.kind == BufferKind::Temp || dst.kind == BufferKind::Output || dst.kind == BufferKind::Shared;
  if (!kind || dst.dtype != out.dtype || st.value->op != ExprOp::Load || st.value->ival != g.out ||
      st.value->a != st.index)
    return -1;
  if (st.buffer == g.a.buffer || st.buffer == g.b.buffer || st.buffer == g.bias) return -1;
  int64_t total = numel(out.sizes);
  if (dst.strides != contiguous_strides(dst.sizes) || numel(dst.sizes) != total) return -1;
  // Each loop variable's coefficient is the product of the extents inside it, from 1.
  std::vector<std::pair<int64_t, int64_t>> dims;  // (coefficient, extent)
  for (const Loop& l : k.loops) {
    auto c = linear_coefficient(st.index, l.var);
    if (!c) return -1;
    if (l.var->ival > 1) dims.push_back({*c, l.var->ival});
  }
  std::sort(dims.begin(), dims.end());
  int64_t expect = 1;
  for (auto [coefficient, extent] : dims) {
    if (coefficient != expect) return -1;
    expect *= extent;
  }
  std::unordered_map<Expr, Expr> zero;
  for (const Loop& l : k.loops) zero[l.var] = p.ctx->int_const(0);
  return expect == total && is_const_int(p.ctx->substitute(st.index, zero), 0) ? st.buffer : -1;
}

}  // namespace

void run_gemm_bias(KernelProgram& p, const PassOptions& opts) {
  for (size_t si = 0; si < p.steps.size(); ++si) {
    if (p.steps[si].kind != Step::Kind::Gemm) continue;
    GemmCall& g = p.gemms[p.steps[si].index];
    Fold f = find_bias(p, g, opts.gemm_bias_half_only);
    if (f.sums.empty()) continue;
    g.bias = f.bias;
    g.bias_offset = f.offset;
    // Each sum becomes a read of the product's output, which now holds it.
    for (auto& [ki, sums] : f.sums) {
      Kernel& k = p.kernels[ki];
      for (Phase& ph : k.phases) {
        for (Reduction& r : ph.reductions) r.value = p.ctx->substitute(r.value, sums);
        for (Store& st : ph.stores) st.value = p.ctx->substitute(st.value, sums);
      }
      p.fusion_log.push_back(fmt::format("kernel {} adds buf{} to each row of product {}: the product adds it in "
                                         "its epilogue", k.name, g.bias, g.name));
    }
    if (si + 1 == p.steps.size() || p.steps[si + 1].kind != Step::Kind::Kernel) continue;
    int kernel = p.steps[si + 1].index;
    int dst = copy_target(p, g, p.kernels[kernel]);
    if (dst < 0 || f.sums.size() != 1) continue;
    // Left a copy: the product writes its destination and the kernel goes.
    p.fusion_log.push_back(fmt::format("kernel {} is left a copy of product {}: the product writes buf{} and the "
                                       "kernel goes", p.kernels[kernel].name, g.name, dst));
    g.out = dst;
    p.kernels.erase(p.kernels.begin() + kernel);
    p.steps.erase(p.steps.begin() + static_cast<std::ptrdiff_t>(si) + 1);
    for (Step& st : p.steps)
      if (st.kind == Step::Kind::Kernel && st.index > kernel) --st.index;
    for (GemmCall& other : p.gemms)
      if (other.epilogue > kernel) --other.epilogue;
  }
}

}  // namespace kiln::passes
