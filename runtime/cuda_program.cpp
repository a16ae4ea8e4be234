/// \file cuda_program.cpp
/// Compilation of a program's kernels (emit + NVRTC) and the launch loop.
#include "runtime/cuda_program.h"

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <exception>
#include <thread>

#include "codegen_cuda/nvrtc_compiler.h"
#include "runtime/cublas.h"
#include "runtime/cublaslt.h"
#include "support/error.h"

namespace kiln::runtime {

CudaProgram::CudaProgram(ir::KernelProgram program, int arch, bool want_cubin)
    : program_(std::move(program)), arch_(arch) {
  for (const auto& g : program_.gemms) {
    std::string why = cublas_unsupported(g, program_.buffers);
    KILN_UNSUPPORTED_IF(want_cubin && !why.empty(), "kiln: cuBLAS cannot run {}", why);
    products_.push_back(cublas_product(g));
  }
  auto t0 = std::chrono::steady_clock::now();
  // Emission reads the program's shared expression context: one kernel after another.
  kernels_.resize(program_.kernels.size());
  for (size_t i = 0; i < kernels_.size(); ++i) {
    CudaKernel& k = kernels_[i];
    k.name = program_.kernels[i].name;
    k.source = cuda::emit_cuda_kernel(program_, i, k.name, &k.shape);
    may_fail_ |= k.shape.may_fail;
  }
  // NVRTC, most of a cold compile, runs on several threads (each kernel is its own program).
  std::vector<std::exception_ptr> errors(kernels_.size());
  auto compile = [&](size_t i) {
    try {
      CudaKernel& k = kernels_[i];
      cuda::CompiledCuda c = cuda::compile_cuda(k.source, k.name, arch, want_cubin);
      k.ptx = std::move(c.ptx);
      k.cubin = std::move(c.cubin);
      k.nvrtc_log = std::move(c.log);
      k.compile_ms = c.compile_ms;
      k.cached = c.cached;
    } catch (...) {
      errors[i] = std::current_exception();
    }
  };
  size_t workers = std::min<size_t>(kernels_.size(), std::max(1u, std::thread::hardware_concurrency()));
  std::atomic<size_t> next{0};
  auto worker = [&] {
    for (size_t i = next++; i < kernels_.size(); i = next++) compile(i);
  };
  std::vector<std::thread> threads;
  for (size_t w = 1; w < workers; ++w) threads.emplace_back(worker);
  worker();
  for (auto& t : threads) t.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);  // the first kernel's error, as a serial compile gives
  compile_ms_ = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

CudaProgram::~CudaProgram() = default;

bool CudaProgram::status_ok(uint64_t status, CuStream stream) {
  int32_t flag = 0;
  cuda_read_sync(&flag, status, sizeof flag, stream, "reading kiln's status word");
  return flag == 0;
}

const CudaProgram::Loaded& CudaProgram::loaded_for(int device) {
  CuContext ctx = cuda_current_context(device);
  std::lock_guard<std::mutex> lock(mu_);
  auto it = loaded_.find(ctx);
  if (it != loaded_.end()) return *it->second;
  auto l = std::make_unique<Loaded>();
  for (const CudaKernel& k : kernels_) {
    // Machine code when we have it: loading PTX needs a driver at least as new as NVRTC.
    l->modules.push_back(std::make_unique<CudaModule>(k.cubin.empty() ? k.ptx : k.cubin, k.name));
    l->fns.push_back(l->modules.back()->function(k.name));
  }
  return *loaded_.emplace(ctx, std::move(l)).first->second;
}

void CudaProgram::load(int device) {
  std::string why;
  for (const auto& g : program_.gemms) {
    bool lt = needs_cublaslt(g);
    KILN_UNSUPPORTED_IF(lt ? !cublaslt_available(&why) : !cublas_available(&why), "kiln: {}", why);
  }
  loaded_for(device);  // makes the device's context current
  // A product cuBLASLt cannot plan makes the capture eager now, not a later call fail.
  for (const auto& g : program_.gemms) {
    if (!needs_cublaslt(g)) continue;
    why = cublaslt_prepare(g, program_.buffers);
    KILN_UNSUPPORTED_IF(!why.empty(), "kiln: cuBLASLt cannot run {} with its bias ({}); KILN_CUDA_BIAS_EPILOGUE=0 "
                        "adds the bias in a kernel instead", g.name, why);
  }
}

bool CudaProgram::run(std::vector<uint64_t> ptrs, uint64_t stream_handle, int device, const ExternFn& run_extern) {
  KILN_CHECK(ptrs.size() == program_.buffers.size() + 1, "CudaProgram::run with {} pointers for {} buffers + status",
             ptrs.size(), program_.buffers.size());
  const Loaded& l = loaded_for(device);
  CuStream stream = reinterpret_cast<CuStream>(static_cast<uintptr_t>(stream_handle));
  uint64_t status = ptrs.back();
  last_failure_.clear();
  if (may_fail_) {
    KILN_CHECK(status != 0, "a program that can fail needs a status word");
    cuda_memset32(status, 0, 1, stream, "clearing kiln's status word");
  }
  std::vector<uint64_t> values;
  std::vector<void*> args;
  for (const ir::Step& step : program_.steps) {
    if (step.kind == ir::Step::Kind::Gemm) {
      const ir::GemmCall& g = program_.gemms[step.index];
      if (!needs_cublaslt(g)) {
        cublas_gemm(g, products_[step.index], program_.buffers, ptrs, stream);
        continue;
      }
      std::string why = cublaslt_gemm(g, products_[step.index], program_.buffers, ptrs, stream);
      if (!why.empty()) {
        last_failure_ = why;  // eager redoes the call
        return false;
      }
      continue;
    }
    if (step.kind == ir::Step::Kind::Extern) {
      KILN_CHECK(run_extern, "CudaProgram::run: the program has extern steps and no callback runs them");
      if (may_fail_ && !status_ok(status, stream)) return false;
      if (!run_extern(static_cast<size_t>(step.index), ptrs)) return false;
      continue;
    }
    size_t k = static_cast<size_t>(step.index);
    const CudaKernel& kern = kernels_[k];
    int64_t grid = kern.shape.grid();
    if (grid == 0) continue;
    values.clear();
    for (int b : kern.shape.buffers) values.push_back(ptrs[b]);
    values.push_back(status);
    args.clear();
    for (auto& v : values) args.push_back(&v);
    cuda_launch(l.fns[k], grid, kern.shape.block, args.data(), stream, kern.name);
  }
  ++calls_;
  if (!may_fail_) return true;
  return status_ok(status, stream);
}

}  // namespace kiln::runtime
