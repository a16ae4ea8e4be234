/// \file compile_cpu.h
/// The CPU compile driver: a captured graph -> the pass pipeline -> LLVM machine code -> a
/// CompiledProgram. C++ alone compiles a graph through here (tests, the training driver); the
/// Python bindings only call it.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "ir/graph.h"
#include "passes/pass.h"
#include "runtime/compiled_program.h"

namespace kiln::runtime {

struct CpuCompileOptions {
  passes::PassOptions passes;
  cpu::CodegenOptions codegen;
  bool profile = false;     ///< time every kernel and product (KILN_PROFILE)
  std::string debug_dir;    ///< KILN_DEBUG_DIR folder of this compile; empty: none
};

/// The options the KILN_* knobs ask for (verify, log, opt level, profile, injected bugs and
/// failures); throws UserError for a knob out of range. `debug_dir`: this compile's folder.
CpuCompileOptions cpu_options_from_knobs(const std::string& debug_dir);

/// A compiled graph plus what inspection needs.
struct CompiledCpuGraph {
  std::shared_ptr<CompiledProgram> program;
  std::vector<std::string> timings;  ///< one line per pass and for LLVM
  std::string graph_text;            ///< the captured graph, printed
  double compile_ms = 0;
  std::string dump_error;            ///< why KILN_DEBUG_DIR could not be written ("" if it was)
};

/// Appends the LLVM stages of `code` to a compile's timings (KILN_LOG=perf, Program.timings).
void append_codegen_timings(const cpu::CpuCode& code, int opt_level, std::vector<std::string>* timings);

/// Runs the pipeline and the LLVM code generator on `g`. Throws Unsupported for what kiln
/// cannot compile (the caller runs eagerly instead).
CompiledCpuGraph compile_cpu_graph(const ir::Graph& g, const CpuCompileOptions& opts);

}  // namespace kiln::runtime
