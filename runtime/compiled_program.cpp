/// \file compiled_program.cpp
/// Temporary arenas and the kernel launch loop.
#include "runtime/compiled_program.h"

#include <chrono>
#include <cstdint>
#include <cstdlib>

#include "runtime/arena_plan.h"
#include "runtime/gemm.h"
#include "runtime/thread_pool.h"
#include "support/error.h"

namespace kiln::runtime {

CompiledProgram::CompiledProgram(ir::KernelProgram program, cpu::CpuCode code)
    : CompiledProgram(std::move(program), std::make_shared<const cpu::CpuCode>(std::move(code))) {}

CompiledProgram::CompiledProgram(ir::KernelProgram program, std::shared_ptr<const cpu::CpuCode> code,
                                 std::vector<int64_t> params)
    : program_(std::move(program)), code_(std::move(code)), params_(std::move(params)) {
  ArenaPlan plan = plan_arena(program_, ArenaPool::kAlign);
  temp_offset_ = std::move(plan.offset);
  arena_bytes_ = plan.bytes;
  kernel_ns_.assign(program_.kernels.size(), 0);
  gemm_ns_.assign(program_.gemms.size(), 0);
}

CompiledProgram::~CompiledProgram() = default;

bool CompiledProgram::run(std::vector<void*>& ptrs, const ExternFn& run_extern, const StepHook& hook) {
  KILN_CHECK(ptrs.size() == program_.buffers.size(), "run with {} pointers for {} buffers", ptrs.size(),
             program_.buffers.size());
  char* arena = arenas_->acquire(arena_bytes_);
  for (size_t i = 0; i < ptrs.size(); ++i)
    if (program_.buffers[i].kind == ir::BufferKind::Temp) ptrs[i] = arena + temp_offset_[i];
  int32_t status = 0;
  // Kernels get the status word and the parameters after the buffers (cpu_codegen.h); the
  // hook and extern steps see the buffers alone.
  auto append_kernel_args = [&] {
    ptrs.push_back(&status);
    ptrs.push_back(const_cast<int64_t*>(params_.data()));
  };
  auto drop_kernel_args = [&] { ptrs.resize(program_.buffers.size()); };
  append_kernel_args();
  ThreadPool& pool = ThreadPool::get();
  bool ok = true;
  size_t skip_before_hook = SIZE_MAX;  // a step whose buffers were allocated early (an epilogue)
  auto call_hook = [&](size_t si, bool before) {
    if (!hook) return;
    drop_kernel_args();
    hook(si, before, ptrs);
    append_kernel_args();
  };
  for (size_t si = 0; si < program_.steps.size(); ++si) {
    const ir::Step& step = program_.steps[si];
    if (si != skip_before_hook) call_hook(si, true);
    if (step.kind == ir::Step::Kind::Extern) {
      KILN_CHECK(run_extern, "program has an extern step but no extern runner");
      drop_kernel_args();
      ok = run_extern(program_.externs[step.index], ptrs);
      append_kernel_args();
      if (!ok) break;
      call_hook(si, false);
      continue;
    }
    if (step.kind == ir::Step::Kind::Gemm) {
      const ir::GemmCall& g = program_.gemms[step.index];
      // Note [Epilogues in cache]: the next step's kernel may run on each tile as it is made;
      // the buffers it writes first are allocated before the product starts.
      bool has_epilogue = g.epilogue >= 0 && si + 1 < program_.steps.size() &&
                          program_.steps[si + 1].kind == ir::Step::Kind::Kernel &&
                          program_.steps[si + 1].index == g.epilogue;
      Epilogue epi{};
      if (has_epilogue) {
        call_hook(si + 1, true);
        epi = {code_->fns[static_cast<size_t>(g.epilogue)], ptrs.data(), g.epilogue_span};
      }
      auto t0 = profiling_ ? std::chrono::steady_clock::now() : std::chrono::steady_clock::time_point{};
      bool ran_epilogue = false;
      if (!run_gemm(g, program_.buffers, ptrs.data(), pool, has_epilogue ? &epi : nullptr, &ran_epilogue)) {
        ok = false;
        break;
      }
      if (profiling_)
        gemm_ns_[step.index] +=
            std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t0).count();
      call_hook(si, false);
      if (has_epilogue) {
        if (ran_epilogue) {
          if (status != 0) break;  // the kernel failed (see below)
          call_hook(si + 1, false);
          ++si;  // its kernel has run
        } else {
          skip_before_hook = si + 1;  // allocated above
        }
      }
      continue;
    }
    size_t k = static_cast<size_t>(step.index);
    const ir::Kernel& kernel = program_.kernels[k];
    cpu::KernelFn fn = code_->fns[k];
    void* const* bufs = ptrs.data();
    auto t0 = profiling_ ? std::chrono::steady_clock::now() : std::chrono::steady_clock::time_point{};
    // Only a parallel outer loop is split across threads: a serial one (a folding scatter's
    // only loop, Note [Scatters]) runs in order on this thread.
    if (!kernel.loops.empty() && kernel.loops[0].kind != ir::LoopKind::Parallel)
      fn(bufs, 0, kernel.outer_extent());
    else
      pool.parallel_for(kernel.outer_extent(), kernel.inner_work(),
                        [fn, bufs](int64_t begin, int64_t end) { fn(bufs, begin, end); });
    if (profiling_)
      kernel_ns_[k] += std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t0).count();
    // A failed kernel (integer division by zero, an index out of range): eager redoes the call
    // and raises; no later step may run, least of all one writing into an argument.
    if (status != 0) break;
    call_hook(si, false);
  }
  drop_kernel_args();
  ++calls_;
  arenas_->release(arena, arena_bytes_, keep_arenas_);
  return ok && status == 0;
}

}  // namespace kiln::runtime
