/// \file cublas.cpp
/// cuBLAS behind cublas.h. Row-major products go to column-major cuBLAS as C^T = B^T . A^T
/// (see gemm.cpp), batches as one strided-batched call when each operand's matrices are evenly
/// spaced (a broadcast operand: stride 0), else one call per matrix.
#include "runtime/cublas.h"

#include <dlfcn.h>
#include <fmt/format.h>

#include <climits>
#include <map>
#include <mutex>

#include "runtime/gemm_layout.h"

namespace kiln::runtime {
namespace {

using Status = int;  // cublasStatus_t; 0 = CUBLAS_STATUS_SUCCESS
using Handle = void*;
constexpr int kOpN = 0, kOpT = 1;

struct Cublas {
  std::string why;
  Status (*Create)(Handle*) = nullptr;
  Status (*SetStream)(Handle, void*) = nullptr;
  Status (*Sgemm)(Handle, int, int, int, int, int, const float*, const float*, int, long long, const float*, int,
                  long long, const float*, float*, int, long long, int) = nullptr;
  Status (*Dgemm)(Handle, int, int, int, int, int, const double*, const double*, int, long long, const double*, int,
                  long long, const double*, double*, int, long long, int) = nullptr;
  std::mutex mu;
  std::map<CuContext, Handle> handles;  // one per context (device)
};

std::mutex g_mu;
std::string g_preferred;

Cublas& table() {
  static Cublas* c = [] {
    auto* c = new Cublas();  // never closed: handles live as long as the process
    void* h = nullptr;
    {
      std::lock_guard<std::mutex> lock(g_mu);
      if (!g_preferred.empty()) h = dlopen(g_preferred.c_str(), RTLD_NOW | RTLD_NOLOAD);
    }
    for (const char* so : {"libcublas.so.13", "libcublas.so.12", "libcublas.so"})
      if (!h) h = dlopen(so, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
      c->why = "cuBLAS could not be opened (libcublas.so.13 / .12)";
      return c;
    }
    c->Create = reinterpret_cast<decltype(c->Create)>(dlsym(h, "cublasCreate_v2"));
    c->SetStream = reinterpret_cast<decltype(c->SetStream)>(dlsym(h, "cublasSetStream_v2"));
    c->Sgemm = reinterpret_cast<decltype(c->Sgemm)>(dlsym(h, "cublasSgemmStridedBatched"));
    c->Dgemm = reinterpret_cast<decltype(c->Dgemm)>(dlsym(h, "cublasDgemmStridedBatched"));
    if (!c->Create || !c->SetStream || !c->Sgemm || !c->Dgemm) c->why = "cuBLAS lacks the functions kiln calls";
    return c;
  }();
  return *c;
}

void check(Status s, const std::string& what) {
  if (s != 0) throw CudaError(fmt::format("kiln: cuBLAS error {} in {}", s, what));
}

/// Whether offs[begin, begin + n) are evenly spaced; their spacing in `stride`.
bool even(const std::vector<int64_t>& offs, size_t begin, size_t n, int64_t* stride) {
  *stride = n > 1 ? offs[begin + 1] - offs[begin] : 0;
  for (size_t i = begin + 1; i < begin + n; ++i)
    if (offs[i] - offs[i - 1] != *stride) return false;
  return true;
}

/// The longest run length R (a divisor of the batch) such that every run of R matrices of
/// both operands is evenly spaced: one strided-batched call per run. A batch over (B, H) dims
/// that no single stride spans (heads of a fused qkv projection) takes B calls of H, not B*H.
size_t run_length(const std::vector<int64_t>& ao, const std::vector<int64_t>& bo) {
  size_t nb = ao.size();
  for (size_t r = nb; r > 1; --r) {
    if (nb % r) continue;
    bool ok = true;
    int64_t s;
    for (size_t begin = 0; ok && begin < nb; begin += r) ok = even(ao, begin, r, &s) && even(bo, begin, r, &s);
    if (ok) return r;
  }
  return 1;
}

}  // namespace

bool cublas_available(std::string* why) {
  Cublas& c = table();
  if (why) *why = c.why;
  return c.why.empty();
}

void cublas_prefer(const std::string& path) {
  std::lock_guard<std::mutex> lock(g_mu);
  g_preferred = path;
}

std::string cublas_unsupported(const ir::GemmCall& call, const std::vector<ir::Buffer>& buffers) {
  ir::DType t = buffers[call.out].dtype;
  if (t != ir::DType::Float32 && t != ir::DType::Float64) return fmt::format("{} matmul", ir::dtype_name(t));
  for (const ir::GemmOperand* o : {&call.a, &call.b})
    if (!operand_layout(*o).direct)
      return fmt::format("{}: an operand layout cuBLAS cannot read without a copy", call.name);
  for (int64_t s : buffers[call.out].sizes)
    if (s > INT_MAX) return fmt::format("{}: a dim beyond 32 bits", call.name);
  return "";
}

void cublas_gemm(const ir::GemmCall& g, const std::vector<ir::Buffer>& buffers, const std::vector<uint64_t>& ptrs,
                 CuStream stream) {
  Cublas& c = table();
  if (!c.why.empty()) throw CudaError("kiln: " + c.why);
  const ir::Sizes& as = g.a.sizes;
  size_t r = as.size();
  ir::Sizes batch(as.begin(), as.end() - 2);
  int64_t M = as[r - 2], K = as[r - 1], N = g.b.sizes.back();
  int64_t nb = 1;
  for (int64_t s : batch) nb *= s;
  if (nb == 0 || M == 0 || N == 0) return;
  Layout la = operand_layout(g.a), lb = operand_layout(g.b);
  if (!la.direct || !lb.direct) throw CudaError("kiln: " + cublas_unsupported(g, buffers));
  Handle h = nullptr;
  {
    std::lock_guard<std::mutex> lock(c.mu);
    CuContext ctx = cuda_current_context(0);
    auto it = c.handles.find(ctx);
    if (it == c.handles.end()) {
      check(c.Create(&h), "cublasCreate");
      c.handles.emplace(ctx, h);
    } else {
      h = it->second;
    }
  }
  check(c.SetStream(h, stream), "cublasSetStream");
  std::vector<int64_t> ao = batch_offsets(g.a), bo = batch_offsets(g.b);
  size_t elem = ir::dtype_bytes(buffers[g.out].dtype);
  int m = static_cast<int>(M), n = static_cast<int>(N), k = static_cast<int>(K);
  int lda = static_cast<int>(la.ld), ldb = static_cast<int>(lb.ld), ldc = n;
  int ta = la.col_major ? kOpT : kOpN, tb = lb.col_major ? kOpT : kOpN;
  uint64_t A = ptrs[g.a.buffer], B = ptrs[g.b.buffer], C = ptrs[g.out];
  // K == 0: beta = 0 makes cuBLAS write zeros (alpha times an empty sum).
  auto call = [&](uint64_t a, uint64_t b, uint64_t cc, long long stride_a, long long stride_b, int count) {
    // One body for both element types: `one` carries the type (and alpha).
    auto run = [&](auto gemm, auto one) {
      using T = decltype(one);
      T zero = 0;
      return gemm(h, tb, ta, n, m, k, &one, reinterpret_cast<const T*>(b), ldb, stride_b, reinterpret_cast<const T*>(a),
                  lda, stride_a, &zero, reinterpret_cast<T*>(cc), ldc, static_cast<long long>(M) * N, count);
    };
    check(buffers[g.out].dtype == ir::DType::Float32 ? run(c.Sgemm, 1.0f) : run(c.Dgemm, 1.0), g.name);
  };
  size_t run = run_length(ao, bo);
  for (size_t i = 0; i < static_cast<size_t>(nb); i += run) {
    int64_t sa = 0, sb = 0;
    even(ao, i, run, &sa);
    even(bo, i, run, &sb);
    call(A + ao[i] * elem, B + bo[i] * elem, C + i * M * N * elem, sa, sb, static_cast<int>(run));
  }
}

}  // namespace kiln::runtime
