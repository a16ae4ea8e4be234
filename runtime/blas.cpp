/// \file blas.cpp
/// Opening the BLAS (see blas.h).
#include "runtime/blas.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif
#include <dlfcn.h>

#include <cstring>

#include <map>
#include <mutex>

#include "support/config.h"

namespace kiln::runtime::blas {
namespace {

std::mutex g_mu;
std::string g_preferred;
const Library* g_current = nullptr;  // the library for the knobs as of g_current_epoch
uint64_t g_current_epoch = 0;

/// Resolves the GEMMs of an opened library; empty when it lacks them.
Library from_handle(void* h, const std::string& what) {
  Library lib;
  if (!h) return lib;
  lib.sgemm = reinterpret_cast<SgemmFn>(dlsym(h, "sgemm_"));
  lib.dgemm = reinterpret_cast<DgemmFn>(dlsym(h, "dgemm_"));
  lib.set_threads_local = reinterpret_cast<int (*)(int)>(dlsym(h, "MKL_Set_Num_Threads_Local"));
  if (!lib.ok()) return Library{};
  // OpenBLAS would start threads of its own inside each of kiln's: one thread per call.
  if (auto set = reinterpret_cast<void (*)(int)>(dlsym(h, "openblas_set_num_threads"))) set(1);
  lib.name = (lib.set_threads_local ? "mkl (" : "blas (") + what + ")";
  return lib;
}

Library open_openblas() {
  for (const char* so : {"libopenblas.so.0", "libopenblas.so"}) {
    Library lib = from_handle(dlopen(so, RTLD_NOW | RTLD_LOCAL), so);
    if (lib.ok()) {
      lib.name = std::string("openblas (") + so + ")";
      return lib;
    }
  }
  return Library{};
}

/// torch's MKL when the process has it, else OpenBLAS.
Library open_mkl_or_openblas() {
  if (!g_preferred.empty()) {
    // Only a library the process already has (torch's): never load a second copy of it.
    Library lib = from_handle(dlopen(g_preferred.c_str(), RTLD_NOW | RTLD_NOLOAD), g_preferred);
    if (lib.ok()) return lib;
  }
  return open_openblas();
}

/// Function `name` from the first libdnnl that opens and has it (null if none); `*so` names it.
void* dnnl_symbol(const char* name, const char** so = nullptr) {
  for (const char* lib : {"libdnnl.so.2", "libdnnl.so.3", "libdnnl.so"}) {
    void* h = dlopen(lib, RTLD_NOW | RTLD_LOCAL);
    if (!h) continue;
    if (void* fn = dlsym(h, name)) {
      if (so) *so = lib;
      return fn;
    }
  }
  return nullptr;
}

/// `base` with its float32 products moved to oneDNN's GEMM when libdnnl opens (Note [Which GEMM]).
Library with_dnnl_sgemm(Library base) {
  if (!base.ok()) return base;
  const char* so = nullptr;
  if (auto fn = reinterpret_cast<DnnlSgemmFn>(dnnl_symbol("dnnl_sgemm", &so))) {
    base.dnnl_sgemm = fn;
    base.name = std::string("onednn sgemm (") + so + ") + " + base.name;
  }
  return base;
}

}  // namespace

bool cpu_is_intel() {
#if !defined(__x86_64__) && !defined(__i386__)
  return false;
#else
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid(0, &a, &b, &c, &d)) return false;
  char vendor[13];
  std::memcpy(vendor, &b, 4);
  std::memcpy(vendor + 4, &d, 4);
  std::memcpy(vendor + 8, &c, 4);
  vendor[12] = 0;
  return std::strcmp(vendor, "GenuineIntel") == 0;
#endif
}

namespace {

Library resolve(const std::string& choice) {
  if (choice == "openblas") return open_openblas();
  if (choice == "mkl") return open_mkl_or_openblas();
  if (choice != "auto" && !choice.empty()) return from_handle(dlopen(choice.c_str(), RTLD_NOW | RTLD_LOCAL), choice);
  // MKL dispatches its AVX-512 kernels on Intel CPUs only: there it is as fast as oneDNN and
  // rounds as eager does, so it keeps the float32 products too.
  Library base = open_mkl_or_openblas();
  bool mkl = base.set_threads_local != nullptr;
  return mkl && cpu_is_intel() ? base : with_dnnl_sgemm(base);
}

}  // namespace

DnnlGemmBf16Fn bf16_gemm() {
  static const auto fn = reinterpret_cast<DnnlGemmBf16Fn>(dnnl_symbol("dnnl_gemm_bf16bf16f32"));
  return fn;
}

void prefer(const std::string& path) {
  std::lock_guard<std::mutex> lock(g_mu);
  g_preferred = path;
  g_current = nullptr;
}

const Library& library() {
  // Called once per product step: the knob is looked up again only after a knob changed.
  std::lock_guard<std::mutex> lock(g_mu);
  if (g_current && g_current_epoch == config_epoch()) return *g_current;
  static std::map<std::string, Library> resolved;  // nodes stay put: g_current may point in
  std::string choice = knob("blas") + "|" + g_preferred;
  auto it = resolved.find(choice);
  if (it == resolved.end()) it = resolved.emplace(choice, resolve(knob("blas"))).first;
  g_current = &it->second;
  g_current_epoch = config_epoch();
  return *g_current;
}

}  // namespace kiln::runtime::blas
