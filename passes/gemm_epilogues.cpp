/// \file gemm_epilogues.cpp
/// Note [Epilogues in cache]
/// A matrix product is followed by the kernel that consumes it: bias, activation, residual,
/// the scale and softmax of attention scores, LayerNorm. Run as two steps, the product writes
/// its whole output and the kernel reads it back from wherever it has been evicted to. The
/// runtime cuts a product into tiles (row blocks of one thread, or a batch's whole matrices);
/// when the kernel's outer iterations map onto whole slices of the output, it instead runs the
/// kernel's iterations for a tile on the thread that computed the tile, right after it, while
/// the tile is in that core's cache.
///
/// What makes that valid, checked here on the loop IR:
///  - the kernel is the next step, its outer loop is parallel (iterations independent), and every load of the product's output in it has index
///    `span * i + r` with i its outer (parallel) loop variable and r in [0, span) over its other
///    loops: iteration i reads exactly the span elements starting at i * span;
///  - its outer loop covers the output once (extent * span = the output's elements);
///  - it writes neither operand of the product nor the product's output (tiles still to come
///    read the operands; other iterations would read the output).
/// The runtime (run_gemm) runs the kernel per tile only when every tile boundary falls on a
/// multiple of the span, and as its own step after the product otherwise (a column split).
#include "passes/gemm_epilogues.h"

#include <fmt/format.h>

#include <set>

namespace kiln::passes {
namespace {

using namespace ir;

/// The span of output elements each outer iteration of `k` reads, or 0 when `k` cannot run
/// tile by tile after product `g`.
int64_t epilogue_span(KernelProgram& p, const GemmCall& g, const Kernel& k) {
  // Its outer iterations must be independent: a loop the kernel itself splits across threads.
  if (k.loops.empty() || k.loops[0].kind != LoopKind::Parallel) return 0;
  Expr outer = k.loops[0].var;
  int64_t total = 1;
  for (int64_t s : p.buffers[g.out].sizes) total *= s;
  int64_t span = 0;
  std::set<Expr> seen;
  for (Expr e : k.exprs())
    for (Expr ld : buffer_loads(e)) {
      if (ld->ival != g.out || !seen.insert(ld).second) continue;
      auto c = linear_coefficient(ld->a, outer);
      if (!c || *c <= 0 || (span && *c != span)) return 0;
      span = *c;
      auto [lo, hi] = p.ctx->bounds(p.ctx->substitute(ld->a, {{outer, p.ctx->int_const(0)}}));
      if (lo < 0 || hi >= span) return 0;
    }
  if (span == 0 || outer->ival * span != total) return 0;
  for (const Phase& ph : k.phases)
    for (const Store& s : ph.stores)
      if (s.buffer == g.out || s.buffer == g.a.buffer || s.buffer == g.b.buffer) return 0;
  return span;
}

}  // namespace

void run_gemm_epilogues(KernelProgram& p, const PassOptions&) {
  for (size_t si = 0; si + 1 < p.steps.size(); ++si) {
    const Step& s = p.steps[si];
    const Step& next = p.steps[si + 1];
    if (s.kind != Step::Kind::Gemm || next.kind != Step::Kind::Kernel) continue;
    GemmCall& g = p.gemms[s.index];
    const Kernel& k = p.kernels[next.index];
    int64_t span = epilogue_span(p, g, k);
    if (!span) continue;
    g.epilogue = next.index;
    g.epilogue_span = span;
    p.fusion_log.push_back(fmt::format(
        "kernel {} runs on each tile of product {} as the tile is computed (each iteration reads {} of its elements)",
        k.name, g.name, span));
  }
}

}  // namespace kiln::passes
