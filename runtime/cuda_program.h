/// \file cuda_program.h
/// A KernelProgram compiled for a CUDA device: each kernel's source, PTX, machine code and
/// launch shape, and the launch loop. Building one needs NVRTC but no GPU (kiln.codegen uses
/// that); running one loads the modules into the current context on first use.
///
/// Memory is the caller's: `run` takes one device pointer per buffer of the program (inputs,
/// outputs and temporaries, all allocated by PyTorch) and then one to a 32-bit status word.
/// Extern steps (ops kiln runs eagerly, a convolution) are the caller's too: `run` calls back
/// for each, between launches on the same stream, and takes the pointers of its results.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "codegen_cuda/cuda_source.h"
#include "ir/kernel.h"
#include "runtime/cublas.h"
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
  /// Runs extern step `externs[index]` (an eager op, enqueued on the program's stream) and
  /// points `ptrs` at its results' buffers; false when the op failed (eager redoes the call).
  using ExternFn = std::function<bool(size_t index, std::vector<uint64_t>& ptrs)>;

  /// Emits and compiles every kernel for compute capability `arch` (90: sm_90). With
  /// `want_cubin`, machine code is compiled too (what run() loads), and every matrix product
  /// must be one cuBLAS can run (else Unsupported).
  CudaProgram(ir::KernelProgram program, int arch, bool want_cubin);
  ~CudaProgram();

  /// Runs every step (kernels, cuBLAS products, and extern steps through `run_extern`) in order
  /// on `stream` (a CUstream; 0 is the default stream). `ptrs`: one device pointer per buffer,
  /// then the status word (may be 0 when !may_fail()); an extern's result buffers may be 0
  /// until it runs. Returns false when a kernel met an integer division by zero or an index out
  /// of range, an extern failed, or cuBLASLt had no algorithm (the call must then be redone
  /// eagerly); only programs that can fail wait for the stream: at the end, and before each
  /// extern step, so an eager op never reads a failed kernel's output (a device-side assert
  /// would end the CUDA context). `device` is the CUDA ordinal the buffers live on.
  bool run(std::vector<uint64_t> ptrs, uint64_t stream, int device, const ExternFn& run_extern = nullptr);

  /// Loads the modules into the current context (run() does this on first use); throws
  /// Unsupported when the program has matrix products and cuBLAS (or cuBLASLt, for bias
  /// epilogues) cannot be opened, or cuBLASLt cannot plan one of its products.
  void load(int device);

  const ir::KernelProgram& program() const { return program_; }
  const std::vector<CudaKernel>& kernels() const { return kernels_; }
  int arch() const { return arch_; }
  /// Some kernel can flag an integer division by zero (run() then reads the status back).
  bool may_fail() const { return may_fail_; }
  double compile_ms() const { return compile_ms_; }
  int64_t calls() const { return calls_; }
  /// Why the last run() returned false when no kernel or extern did it (cuBLASLt had no
  /// algorithm for its pointers); "" otherwise.
  const std::string& last_failure() const { return last_failure_; }

 private:
  struct Loaded {
    std::vector<std::unique_ptr<CudaModule>> modules;
    std::vector<CuFunction> fns;
  };
  const Loaded& loaded_for(int device);
  /// Waits for `stream` and reads the status word: true when no kernel flagged a failure.
  static bool status_ok(uint64_t status, CuStream stream);

  ir::KernelProgram program_;
  std::vector<CudaKernel> kernels_;
  std::vector<CublasProduct> products_;  ///< per matrix product: its cuBLAS shape, computed once
  int arch_;
  bool may_fail_ = false;
  double compile_ms_ = 0;
  int64_t calls_ = 0;
  std::string last_failure_;
  std::mutex mu_;
  std::map<CuContext, std::unique_ptr<Loaded>> loaded_;  // per context (one per device)
};

}  // namespace kiln::runtime
