/// \file compile_cpu.cpp
/// The CPU compile driver (see compile_cpu.h).
#include "runtime/compile_cpu.h"

#include <fmt/format.h>

#include <chrono>

#include "passes/pipeline.h"
#include "runtime/debug_dump.h"
#include "support/config.h"
#include "support/error.h"

namespace kiln::runtime {

CpuCompileOptions cpu_options_from_knobs(const std::string& debug_dir) {
  CpuCompileOptions o;
  o.passes.verify = knob_bool("verify");
  o.passes.log_ir = log_enabled("ir");
  o.passes.log_fusion = log_enabled("fusion");
  o.passes.inject_bug = knob("inject_bug");
  o.passes.gemm_bias = true;  // a bfloat16 linear layer's bias, added before its one rounding
  o.passes.gemm_bias_half_only = true;
  o.codegen.opt_level = static_cast<int>(knob_int("opt_level"));
  if (o.codegen.opt_level < 0 || o.codegen.opt_level > 3)
    throw UserError(fmt::format("kiln: KILN_OPT_LEVEL={} is out of range (0-3)", o.codegen.opt_level));
  const std::string& inject = knob("inject_failure");
  if (!inject.empty() && inject != "llvm")
    throw UserError("kiln: KILN_INJECT_FAILURE='" + inject + "' is not a known stage (llvm)");
  o.codegen.inject_llvm_failure = inject == "llvm";
  o.profile = knob_bool("profile");
  o.debug_dir = debug_dir;
  return o;
}

void append_codegen_timings(const cpu::CpuCode& code, int opt_level, std::vector<std::string>* timings) {
  const cpu::JitTimes& jt = code.jit;
  timings->push_back(fmt::format("llvm emit: {:.3f} ms", code.emit_ms));
  timings->push_back(fmt::format("llvm O{}: {:.3f} ms", opt_level, jt.optimize_ms));
  timings->push_back(fmt::format("llvm machine code: {:.3f} ms", jt.machine_code_ms));
  timings->push_back(fmt::format("disk cache ({}): {:.3f} ms", !jt.disk_enabled ? "off" : jt.disk_hit ? "hit" : "miss",
                                 jt.cache_ms));
  timings->push_back(fmt::format("jit load: {:.3f} ms", jt.load_ms));
}

CompiledCpuGraph compile_cpu_graph(const ir::Graph& g, const CpuCompileOptions& opts) {
  auto t0 = std::chrono::steady_clock::now();
  CompiledCpuGraph out;
  DebugDump dump{opts.debug_dir, ""};
  passes::PassOptions popts = opts.passes;
  if (!opts.debug_dir.empty()) popts.dump = [&](const std::string& n, const std::string& t) { dump.write(n, t); };
  popts.timings = &out.timings;
  out.graph_text = ir::print(g);
  ir::KernelProgram kp = passes::run_pipeline(g, popts);
  cpu::CpuCode code = cpu::compile_cpu(kp, opts.codegen);
  append_codegen_timings(code, opts.codegen.opt_level, &out.timings);
  if (popts.dump) {
    dump.write("llvm_ir.ll", code.text.module_ir);
    dump.write("assembly.s", cpu::ir_to_asm(code.text.module_ir));
  }
  out.program = std::make_shared<CompiledProgram>(std::move(kp), std::move(code));
  out.program->set_profiling(opts.profile);
  out.compile_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  out.dump_error = dump.error;
  return out;
}

}  // namespace kiln::runtime
