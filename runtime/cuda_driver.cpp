/// \file cuda_driver.cpp
/// The driver function table behind cuda_driver.h: opened once, lazily, with the few types it
/// needs declared here (no CUDA header needed to build).
#include "runtime/cuda_driver.h"

#include <dlfcn.h>
#include <fmt/format.h>

#include <mutex>

#include "runtime/runtime_library.h"

namespace kiln::runtime {

namespace {

using CUresult = int;
using CUdevice = int;
using CUdeviceptr = unsigned long long;
constexpr int kAttrMultiprocessorCount = 16;   // CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT
constexpr int kAttrComputeMajor = 75;          // CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR
constexpr int kAttrComputeMinor = 76;          // CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR

struct Driver {
  void* handle = nullptr;
  std::string why;  // why CUDA is unavailable ("" when it is available)
  int devices = 0;
  CUresult (*Init)(unsigned) = nullptr;
  CUresult (*DeviceGetCount)(int*) = nullptr;
  CUresult (*DeviceGet)(CUdevice*, int) = nullptr;
  CUresult (*DeviceGetAttribute)(int*, int, CUdevice) = nullptr;
  CUresult (*CtxGetCurrent)(void**) = nullptr;
  CUresult (*CtxSetCurrent)(void*) = nullptr;
  CUresult (*DevicePrimaryCtxRetain)(void**, CUdevice) = nullptr;
  CUresult (*ModuleLoadData)(void**, const void*) = nullptr;
  CUresult (*ModuleGetFunction)(void**, void*, const char*) = nullptr;
  CUresult (*ModuleUnload)(void*) = nullptr;
  CUresult (*LaunchKernel)(void*, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, void*, void**,
                           void**) = nullptr;
  CUresult (*GetErrorString)(CUresult, const char**) = nullptr;
  CUresult (*GetErrorName)(CUresult, const char**) = nullptr;
  CUresult (*MemsetD32Async)(CUdeviceptr, unsigned, size_t, void*) = nullptr;
  CUresult (*MemcpyDtoHAsync)(void*, CUdeviceptr, size_t, void*) = nullptr;
  CUresult (*StreamSynchronize)(void*) = nullptr;
};

Driver& driver_table() {
  static Driver* d = [] {
    auto* d = new Driver();  // never closed: modules may outlive any owner we could name
    void* h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!h) {
      const char* e = dlerror();
      d->why = fmt::format("no CUDA driver (libcuda.so.1 could not be opened: {})", e ? e : "not found");
      return d;
    }
    bool ok = bind_symbol(h, "cuInit", &d->Init) && bind_symbol(h, "cuDeviceGetCount", &d->DeviceGetCount) &&
              bind_symbol(h, "cuDeviceGet", &d->DeviceGet) &&
              bind_symbol(h, "cuDeviceGetAttribute", &d->DeviceGetAttribute) &&
              bind_symbol(h, "cuCtxGetCurrent", &d->CtxGetCurrent) &&
              bind_symbol(h, "cuCtxSetCurrent", &d->CtxSetCurrent) &&
              bind_symbol(h, "cuDevicePrimaryCtxRetain", &d->DevicePrimaryCtxRetain) &&
              bind_symbol(h, "cuModuleLoadData", &d->ModuleLoadData) &&
              bind_symbol(h, "cuModuleGetFunction", &d->ModuleGetFunction) &&
              bind_symbol(h, "cuModuleUnload", &d->ModuleUnload) &&
              bind_symbol(h, "cuLaunchKernel", &d->LaunchKernel) &&
              bind_symbol(h, "cuGetErrorString", &d->GetErrorString) &&
              bind_symbol(h, "cuGetErrorName", &d->GetErrorName) &&
              bind_symbol(h, "cuMemsetD32Async", &d->MemsetD32Async) &&
              bind_symbol(h, "cuMemcpyDtoHAsync_v2", &d->MemcpyDtoHAsync) &&
              bind_symbol(h, "cuStreamSynchronize", &d->StreamSynchronize);
    if (!ok) {
      d->why = "the CUDA driver lacks an entry point kiln needs (driver too old?)";
      return d;
    }
    CUresult r = d->Init(0);
    if (r != 0) {
      const char* name = nullptr;
      d->GetErrorName(r, &name);
      d->why = fmt::format("cuInit failed: {} (no usable GPU?)", name ? name : std::to_string(r));
      return d;
    }
    if (d->DeviceGetCount(&d->devices) != 0 || d->devices == 0) {
      d->why = "the CUDA driver reports no GPU";
      d->devices = 0;
      return d;
    }
    d->handle = h;
    return d;
  }();
  return *d;
}

Driver& driver() {
  Driver& d = driver_table();
  if (!d.handle) throw CudaError("kiln: CUDA is unavailable: " + d.why);
  return d;
}

/// Throws CudaError for a failed call: "kiln: CUDA error in cuLaunchKernel (kernel k0_add):
/// CUDA_ERROR_INVALID_VALUE: invalid argument".
void check(CUresult r, const char* call, const std::string& what) {
  if (r == 0) return;
  Driver& d = driver_table();
  const char* name = nullptr;
  const char* text = nullptr;
  if (d.GetErrorName) d.GetErrorName(r, &name);
  if (d.GetErrorString) d.GetErrorString(r, &text);
  throw CudaError(fmt::format("kiln: CUDA error in {} ({}): {}: {}", call, what, name ? name : std::to_string(r),
                              text ? text : "unknown error"));
}

int attribute(int device, int attr) {
  Driver& d = driver();
  CUdevice dev = 0;
  check(d.DeviceGet(&dev, device), "cuDeviceGet", fmt::format("device {}", device));
  int v = 0;
  check(d.DeviceGetAttribute(&v, attr, dev), "cuDeviceGetAttribute", fmt::format("device {}", device));
  return v;
}

}  // namespace

bool cuda_available(std::string* why) {
  Driver& d = driver_table();
  if (!d.handle && why) *why = d.why;
  return d.handle != nullptr;
}

int cuda_device_count() { return cuda_available() ? driver_table().devices : 0; }

int cuda_compute_capability(int device) {
  return attribute(device, kAttrComputeMajor) * 10 + attribute(device, kAttrComputeMinor);
}

int cuda_multiprocessor_count(int device) { return attribute(device, kAttrMultiprocessorCount); }

CuContext cuda_current_context(int device) {
  Driver& d = driver();
  void* ctx = nullptr;
  check(d.CtxGetCurrent(&ctx), "cuCtxGetCurrent", "finding PyTorch's context");
  if (ctx) return ctx;
  CUdevice dev = 0;
  check(d.DeviceGet(&dev, device), "cuDeviceGet", fmt::format("device {}", device));
  check(d.DevicePrimaryCtxRetain(&ctx, dev), "cuDevicePrimaryCtxRetain", fmt::format("device {}", device));
  check(d.CtxSetCurrent(ctx), "cuCtxSetCurrent", fmt::format("device {}", device));
  return ctx;
}

CudaModule::CudaModule(const std::string& image, const std::string& what) : what_(what) {
  check(driver().ModuleLoadData(&module_, image.data()), "cuModuleLoadData", "kernel " + what);
}

CudaModule::~CudaModule() {
  // Errors are ignored: at exit the context may already be gone, and with it the module.
  if (module_) driver_table().ModuleUnload(module_);
}

CuFunction CudaModule::function(const std::string& name) const {
  void* fn = nullptr;
  check(driver().ModuleGetFunction(&fn, module_, name.c_str()), "cuModuleGetFunction", "kernel " + name);
  return fn;
}

void cuda_launch(CuFunction fn, int64_t grid, int block, void** args, CuStream stream, const std::string& kernel) {
  if (grid <= 0) return;
  if (grid > 0x7fffffff) throw CudaError(fmt::format("kiln: kernel {}: grid of {} blocks is too large", kernel, grid));
  check(driver().LaunchKernel(fn, static_cast<unsigned>(grid), 1, 1, static_cast<unsigned>(block), 1, 1, 0, stream,
                              args, nullptr),
        "cuLaunchKernel", "kernel " + kernel);
}

void cuda_memset32(uint64_t ptr, uint32_t value, size_t count, CuStream stream, const std::string& what) {
  check(driver().MemsetD32Async(ptr, value, count, stream), "cuMemsetD32Async", what);
}

void cuda_read_sync(void* dst, uint64_t src, size_t bytes, CuStream stream, const std::string& what) {
  Driver& d = driver();
  check(d.MemcpyDtoHAsync(dst, src, bytes, stream), "cuMemcpyDtoHAsync", what);
  check(d.StreamSynchronize(stream), "cuStreamSynchronize", what);
}

}  // namespace kiln::runtime
