/// \file compiled_program.h
/// A KernelProgram with its machine code, ready to run: the caller binds input and output
/// pointers, the program binds its temporaries from a pool reused across calls, and the kernels
/// run in order on the thread pool.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <vector>

#include "codegen_cpu/cpu_codegen.h"
#include "ir/kernel.h"
#include "runtime/arena_pool.h"

namespace kiln::runtime {

class CompiledProgram {
 public:
  CompiledProgram(ir::KernelProgram program, cpu::CpuCode code);
  /// Shares machine code with other programs: a dynamic program's instances, one per size
  /// (runtime/dynamic_program.h). `code` was compiled from a kernel template that `program`
  /// matches with parameter values `params` (ir/kernel_template.h).
  CompiledProgram(ir::KernelProgram program, std::shared_ptr<const cpu::CpuCode> code,
                  std::vector<int64_t> params = {});
  ~CompiledProgram();

  /// Runs an extern step: reads the operand buffers' pointers in `ptrs`, sets the result
  /// buffers' pointers. Returns false when the op failed (the caller redoes the call eagerly).
  using ExternFn = std::function<bool(const ir::ExternCall&, std::vector<void*>& ptrs)>;
  /// Called before (`before` true) and after each step with its index: the caller allocates the
  /// buffers a step writes first just before it, and drops the ones nothing reads later.
  using StepHook = std::function<void(size_t step, bool before, std::vector<void*>& ptrs)>;

  /// Runs every step. `ptrs` has one entry per buffer; Input, Output and Shared entries are set
  /// by the caller, Temp entries here, Extern entries by `run_extern`. Returns false when a
  /// kernel met an integer division by zero or an extern step failed (the results are then not
  /// valid and the call must be redone eagerly).
  bool run(std::vector<void*>& ptrs, const ExternFn& run_extern = nullptr, const StepHook& hook = nullptr);

  const ir::KernelProgram& program() const { return program_; }
  const cpu::CpuCode& code() const { return *code_; }
  /// Nanoseconds spent in each kernel so far (summed over calls) and the number of calls.
  const std::vector<int64_t>& kernel_ns() const { return kernel_ns_; }
  /// Nanoseconds spent in each matrix-product step so far (profiling only).
  const std::vector<int64_t>& gemm_ns() const { return gemm_ns_; }
  int64_t calls() const { return calls_; }
  void set_profiling(bool on) { profiling_ = on; }
  /// Whether a call's temporaries stay allocated for the next call (the default: no allocation,
  /// no page faults per call) or are freed when it returns. A training step's forward frees
  /// them, as eager frees its intermediates: they would otherwise stay held through the
  /// backward and raise the step's peak memory.
  void set_keep_arenas(bool keep) { keep_arenas_ = keep; }
  /// Takes temporaries from `pool` (shared with other programs: a dynamic program's instances)
  /// instead of a pool of its own.
  void set_arena_pool(std::shared_ptr<ArenaPool> pool) { arenas_ = std::move(pool); }
  size_t arena_bytes() const { return arena_bytes_; }

 private:

  ir::KernelProgram program_;
  std::shared_ptr<const cpu::CpuCode> code_;
  std::vector<int64_t> params_;  // the kernels' parameters (a kernel template's instance)
  std::vector<size_t> temp_offset_;  // per buffer (Temp only), bytes into the arena
  size_t arena_bytes_ = 0;
  std::shared_ptr<ArenaPool> arenas_ = std::make_shared<ArenaPool>();
  std::vector<int64_t> kernel_ns_;
  std::vector<int64_t> gemm_ns_;
  int64_t calls_ = 0;
  bool profiling_ = false;
  bool keep_arenas_ = true;
};

}  // namespace kiln::runtime
