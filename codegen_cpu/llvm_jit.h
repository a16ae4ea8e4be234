/// \file llvm_jit.h
/// The process-wide ORC LLJIT, behind an interface free of LLVM headers. Each compiled module
/// gets its own resource tracker, so dropping its handle frees its machine code.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace llvm {
class Module;
class LLVMContext;
}  // namespace llvm

namespace kiln::cpu {

/// Machine code of one module in the JIT; frees it on destruction.
class JitModule {
 public:
  virtual ~JitModule() = default;
  /// Address of a function defined by the module; throws if absent.
  virtual void* lookup(const std::string& name) = 0;
};

/// Host target facts, for codegen and cache keys.
struct HostTarget {
  std::string triple;
  std::string cpu;       ///< LLVM's name for the host CPU (may be "generic" on new CPUs)
  std::string features;  ///< always passed to the target machine: "+avx2,+fma,..."
  int vector_bits;       ///< widest vector register the features allow (128/256/512)
};
const HostTarget& host_target();

/// Optimised IR of a module, kept for inspection.
struct ModuleText {
  std::string module_ir;                                          ///< the whole module
  std::vector<std::pair<std::string, std::string>> function_ir;  ///< (name, IR) per definition
};

/// Where one module's compile time went (KILN_LOG=perf, Program.timings).
struct JitTimes {
  double cache_ms = 0;         ///< keying the module and looking it up in the disk cache
  double optimize_ms = 0;      ///< LLVM's O-level pipeline (0 on a disk cache hit)
  double machine_code_ms = 0;  ///< instruction selection to object file (0 on a hit)
  double load_ms = 0;          ///< linking the object into the JIT
  bool disk_hit = false;
  bool disk_enabled = false;
};

/// Optimises `m` at `opt_level` for the host (with glibc's libmvec as the vector math library)
/// and adds it to the JIT, or loads its object from the disk cache. Consumes the module and its
/// context. Fills `text` and `times` when non-null.
std::unique_ptr<JitModule> jit_add_module(std::unique_ptr<llvm::LLVMContext> ctx,
                                          std::unique_ptr<llvm::Module> m, int opt_level,
                                          ModuleText* text, JitTimes* times = nullptr);
/// Assembly text for LLVM IR text, for inspection (kiln.kernels(f)[i].asm).
std::string ir_to_asm(const std::string& ir_text);

}  // namespace kiln::cpu
