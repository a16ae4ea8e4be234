/// \file pass.h
/// Options every pass receives, and the PassRunner that names, times, logs and verifies each
/// step of the pipeline. Passes never read the environment: knobs reach them through here.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "ir/graph.h"

namespace kiln::passes {

struct PassOptions {
  bool verify = false;          ///< run the graph verifier after every pass (KILN_VERIFY)
  bool log_ir = false;          ///< print the graph after each pass that changed it (KILN_LOG=ir)
  bool log_fusion = false;      ///< print every fusion decision with its reason (KILN_LOG=fusion)
  /// Called with (pass name, text) for each artifact worth keeping (KILN_DEBUG_DIR).
  std::function<void(const std::string&, const std::string&)> dump;
  /// Row kernels keep an expensive reduced value in the output for the store phase (Note
  /// [Reusing a reduced value]). Right on CPUs (the row is in L1); on GPUs the round trip goes
  /// through L2/HBM and costs more than recomputing, so the CUDA pipeline turns it off.
  bool reuse_reduced_values = true;
  /// Fold reductions whose kept innermost dim is the contiguous one as vectorised columns
  /// (Note [Column reductions]). A CPU vector layout; the CUDA code generator maps outer loops
  /// to threads, so its pipeline turns it off.
  bool column_reductions = true;
  /// Mark kernels that may run on each tile of the matrix product before them (Note
  /// [Epilogues in cache]); the CUDA runner launches cuBLAS and kernels apart, so it turns it off.
  bool gemm_epilogues = true;
  /// Let a matrix product add the bias vector the kernel after it only adds (Note [Bias in the
  /// product]): cuBLASLt's epilogue on CUDA; on the CPU the bfloat16 GEMM step's.
  bool gemm_bias = false;
  /// ... for half products only: the CPU, where a float32 bias costs nothing in the epilogue
  /// kernel on each tile in cache, and only a half product rounds differently without it.
  bool gemm_bias_half_only = false;
  /// Write a slice assignment into an argument in place (CPU: the runtime stops at the first
  /// failing step, so no write lands after a failure that eager would have raised before it).
  bool inplace_argument_writes = true;
  /// Return an output that is a dense view of an argument as that view (an alias, as eager
  /// does) instead of a copy. The CUDA runner returns buffers only, so it turns this off.
  bool output_views = true;
  /// Store the operands of eager 2-D convolutions channels-last (Note [Channels-last
  /// convolutions]): measured on oneDNN only, so the CUDA pipeline keeps eager's layouts for
  /// cuDNN.
  bool channels_last_convolutions = true;
  /// Test only (KILN_INJECT_BUG): "relu" lowers maximum(x, 0) as x, a planted wrong answer.
  std::string inject_bug;
  /// Filled with one line per pass: "name: 0.12 ms".
  std::vector<std::string>* timings = nullptr;
};

/// Runs `step` and adds "name: ms" to opts.timings (loop-IR passes, which edit in place).
void time_step(const char* name, const PassOptions& opts, const std::function<void()>& step);

/// Runs one graph-to-graph pass with logging, timing and verification around it.
ir::Graph run_graph_pass(const char* name, ir::Graph (*pass)(const ir::Graph&, const PassOptions&),
                         const ir::Graph& g, const PassOptions& opts);

}  // namespace kiln::passes
