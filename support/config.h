/// \file config.h
/// The single table of kiln's knobs. Each knob has a name, a KILN_* environment variable, a
/// default and a doc line; the table is read from the environment once (at import) and can be
/// changed afterwards through `set_knob` (Python: `kiln.config`). Passes never read the
/// environment themselves: they receive these values through their options.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace kiln {

// KILN_KNOB(field, ENV_NAME, default-as-string, doc)
#define KILN_FOR_EACH_KNOB(X)                                                                  \
  X(disable, "KILN_DISABLE", "0", "1: every compiled function runs eagerly")                   \
  X(num_threads, "KILN_NUM_THREADS", "0", "threads for compiled CPU kernels; 0: all cores")    \
  X(log, "KILN_LOG", "", "comma list of stages to print: graph,ir,fusion,kernels,guards,"      \
                         "recompiles,breaks,perf,dynamic")                                          \
  X(debug_dir, "KILN_DEBUG_DIR", "", "folder that receives every artifact of every compile")   \
  X(cache_limit, "KILN_CACHE_LIMIT", "8", "compiled variants per function before it runs "     \
                                          "eagerly")                                           \
  X(cache, "KILN_CACHE", "1", "0: no disk cache of compiled kernels (support/disk_cache.h)")   \
  X(cache_dir, "KILN_CACHE_DIR", "", "disk cache root; empty: $XDG_CACHE_HOME/kiln or "          \
                                     "~/.cache/kiln")                                           \
  X(cache_size_mb, "KILN_CACHE_SIZE_MB", "1024", "disk cache limit per kind (cpu, cuda); least " \
                                                 "recently used entries go first")              \
  X(verify, "KILN_VERIFY", "0", "1: run the IR verifier after every pass")                     \
  X(opt_level, "KILN_OPT_LEVEL", "3", "LLVM optimisation level for CPU kernels (0-3)")            \
  X(matmul, "KILN_MATMUL", "blas", "matrix products: blas (kiln's BLAS steps with fused "          \
                                    "epilogues) or eager (fallback ops)")                             \
  X(blas, "KILN_BLAS", "auto", "libraries for matrix products: auto (torch's MKL, else OpenBLAS; "        \
                               "float32 on oneDNN's GEMM off Intel CPUs), mkl, openblas, or a library path") \
  X(cuda_row_block, "KILN_CUDA_ROW_BLOCK", "0", "threads per block of CUDA row kernels with rows "  \
                                              "under 4096 elements (32-1024, a power of two); 0: "      \
                                              "kiln's choice")                                          \
  X(cuda_column_kernels, "KILN_CUDA_COLUMN_KERNELS", "1", "1: CUDA reductions whose contiguous dim is "   \
                                                    "kept run as column kernels; 0: as row kernels")        \
  X(cuda_bias_epilogue, "KILN_CUDA_BIAS_EPILOGUE", "1", "1: a row bias after a CUDA product is added "  \
                                                      "by cuBLASLt in the product; 0: by the kernel "   \
                                                      "after it")                                       \
  X(check, "KILN_CHECK", "0", "1: compare every compiled call with eager and report divergence") \
  X(background, "KILN_BACKGROUND", "0", "1: compile on a background thread while calls run eagerly " \
                                         "(kiln.compile(background=...) overrides; kiln.wait())")       \
  X(profile, "KILN_PROFILE", "0", "1: time every kernel of programs compiled from now on "           \
                                  "(kiln.kernels(f)[i].time_ns)")                                   \
  X(inject_bug, "KILN_INJECT_BUG", "", "test only: plant a wrong lowering (relu; gradient: the "    \
                                       "first gradient of a training step doubled) to prove "        \
                                       "KILN_CHECK and the fuzzer catch it")                           \
  X(inject_failure, "KILN_INJECT_FAILURE", "", "test only: make a compile stage fail (llvm) to "      \
                                               "prove the eager fallback and its recorded reason")

struct Knob {
  std::string name;     ///< field name, e.g. "num_threads"
  std::string env;      ///< environment variable, e.g. "KILN_NUM_THREADS"
  std::string value;    ///< current value as text
  std::string default_value;
  std::string doc;
};

/// All knobs, in table order. Reads the environment on first use.
std::vector<Knob>& knobs();
/// Current text value of a knob; throws UserError for an unknown name.
const std::string& knob(const std::string& name);
int64_t knob_int(const std::string& name);
bool knob_bool(const std::string& name);
/// Changes a knob for the rest of the process.
void set_knob(const std::string& name, const std::string& value);
/// True when the comma list KILN_LOG names `stage` (or "all").
bool log_enabled(const std::string& stage);
/// Monotonic counter bumped by every set_knob: caches that depend on knobs compare it.
uint64_t config_epoch();

}  // namespace kiln
