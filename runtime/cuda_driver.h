/// \file cuda_driver.h
/// The CUDA driver API, opened with dlopen("libcuda.so.1") at first use: kiln never links it,
/// so a machine without a driver or a GPU builds, imports kiln and is told, cleanly, that CUDA
/// is unavailable. Every driver call's status is checked; a failure throws CudaError naming the
/// call and what it was for (the kernel being loaded or launched).
///
/// kiln allocates nothing here: device memory comes from PyTorch's allocator (Python passes raw
/// device pointers), kernels run on the stream PyTorch passes in, and modules are loaded into
/// the context current on the calling thread (PyTorch's primary context of the device).
#pragma once

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace kiln::runtime {

/// A failed CUDA driver call (Python: kiln._C.CudaError, a RuntimeError).
struct CudaError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// True when libcuda opens, cuInit succeeds and there is at least one device; otherwise
/// `why` (if given) says which step failed. Never throws.
bool cuda_available(std::string* why = nullptr);
int cuda_device_count();
/// Compute capability as major * 10 + minor (90 for an H100).
int cuda_compute_capability(int device);
int cuda_multiprocessor_count(int device);

/// Opaque driver handles (CUcontext, CUfunction, CUstream) as kiln passes them around.
using CuContext = void*;
using CuFunction = void*;
using CuStream = void*;

/// The context current on this thread; if there is none, the primary context of `device`
/// (retained, and made current), which is the one PyTorch uses.
CuContext cuda_current_context(int device);

/// A module (cubin or PTX image) loaded into the current context; unloaded on destruction.
class CudaModule {
 public:
  /// `what` names the module in errors (a kernel name).
  CudaModule(const std::string& image, const std::string& what);
  ~CudaModule();
  CudaModule(const CudaModule&) = delete;
  CudaModule& operator=(const CudaModule&) = delete;
  CuFunction function(const std::string& name) const;

 private:
  void* module_ = nullptr;
  std::string what_;
};

/// Launches `fn` on a 1-D grid. `args` points at each parameter's value, as cuLaunchKernel takes.
void cuda_launch(CuFunction fn, int64_t grid, int block, void** args, CuStream stream, const std::string& kernel);
/// Fills `count` 32-bit words at device address `ptr` with `value`, asynchronously on `stream`.
void cuda_memset32(uint64_t ptr, uint32_t value, size_t count, CuStream stream, const std::string& what);
/// Copies `bytes` from device address `src` to host memory and waits for `stream` to finish.
void cuda_read_sync(void* dst, uint64_t src, size_t bytes, CuStream stream, const std::string& what);

}  // namespace kiln::runtime
