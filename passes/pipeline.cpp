/// \file pipeline.cpp
/// The pass pipeline, in order, with why each step is there.
#include "passes/pipeline.h"

#include <fmt/format.h>

#include "passes/column_reductions.h"
#include "passes/decompose.h"
#include "passes/drop_unread_stores.h"
#include "passes/fold_batch_norm.h"
#include "passes/gemm_bias.h"
#include "passes/gemm_epilogues.h"
#include "passes/layout.h"
#include "passes/lower_to_loops.h"
#include "passes/simplify.h"

namespace kiln::passes {

ir::KernelProgram run_pipeline(const ir::Graph& captured, const PassOptions& opts) {
  if (opts.verify) ir::verify(captured);
  if (opts.dump) opts.dump("graph.txt", ir::print(captured));
  // An eval batch norm after an eager convolution folds into its weights (Note [Folding batch
  // norm]); before decompose, which takes batch norm apart.
  ir::Graph g = run_graph_pass("fold_batch_norm", run_fold_batch_norm, captured, opts);
  // Composite ops become primitives so that hand-written and library forms lower alike.
  g = run_graph_pass("decompose", run_decompose, g, opts);
  // Shared subexpressions and dead values go before lowering decides what to materialise.
  g = run_graph_pass("simplify", run_simplify, g, opts);
  // Stored values take the layouts the eager ops reading them run fastest on.
  g = run_graph_pass("choose_layouts", run_choose_layouts, g, opts);
  // Loop IR: views become index math, pointwise chains fuse into their consumers' loops.
  ir::KernelProgram p;
  time_step("lower_to_loops", opts, [&] { p = run_lower_to_loops(g, opts); });
  // Reductions along a non-contiguous dim read contiguous columns instead of gathers.
  if (opts.column_reductions) time_step("column_reductions", opts, [&] { run_column_reductions(p, opts); });
  // A bias added after a product is added by the product (cuBLASLt's epilogue; on the CPU, a
  // half product's, which rounds once then). Before the epilogues: it may remove a kernel.
  if (opts.gemm_bias) time_step("gemm_bias", opts, [&] { run_gemm_bias(p, opts); });
  // The kernel after a matrix product runs tile by tile while each tile is in cache.
  if (opts.gemm_epilogues) time_step("gemm_epilogues", opts, [&] { run_gemm_epilogues(p, opts); });
  // Reductions lowering stored for readers that never came (a softmax's max and sum).
  time_step("drop_unread_stores", opts, [&] { run_drop_unread_stores(p, opts); });
  if (opts.log_fusion)
    for (const auto& line : p.fusion_log) fmt::print(stderr, "[kiln fusion] {}\n", line);
  if (opts.dump) {
    std::string text;
    for (const auto& line : p.fusion_log) text += line + "\n";
    opts.dump("fusion.txt", text);
    opts.dump("loop_ir.txt", ir::print(p));
  }
  return p;
}

}  // namespace kiln::passes
