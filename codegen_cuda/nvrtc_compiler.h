/// \file nvrtc_compiler.h
/// CUDA C++ -> PTX / cubin through NVRTC, opened with dlopen at first use (kiln never links
/// it, so a machine without CUDA builds and imports kiln). Compiled kernels are cached in memory
/// and on disk (support/disk_cache.h: KILN_CACHE, KILN_CACHE_DIR), keyed by the source, the
/// target architecture, kiln's version and NVRTC's version.
///
/// Where libnvrtc is looked for, in order: the file named by KILN_NVRTC; the paths given to
/// set_nvrtc_search_paths (Python passes the PyPI wheel's libnvrtc, found on sys.path:
/// nvidia/cu13/lib or nvidia/cuda_nvrtc/lib); the loader's own search (libnvrtc.so,
/// libnvrtc.so.13, libnvrtc.so.12); /usr/local/cuda/lib64.
#pragma once

#include <string>
#include <vector>

namespace kiln::cuda {

/// Library files (or folders holding libnvrtc.so*) to try before the loader's default search.
/// Takes effect if NVRTC has not been opened yet.
void set_nvrtc_search_paths(std::vector<std::string> paths);

/// True when libnvrtc could be opened; otherwise `why` (if given) says what was tried.
bool nvrtc_available(std::string* why = nullptr);
/// The file NVRTC was opened from ("" when unavailable).
std::string nvrtc_library();
/// NVRTC's version as major * 1000 + minor * 10 (12080 for 12.8), 0 when unavailable.
int nvrtc_version();

struct CompiledCuda {
  std::string ptx;    ///< PTX text (for inspection, and the fallback the driver JIT-compiles)
  std::string cubin;  ///< machine code for sm_<arch> (empty when only PTX was asked for)
  std::string log;    ///< NVRTC's messages (warnings)
  double compile_ms = 0;
  bool cached = false;  ///< came from the memory or disk cache
};

/// Compiles `source` (one translation unit; `name` names it in messages) for compute capability
/// `arch` (90 for sm_90). The PTX is always produced (for virtual architecture compute_<arch>);
/// with `want_cubin`, also machine code for sm_<arch>, which the driver loads without a JIT step
/// (and so without needing a driver as new as NVRTC). Options: -default-device, --std=c++17.
/// Throws Unsupported (so kiln falls back to eager) carrying NVRTC's log and the numbered source.
CompiledCuda compile_cuda(const std::string& source, const std::string& name, int arch, bool want_cubin);

/// compile_cuda(...).ptx, with `--gpu-architecture=compute_<arch>`.
std::string compile_to_ptx(const std::string& source, const std::string& name, int arch);

/// Drops the in-memory cache (tests).
void clear_nvrtc_cache();

}  // namespace kiln::cuda
