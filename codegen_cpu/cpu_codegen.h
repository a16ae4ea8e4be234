/// \file cpu_codegen.h
/// Loop IR -> LLVM IR -> machine code for the host CPU. Factory-only interface: no LLVM types.
///
/// Each kernel becomes `void name(void* const* buffers, int64_t begin, int64_t end)` running its
/// outer loop over [begin, end), so the runtime's thread pool can split it. `buffers` holds the
/// program's buffers in order, then one `int32_t*` status word: a kernel that meets an integer
/// division by zero stores 1 there (instead of trapping) and the runtime reruns the call eagerly,
/// which raises PyTorch's own error. Last comes the `const int64_t*` array of a kernel
/// template's parameters (ir/kernel_template.h; floats as their float64 bits), or null.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "codegen_cpu/llvm_jit.h"
#include "ir/kernel.h"

namespace kiln::cpu {

using KernelFn = void (*)(void* const* buffers, int64_t begin, int64_t end);

struct CodegenOptions {
  int opt_level = 3;  ///< KILN_OPT_LEVEL
  /// KILN_INJECT_FAILURE=llvm (tests only): the LLVM stage fails as a broken module would, to
  /// prove a failing compile runs the function eagerly with the reason recorded.
  bool inject_llvm_failure = false;
};

/// A program's kernels, compiled and loaded. Frees the machine code on destruction.
struct CpuCode {
  std::vector<KernelFn> fns;             ///< parallel to KernelProgram::kernels
  std::vector<std::string> symbols;      ///< JIT symbol of each kernel
  ModuleText text;                       ///< optimised LLVM IR
  std::unique_ptr<JitModule> module;
  double compile_ms = 0;
  double emit_ms = 0;  ///< building and verifying the LLVM IR
  JitTimes jit;        ///< the rest of compile_ms (optimisation, machine code, disk cache, load)
};

CpuCode compile_cpu(const ir::KernelProgram& p, const CodegenOptions& opts);

}  // namespace kiln::cpu
