/// \file cuda_program.h
/// A KernelProgram compiled for a CUDA device: each kernel's source, PTX, machine code and
/// launch shape, and the launch loop. Building one needs NVRTC but no GPU (kiln.codegen uses
/// that); running one loads the modules into the current context on first use.
///
/// Memory is the caller's: `run` takes one device pointer per buffer of the program (inputs,
/// outputs and temporaries, all allocated by PyTorch) and then one to a 32-bit status word.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "codegen_cuda/cuda_source.h"
#include "ir/kernel.h"
#include "runtime/cuda_driver.h"

namespace kiln::runtime {

struct CudaKernel {
  std::string name;     ///< readable, e.g. k0_mul_add_tanh (also the CUDA function's name)
  std::string source;   ///< CUDA C++ (prelude + one __global__ function)
  std::string ptx;
  std::string cubin;    ///< machine code for the target (empty: the driver JIT-compiles the PTX)
  std::string nvrtc_log;
  cuda::LaunchShape shape;
  double compile_ms = 0;
  bool cached = false;
};

class CudaProgram {
 public:
  /// Emits and compiles every kernel for compute capability `arch` (90: sm_90). With
  /// `want_cubin`, machine code is compiled too (what run() loads), and the program must be
  /// runnable: one with extern (eager fallback) steps throws Unsupported.
  CudaProgram(ir::KernelProgram program, int arch, bool want_cubin);
  ~CudaProgram();

  /// Runs every step (kernels, cuBLAS products) in order on `stream` (a CUstream; 0 is the default stream). `ptrs`: one device
  /// pointer per buffer, then the status word (may be 0 when !may_fail()). Returns false when
  /// a kernel met an integer division by zero (the call must then be redone eagerly); only
  /// such programs wait for the stream. `device` is the CUDA ordinal the buffers live on.
  bool run(const std::vector<uint64_t>& ptrs, uint64_t stream, int device);

  /// Loads the modules into the current context (run() does this on first use); throws
  /// Unsupported when the program has matrix products and cuBLAS cannot be opened.
  void load(int device);

  const ir::KernelProgram& program() const { return program_; }
  const std::vector<CudaKernel>& kernels() const { return kernels_; }
  int arch() const { return arch_; }
  /// Some kernel can flag an integer division by zero (run() then reads the status back).
  bool may_fail() const { return may_fail_; }
  double compile_ms() const { return compile_ms_; }
  int64_t calls() const { return calls_; }

 private:
  struct Loaded {
    std::vector<std::unique_ptr<CudaModule>> modules;
    std::vector<CuFunction> fns;
  };
  const Loaded& loaded_for(int device);

  ir::KernelProgram program_;
  std::vector<CudaKernel> kernels_;
  int arch_;
  bool may_fail_ = false;
  double compile_ms_ = 0;
  int64_t calls_ = 0;
  std::mutex mu_;
  std::map<CuContext, std::unique_ptr<Loaded>> loaded_;  // per context (one per device)
};

}  // namespace kiln::runtime
