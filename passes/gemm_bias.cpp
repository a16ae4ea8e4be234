/// \file gemm_bias.cpp
/// Note [Bias in the product]
/// A linear layer is a product and a bias: `x @ w.T + b`, or addmm, which the tracer records
/// as the same two nodes. On CUDA the product is a cuBLAS call and the bias a kernel after it
/// that reads the whole product back and writes it again. cuBLASLt adds a bias vector to every
/// row in the product's epilogue, while the result is still in registers; eager's F.linear on
/// CUDA does the same. This pass hands it the bias when the kernel after the product does
/// nothing else, and drops the kernel: one pass over the output instead of three.
///
/// What makes that valid, checked here on the loop IR:
///  - the kernel's only work is one store `dst[idx] = out[idx] + bias[col]` (either order; for
///    float16/bfloat16, the sum of the two float32 values rounded once), where `out` is the
///    product's output and `idx` visits every element of it once, in row-major order: each loop
///    variable's coefficient in idx is the product of the extents of the loops inside it;
///  - `col` is the element's column: the loops with coefficients under N (the row length) cover
///    exactly N, and the bias index has their coefficients and no others, plus a constant offset;
///  - nothing else reads `out` (a temporary) and `dst` is dense with the product's dtype, so the
///    product may write dst directly; the bias has the output's dtype, as cuBLASLt requires;
///  - float32, float16 and bfloat16 only, one matrix (no batch), M, N and K in [2, 65535 * 32),
///    and no -0 fix-up (zero_start): the cases eager's F.linear gives cuBLASLt's epilogue too.
/// The sum rounds once: for a half product, eager's addmm (F.linear) rounds once too, while a
/// written-out `x @ w.T + b` rounds the product first; the two differ by at most one rounding
/// of the result.
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

bool read_elsewhere(const KernelProgram& p, int buffer, size_t kernel) {
  for (size_t i = 0; i < p.kernels.size(); ++i) {
    if (i == kernel) continue;
    for (Expr e : p.kernels[i].exprs())
      for (Expr l : buffer_loads(e))
        if (l->ival == buffer) return true;
  }
  for (const GemmCall& g : p.gemms)
    if (g.a.buffer == buffer || g.b.buffer == buffer || g.bias == buffer) return true;
  for (const ExternCall& e : p.externs)
    if (std::count(e.inputs.begin(), e.inputs.end(), buffer)) return true;
  for (const OutputSpec& o : p.outputs)
    if (o.kind == OutputSpec::Kind::Buffer && o.index == buffer) return true;
  return false;
}

/// What folds: each bias sum the product takes over (-> its load of the product's output),
/// the bias buffer and its constant offset.
struct Fold {
  std::unordered_map<Expr, Expr> sums;
  int bias = -1;
  int64_t offset = 0;
};

/// Whether `idx` (a load of the product's output) visits each of its `total` elements once in
/// row-major order over `loops`, and `bidx` is the element's column (rows of N) plus a constant,
/// returned in `offset`.
bool row_bias_index(Context& ctx, const std::vector<Loop>& loops, Expr idx, Expr bidx, int64_t N, int64_t total,
                    int64_t* offset) {
  std::unordered_map<Expr, Expr> zero;
  std::vector<std::pair<int64_t, int64_t>> dims;  // (coefficient in idx, extent)
  int64_t cols = 1;
  for (const Loop& l : loops) {
    zero[l.var] = ctx.int_const(0);
    auto cs = linear_coefficient(idx, l.var), cb = linear_coefficient(bidx, l.var);
    if (!cs || !cb) return false;
    if (l.var->ival == 1) continue;  // a loop of one iteration adds nothing
    dims.push_back({*cs, l.var->ival});
    if (*cs < N) {
      cols *= l.var->ival;
      if (*cb != *cs) return false;
    } else if (*cb != 0) {
      return false;
    }
  }
  std::sort(dims.begin(), dims.end());
  int64_t expect = 1;
  for (auto [coefficient, extent] : dims) {
    if (coefficient != expect) return false;
    expect *= extent;
  }
  if (expect != total || cols != N) return false;
  Expr base = ctx.substitute(idx, zero), bias_base = ctx.substitute(bidx, zero);
  if (!is_const_int(base, 0) || !is_const(bias_base)) return false;
  *offset = bias_base->ival;
  return true;
}

/// The bias sums of kernel `k` that product `g` may take over, or an empty Fold.
Fold find_bias(KernelProgram& p, const GemmCall& g, size_t kernel) {
  const Kernel& k = p.kernels[kernel];
  DType t = p.buffers[g.out].dtype;
  if (t != DType::Float32 && !is_half(t)) return {};
  if (g.zero_start || g.bias >= 0) return {};
  // One matrix: eager's F.linear uses this epilogue only there, so that is where it is proven.
  const Sizes& as = g.a.sizes;
  if (std::accumulate(as.begin(), as.end() - 2, int64_t{1}, std::multiplies<int64_t>()) != 1) return {};
  // Eager's bounds for the same epilogue (no dim of 1, none of 65535 * 32 or more).
  for (int64_t d : {as[as.size() - 2], as.back(), g.b.sizes.back()})
    if (d <= 1 || d >= 65535 * 32) return {};
  if (p.buffers[g.out].kind != BufferKind::Temp || read_elsewhere(p, g.out, kernel)) return {};
  int64_t N = g.b.sizes.back(), total = numel(p.buffers[g.out].sizes);
  // Every read of the product's output is an operand of a bias sum, and nothing else reads it
  // (nor, for a half sum, the cast it reads it through).
  std::set<Expr> seen;
  std::map<Expr, int> uses;  // node -> operand slots that read it
  for (Expr e : k.exprs())
    visit(e, seen, [&](Expr x) {
      for (int i = 0; i < expr_op_arity(x->op); ++i)
        if (x->operand(i)) ++uses[x->operand(i)];
    });
  Fold f;
  for (const Phase& ph : k.phases) {
    std::vector<Loop> loops = k.loops;
    loops.insert(loops.end(), ph.loops.begin(), ph.loops.end());
    std::vector<Expr> roots;
    for (const Reduction& r : ph.reductions) roots.push_back(r.value);
    for (const Store& st : ph.stores) roots.push_back(st.value);
    for (Expr root : roots)
      if (root->op == ExprOp::Load && root->ival == g.out) return {};  // the product itself, stored
    std::set<Expr> phase_seen;
    std::set<Expr> out_loads;
    std::vector<std::tuple<Expr, Expr, Expr>> phase_sums;  // (sum, its load of the output, its bias load)
    for (Expr root : roots)
      visit(root, phase_seen, [&](Expr x) {
        if (x->op == ExprOp::Load && x->ival == g.out) out_loads.insert(x);
        auto [out_load, bias] = summed_loads(x, t, g.out);
        if (out_load) phase_sums.push_back({x, out_load, bias});
      });
    std::set<Expr> summed;
    for (auto [sum, out_load, bias] : phase_sums) {
      Expr via = out_load;  // what the add reads: the load, or (half) the cast of it
      if (is_half(t)) via = sum->a->a->a == out_load ? sum->a->a : sum->a->b;
      if (uses[out_load] != 1 || uses[via] != 1) return {};
      if (f.bias >= 0 && f.bias != bias->ival) return {};
      int64_t offset = 0;
      if (!row_bias_index(*p.ctx, loops, out_load->a, bias->a, N, total, &offset)) return {};
      if (f.bias >= 0 && f.offset != offset) return {};
      f.bias = static_cast<int>(bias->ival);
      f.offset = offset;
      f.sums[sum] = out_load;
      summed.insert(out_load);
    }
    if (summed != out_loads) return {};  // a read of the product outside a bias sum
  }
  if (f.sums.empty()) return {};
  if (f.bias == g.a.buffer || f.bias == g.b.buffer || f.bias == g.out) return {};
  for (const Phase& ph : k.phases)
    for (const Store& st : ph.stores)
      if (st.buffer == f.bias || st.buffer == g.out) return {};
  const Buffer& b = p.buffers[f.bias];
  if (f.offset < 0 || f.offset + N > b.storage_numel() || b.dtype != t) return {};
  return f;
}

/// Whether kernel `k` now only copies the product's output `out` into a dense buffer of its
/// dtype that the product may write instead.
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
  if (dst.strides != contiguous_strides(dst.sizes) || numel(dst.sizes) != numel(out.sizes)) return -1;
  return st.buffer;
}

}  // namespace

void run_gemm_bias(KernelProgram& p, const PassOptions&) {
  for (size_t si = 0; si + 1 < p.steps.size(); ++si) {
    const Step& s = p.steps[si];
    const Step& next = p.steps[si + 1];
    if (s.kind != Step::Kind::Gemm || next.kind != Step::Kind::Kernel) continue;
    GemmCall& g = p.gemms[s.index];
    int kernel = next.index;
    Kernel& k = p.kernels[kernel];
    Fold f = find_bias(p, g, static_cast<size_t>(kernel));
    if (f.sums.empty()) continue;
    g.bias = f.bias;
    g.bias_offset = f.offset;
    // Each sum becomes a read of the product's output, which now holds it.
    for (Phase& ph : k.phases) {
      for (Reduction& r : ph.reductions) r.value = p.ctx->substitute(r.value, f.sums);
      for (Store& st : ph.stores) st.value = p.ctx->substitute(st.value, f.sums);
    }
    p.fusion_log.push_back(fmt::format("kernel {} adds buf{} to each row of product {}: the product adds it in "
                                       "its epilogue", k.name, g.bias, g.name));
    int dst = copy_target(p, g, k);
    if (dst < 0) continue;
    // Left a copy: the product writes its destination and the kernel goes.
    p.fusion_log.push_back(fmt::format("kernel {} is left a copy of product {}: the product writes buf{} and the "
                                       "kernel goes", k.name, g.name, dst));
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
