/// \file cublas.cpp
/// cuBLAS behind cublas.h. Row-major products go to column-major cuBLAS as C^T = B^T . A^T
/// (see gemm.cpp), batches as one strided-batched call when each operand's matrices are evenly
/// spaced (a broadcast operand: stride 0), else one call per matrix. float16/bfloat16 go
/// through cublasGemmStridedBatchedEx with float32 accumulation, as eager's do.
#include "runtime/cublas.h"

#include <fmt/format.h>

#include <climits>
#include <map>
#include <mutex>

#include "runtime/cublas_abi.h"
#include "runtime/cublaslt.h"
#include "runtime/runtime_library.h"


namespace kiln::runtime {
namespace {

using Status = int;  // cublasStatus_t; 0 = CUBLAS_STATUS_SUCCESS
using Handle = void*;
namespace abi = cublas_abi;

struct Cublas {
  std::string why;
  Status (*Create)(Handle*) = nullptr;
  Status (*SetStream)(Handle, void*) = nullptr;
  Status (*Sgemm)(Handle, int, int, int, int, int, const float*, const float*, int, long long, const float*, int,
                  long long, const float*, float*, int, long long, int) = nullptr;
  Status (*Dgemm)(Handle, int, int, int, int, int, const double*, const double*, int, long long, const double*, int,
                  long long, const double*, double*, int, long long, int) = nullptr;
  // float16/bfloat16: float32 accumulation, the result rounded once (eager's call too)
  Status (*GemmEx)(Handle, int, int, int, int, int, const void*, const void*, int, int, long long, const void*, int,
                   int, long long, const void*, void*, int, int, long long, int, int, int) = nullptr;
  std::mutex mu;
  std::map<CuContext, Handle> handles;  // one per context (device)
};

RuntimeLibrary g_library(RTLD_NOLOAD);  // PyTorch's copy only when it is already loaded

Cublas& table() {
  static Cublas* c = [] {
    auto* c = new Cublas();  // never closed: handles live as long as the process
    void* h = g_library.open({"libcublas.so.13", "libcublas.so.12", "libcublas.so"});
    if (!h) {
      c->why = "cuBLAS could not be opened (libcublas.so.13 / .12)";
      return c;
    }
    bool ok = bind_symbol(h, "cublasCreate_v2", &c->Create) && bind_symbol(h, "cublasSetStream_v2", &c->SetStream) &&
              bind_symbol(h, "cublasSgemmStridedBatched", &c->Sgemm) &&
              bind_symbol(h, "cublasDgemmStridedBatched", &c->Dgemm) &&
              bind_symbol(h, "cublasGemmStridedBatchedEx", &c->GemmEx);
    if (!ok) c->why = "cuBLAS lacks the functions kiln calls";
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

int64_t CublasProduct::a_stride(size_t first) const {
  int64_t s = 0;
  even(a_offsets, first, run, &s);
  return s;
}

int64_t CublasProduct::b_stride(size_t first) const {
  int64_t s = 0;
  even(b_offsets, first, run, &s);
  return s;
}

CublasProduct cublas_product(const ir::GemmCall& g) {
  CublasProduct p;
  const ir::Sizes& as = g.a.sizes;
  size_t r = as.size();
  p.M = as[r - 2];
  p.K = as[r - 1];
  p.N = g.b.sizes.back();
  for (size_t d = 0; d + 2 < r; ++d) p.batch *= as[d];
  p.a = operand_layout(g.a);
  p.b = operand_layout(g.b);
  p.a_offsets = batch_offsets(g.a);
  p.b_offsets = batch_offsets(g.b);
  p.run = run_length(p.a_offsets, p.b_offsets);
  return p;
}

bool cublas_available(std::string* why) {
  Cublas& c = table();
  if (why) *why = c.why;
  return c.why.empty();
}

void cublas_prefer(const std::string& path) { g_library.prefer(path); }

std::string cublas_unsupported(const ir::GemmCall& call, const std::vector<ir::Buffer>& buffers) {
  ir::DType t = buffers[call.out].dtype;
  if (t != ir::DType::Float32 && t != ir::DType::Float64 && !ir::is_half(t))
    return fmt::format("{} matmul", ir::dtype_name(t));
  // cuBLAS writes zeros for an empty sum (beta = 0); cuBLASLt's k must be positive, and kiln
  // plans it in float32 only (the bias pass gives it neither).
  if (needs_cublaslt(call) && call.a.sizes.back() == 0)
    return fmt::format("{}: a bias epilogue over an empty dim", call.name);
  if (needs_cublaslt(call) && t == ir::DType::Float64) return fmt::format("{}: a float64 bias epilogue", call.name);
  for (const ir::GemmOperand* o : {&call.a, &call.b})
    if (!operand_layout(*o).direct)
      return fmt::format("{}: an operand layout cuBLAS cannot read without a copy", call.name);
  for (int64_t s : buffers[call.out].sizes)
    if (s > INT_MAX) return fmt::format("{}: a dim beyond 32 bits", call.name);
  return "";
}

void cublas_gemm(const ir::GemmCall& g, const CublasProduct& p, const std::vector<ir::Buffer>& buffers,
                 const std::vector<uint64_t>& ptrs, CuStream stream) {
  Cublas& c = table();
  if (!c.why.empty()) throw CudaError("kiln: " + c.why);
  if (p.batch == 0 || p.M == 0 || p.N == 0) return;
  if (!p.a.direct || !p.b.direct) throw CudaError("kiln: " + cublas_unsupported(g, buffers));
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
  size_t elem = ir::dtype_bytes(buffers[g.out].dtype);
  int m = static_cast<int>(p.M), n = static_cast<int>(p.N), k = static_cast<int>(p.K);
  int lda = static_cast<int>(p.a.ld), ldb = static_cast<int>(p.b.ld), ldc = n;
  int ta = p.a.col_major ? abi::kOpT : abi::kOpN, tb = p.b.col_major ? abi::kOpT : abi::kOpN;
  ir::DType t = buffers[g.out].dtype;
  uint64_t A = ptrs[g.a.buffer], B = ptrs[g.b.buffer], C = ptrs[g.out];
  // K == 0: beta = 0 makes cuBLAS write zeros (alpha times an empty sum).
  auto call = [&](uint64_t a, uint64_t b, uint64_t cc, long long stride_a, long long stride_b, int count) {
    // One body for both element types: `one` carries the type (and alpha).
    auto run = [&](auto gemm, auto one) {
      using T = decltype(one);
      T zero = 0;
      return gemm(h, tb, ta, n, m, k, &one, reinterpret_cast<const T*>(b), ldb, stride_b, reinterpret_cast<const T*>(a),
                  lda, stride_a, &zero, reinterpret_cast<T*>(cc), ldc, static_cast<long long>(p.M) * p.N, count);
    };
    if (ir::is_half(t)) {
      float one = 1, zero = 0;
      int dt = abi::data_type(t);
      check(c.GemmEx(h, tb, ta, n, m, k, &one, reinterpret_cast<const void*>(b), dt, ldb, stride_b,
                     reinterpret_cast<const void*>(a), dt, lda, stride_a, &zero, reinterpret_cast<void*>(cc), dt, ldc,
                     static_cast<long long>(p.M) * p.N, count, abi::kComputeF32, abi::kGemmDefault),
            g.name);
      return;
    }
    check(t == ir::DType::Float32 ? run(c.Sgemm, 1.0f) : run(c.Dgemm, 1.0), g.name);
  };
  for (size_t i = 0; i < static_cast<size_t>(p.batch); i += p.run)
    call(A + p.a_offsets[i] * elem, B + p.b_offsets[i] * elem, C + i * p.M * p.N * elem, p.a_stride(i), p.b_stride(i),
         static_cast<int>(p.run));
}

}  // namespace kiln::runtime
