/// \file nvrtc_compiler.cpp
/// NVRTC through dlopen (the few entry points kiln uses, declared here so no CUDA header is
/// needed to build), and the two-level cache of compiled kernels.
#include "codegen_cuda/nvrtc_compiler.h"

#include <dlfcn.h>
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <mutex>
#include <optional>
#include <sstream>
#include <unordered_map>

#include "support/disk_cache.h"
#include "support/error.h"
#include "support/hash.h"

#ifndef KILN_VERSION
#define KILN_VERSION "0.0.0"
#endif

namespace kiln::cuda {

namespace {

// The slice of nvrtc.h kiln uses (the ABI has been stable since CUDA 11).
using nvrtcResult = int;
using nvrtcProgram = struct _nvrtcProgram*;

struct Nvrtc {
  void* handle = nullptr;
  std::string path;
  std::string why;  // what was tried, when opening failed
  int version = 0;
  const char* (*GetErrorString)(nvrtcResult) = nullptr;
  nvrtcResult (*Version)(int*, int*) = nullptr;
  nvrtcResult (*CreateProgram)(nvrtcProgram*, const char*, const char*, int, const char* const*,
                               const char* const*) = nullptr;
  nvrtcResult (*DestroyProgram)(nvrtcProgram*) = nullptr;
  nvrtcResult (*CompileProgram)(nvrtcProgram, int, const char* const*) = nullptr;
  nvrtcResult (*GetPTXSize)(nvrtcProgram, size_t*) = nullptr;
  nvrtcResult (*GetPTX)(nvrtcProgram, char*) = nullptr;
  nvrtcResult (*GetCUBINSize)(nvrtcProgram, size_t*) = nullptr;
  nvrtcResult (*GetCUBIN)(nvrtcProgram, char*) = nullptr;
  nvrtcResult (*GetProgramLogSize)(nvrtcProgram, size_t*) = nullptr;
  nvrtcResult (*GetProgramLog)(nvrtcProgram, char*) = nullptr;
};

std::mutex g_mu;
std::vector<std::string> g_search_paths;
Nvrtc* g_nvrtc = nullptr;  // opened once, never closed (kernels may be compiling on other threads)
std::unordered_map<uint64_t, CompiledCuda> g_cache;

/// libnvrtc files inside `dir`, the plain name first, then by descending version.
std::vector<std::string> libraries_in(const std::string& dir) {
  std::vector<std::string> out;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    std::string name = entry.path().filename().string();
    if (name.rfind("libnvrtc.so", 0) == 0) out.push_back(entry.path().string());
  }
  std::sort(out.begin(), out.end(), [](const std::string& a, const std::string& b) {
    if (a.size() != b.size()) return a.size() < b.size();
    return a > b;
  });
  return out;
}

std::vector<std::string> candidates() {
  std::vector<std::string> out;
  if (const char* env = std::getenv("KILN_NVRTC"); env && *env) out.push_back(env);
  for (const auto& p : g_search_paths) {
    std::error_code ec;
    if (std::filesystem::is_directory(p, ec)) {
      for (auto& f : libraries_in(p)) out.push_back(f);
    } else {
      out.push_back(p);
    }
  }
  for (const char* n : {"libnvrtc.so", "libnvrtc.so.13", "libnvrtc.so.12"}) out.push_back(n);
  for (auto& f : libraries_in("/usr/local/cuda/lib64")) out.push_back(f);
  return out;
}

/// libnvrtc opens libnvrtc-builtins.so.<version> by bare name at its first compile, which the
/// loader finds only on its search path; the wheel keeps it beside libnvrtc. Opening it first
/// from there makes that later open find it already loaded.
void preload_builtins(const std::string& nvrtc_path) {
  auto slash = nvrtc_path.rfind('/');
  if (slash == std::string::npos) return;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(nvrtc_path.substr(0, slash), ec)) {
    std::string name = entry.path().filename().string();
    if (name.rfind("libnvrtc-builtins.so", 0) == 0 && name.find(".alt") == std::string::npos)
      dlopen(entry.path().c_str(), RTLD_NOW | RTLD_GLOBAL);
  }
}

template <class F>
bool bind(void* h, const char* name, F* fn) {
  *fn = reinterpret_cast<F>(dlsym(h, name));
  return *fn != nullptr;
}

Nvrtc* open_nvrtc_locked() {
  if (g_nvrtc) return g_nvrtc;
  auto* n = new Nvrtc();
  std::string tried;
  for (const auto& path : candidates()) {
    preload_builtins(path);
    void* h = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!h) {
      const char* e = dlerror();
      tried += fmt::format("\n  {}: {}", path, e ? e : "not found");
      continue;
    }
    bool ok = bind(h, "nvrtcGetErrorString", &n->GetErrorString) && bind(h, "nvrtcVersion", &n->Version) &&
              bind(h, "nvrtcCreateProgram", &n->CreateProgram) && bind(h, "nvrtcDestroyProgram", &n->DestroyProgram) &&
              bind(h, "nvrtcCompileProgram", &n->CompileProgram) && bind(h, "nvrtcGetPTXSize", &n->GetPTXSize) &&
              bind(h, "nvrtcGetPTX", &n->GetPTX) && bind(h, "nvrtcGetCUBINSize", &n->GetCUBINSize) &&
              bind(h, "nvrtcGetCUBIN", &n->GetCUBIN) && bind(h, "nvrtcGetProgramLogSize", &n->GetProgramLogSize) &&
              bind(h, "nvrtcGetProgramLog", &n->GetProgramLog);
    if (!ok) {
      tried += fmt::format("\n  {}: lacks an NVRTC entry point", path);
      dlclose(h);
      continue;
    }
    int major = 0, minor = 0;
    n->Version(&major, &minor);
    n->handle = h;
    n->path = path;
    n->version = major * 1000 + minor * 10;
    break;
  }
  if (!n->handle) n->why = "libnvrtc could not be opened; tried:" + tried;
  g_nvrtc = n;
  return n;
}

Nvrtc& nvrtc() {
  std::lock_guard<std::mutex> lock(g_mu);
  Nvrtc* n = open_nvrtc_locked();
  if (!n->handle)
    throw Unsupported("kiln: NVRTC is unavailable (install the nvidia-cuda-nvrtc wheel, or set KILN_NVRTC to "
                      "libnvrtc.so): " + n->why);
  return *n;
}

std::string numbered(const std::string& source) {
  std::istringstream in(source);
  std::string out, l;
  for (int i = 1; std::getline(in, l); ++i) out += fmt::format("{:5} | {}\n", i, l);
  return out;
}

std::string program_log(Nvrtc& n, nvrtcProgram prog) {
  size_t size = 0;
  if (n.GetProgramLogSize(prog, &size) != 0 || size <= 1) return "";
  std::string log(size, '\0');
  if (n.GetProgramLog(prog, log.data()) != 0) return "";
  log.resize(size - 1);
  return log;
}

/// One NVRTC compilation for `gpu_arch` ("compute_90" or "sm_90"); fills what it produced.
void run_nvrtc(Nvrtc& n, const std::string& source, const std::string& name, const std::string& gpu_arch,
               CompiledCuda* out) {
  nvrtcProgram prog = nullptr;
  nvrtcResult r = n.CreateProgram(&prog, source.c_str(), (name + ".cu").c_str(), 0, nullptr, nullptr);
  if (r != 0) throw Unsupported(fmt::format("kiln: nvrtcCreateProgram({}) failed: {}", name, n.GetErrorString(r)));
  std::string arch_opt = "--gpu-architecture=" + gpu_arch;
  const char* opts[] = {arch_opt.c_str(), "-default-device", "--std=c++17"};
  r = n.CompileProgram(prog, 3, opts);
  std::string log = program_log(n, prog);
  if (r != 0) {
    n.DestroyProgram(&prog);
    throw Unsupported(fmt::format("kiln: NVRTC could not compile kernel {} for {} ({}):\n{}\n--- source ---\n{}", name,
                                  gpu_arch, n.GetErrorString(r), log, numbered(source)));
  }
  if (!log.empty()) out->log += log;
  size_t size = 0;
  if (gpu_arch.rfind("sm_", 0) == 0) {
    if (n.GetCUBINSize(prog, &size) == 0 && size > 0) {
      out->cubin.assign(size, '\0');
      n.GetCUBIN(prog, out->cubin.data());
    }
  }
  if (out->ptx.empty() && n.GetPTXSize(prog, &size) == 0 && size > 1) {
    out->ptx.assign(size, '\0');
    n.GetPTX(prog, out->ptx.data());
    out->ptx.resize(size - 1);  // drop the terminating NUL
  }
  n.DestroyProgram(&prog);
}

// ---- disk cache (Note [Disk cache] in support/disk_cache.h) -------------------------------

}  // namespace

void set_nvrtc_search_paths(std::vector<std::string> paths) {
  std::lock_guard<std::mutex> lock(g_mu);
  g_search_paths = std::move(paths);
}

bool nvrtc_available(std::string* why) {
  std::lock_guard<std::mutex> lock(g_mu);
  Nvrtc* n = open_nvrtc_locked();
  if (!n->handle && why) *why = n->why;
  return n->handle != nullptr;
}

std::string nvrtc_library() {
  std::lock_guard<std::mutex> lock(g_mu);
  return open_nvrtc_locked()->path;
}

int nvrtc_version() {
  std::lock_guard<std::mutex> lock(g_mu);
  return open_nvrtc_locked()->version;
}

CompiledCuda compile_cuda(const std::string& source, const std::string& name, int arch, bool want_cubin) {
  Nvrtc& n = nvrtc();
  uint64_t key = hash_string(source);
  key = hash_combine(key, static_cast<uint64_t>(arch));
  key = hash_combine(key, want_cubin ? 1 : 0);
  key = hash_combine(key, hash_string(KILN_VERSION));
  key = hash_combine(key, static_cast<uint64_t>(n.version));
  {
    std::lock_guard<std::mutex> lock(g_mu);
    auto it = g_cache.find(key);
    if (it != g_cache.end()) {
      CompiledCuda c = it->second;
      c.cached = true;
      return c;
    }
  }
  auto t0 = std::chrono::steady_clock::now();
  CompiledCuda out;
  const DiskCache disk("cuda");
  std::string disk_key;
  if (disk.enabled())
    disk_key = fmt::format("kiln cuda kernel\nkiln {}\nnvrtc {}\nsm_{} cubin {}\n{}", KILN_VERSION, n.version, arch,
                           want_cubin ? 1 : 0, source);
  size_t pos = 0;
  std::optional<std::string> hit = disk.enabled() ? disk.get(disk_key) : std::nullopt;
  if (hit && read_field(*hit, pos, &out.ptx) && read_field(*hit, pos, &out.cubin) && !out.ptx.empty()) {
    out.cached = true;
  } else {
    out = CompiledCuda{};
    if (want_cubin) run_nvrtc(n, source, name, fmt::format("sm_{}", arch), &out);
    // PTX comes from the virtual architecture (NVRTC gives none for a real one).
    if (out.ptx.empty()) run_nvrtc(n, source, name, fmt::format("compute_{}", arch), &out);
    if (out.ptx.empty()) throw Unsupported(fmt::format("kiln: NVRTC produced no PTX for kernel {}", name));
    if (disk.enabled()) {
      std::string payload;
      append_field(payload, out.ptx);
      append_field(payload, out.cubin);
      disk.put(disk_key, payload);
    }
  }
  out.compile_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  std::lock_guard<std::mutex> lock(g_mu);
  g_cache.emplace(key, out);
  return out;
}

std::string compile_to_ptx(const std::string& source, const std::string& name, int arch) {
  return compile_cuda(source, name, arch, /*want_cubin=*/false).ptx;
}

void clear_nvrtc_cache() {
  std::lock_guard<std::mutex> lock(g_mu);
  g_cache.clear();
}

}  // namespace kiln::cuda
