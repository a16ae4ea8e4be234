/// \file runtime_library.h
/// Opening the CUDA libraries at run time (libcuda, cuBLAS, cuBLASLt), so that the build needs
/// none of them: binding an entry point, and a library that takes a file named first (PyTorch's
/// copy, which the Python side finds in /proc/self/maps) before searching its sonames.
#pragma once

#include <dlfcn.h>

#include <initializer_list>
#include <mutex>
#include <string>

namespace kiln::runtime {

/// Points `*fn` at entry point `name` of library `h`; false when it is missing.
template <class F>
bool bind_symbol(void* h, const char* name, F* fn) {
  *fn = reinterpret_cast<F>(dlsym(h, name));
  return *fn != nullptr;
}

/// A library found at run time: the preferred file, else the first soname that opens.
class RuntimeLibrary {
 public:
  /// `preferred_flags`: how the preferred file opens; RTLD_NOLOAD takes it only when it is
  /// already in the process.
  explicit RuntimeLibrary(int preferred_flags) : preferred_flags_(preferred_flags) {}

  /// Names the file to try first (before the first open).
  void prefer(const std::string& path) {
    std::lock_guard<std::mutex> lock(mu_);
    preferred_ = path;
  }

  /// The library's handle, or nullptr when no candidate opens.
  void* open(std::initializer_list<const char*> sonames) {
    void* h = nullptr;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!preferred_.empty()) h = dlopen(preferred_.c_str(), RTLD_NOW | preferred_flags_);
    }
    for (const char* so : sonames)
      if (!h) h = dlopen(so, RTLD_NOW | RTLD_LOCAL);
    return h;
  }

 private:
  int preferred_flags_;
  std::mutex mu_;
  std::string preferred_;
};

}  // namespace kiln::runtime
