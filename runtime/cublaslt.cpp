/// \file cublaslt.cpp
/// cuBLASLt behind cublaslt.h. The product goes to column-major cuBLASLt as cuBLAS's does
/// (cublas_product: out^T = b^T . a^T); a bias of N elements is then a vector over the rows of
/// cuBLASLt's D, which is what its BIAS epilogue adds. The descriptors and the algorithm of a
/// product depend only on its shape, dtype, epilogue and pointer alignments: they are built once
/// per such key and context and kept for the process (a plan), as cuBLAS keeps its handles.
#include "runtime/cublaslt.h"

#include <fmt/format.h>

#include <climits>
#include <map>
#include <memory>
#include <mutex>

#include "runtime/cublas.h"
#include "runtime/cublas_abi.h"
#include "runtime/runtime_library.h"

namespace kiln::runtime {
namespace {

namespace lt = cublas_abi;

using Status = int;  // cublasStatus_t; 0 = CUBLAS_STATUS_SUCCESS
using Handle = void*;
using Desc = void*;
using MatrixLayout = void*;
using Preference = void*;

struct CublasLt {
  std::string why;
  Status (*Create)(Handle*) = nullptr;
  Status (*DescCreate)(Desc*, int, int) = nullptr;
  Status (*DescDestroy)(Desc) = nullptr;
  Status (*DescSet)(Desc, int, const void*, size_t) = nullptr;
  Status (*LayoutCreate)(MatrixLayout*, int, uint64_t, uint64_t, int64_t) = nullptr;
  Status (*LayoutDestroy)(MatrixLayout) = nullptr;
  Status (*LayoutSet)(MatrixLayout, int, const void*, size_t) = nullptr;
  Status (*PrefCreate)(Preference*) = nullptr;
  Status (*PrefDestroy)(Preference) = nullptr;
  Status (*PrefSet)(Preference, int, const void*, size_t) = nullptr;
  Status (*Heuristic)(Handle, Desc, MatrixLayout, MatrixLayout, MatrixLayout, MatrixLayout, Preference, int,
                      lt::HeuristicResult*, int*) = nullptr;
  Status (*Matmul)(Handle, Desc, const void*, const void*, MatrixLayout, const void*, MatrixLayout, const void*,
                   const void*, MatrixLayout, void*, MatrixLayout, const lt::Algo*, void*, size_t, void*) = nullptr;
};

RuntimeLibrary g_library(RTLD_LOCAL);

CublasLt& table() {
  static CublasLt* c = [] {
    auto* c = new CublasLt();  // never closed: plans live as long as the process
    void* h = g_library.open({"libcublasLt.so.13", "libcublasLt.so.12", "libcublasLt.so"});
    if (!h) {
      c->why = "cuBLASLt could not be opened (libcublasLt.so.13 / .12)";
      return c;
    }
    bool ok = bind_symbol(h, "cublasLtCreate", &c->Create) &&
              bind_symbol(h, "cublasLtMatmulDescCreate", &c->DescCreate) &&
              bind_symbol(h, "cublasLtMatmulDescDestroy", &c->DescDestroy) &&
              bind_symbol(h, "cublasLtMatmulDescSetAttribute", &c->DescSet) &&
              bind_symbol(h, "cublasLtMatrixLayoutCreate", &c->LayoutCreate) &&
              bind_symbol(h, "cublasLtMatrixLayoutDestroy", &c->LayoutDestroy) &&
              bind_symbol(h, "cublasLtMatrixLayoutSetAttribute", &c->LayoutSet) &&
              bind_symbol(h, "cublasLtMatmulPreferenceCreate", &c->PrefCreate) &&
              bind_symbol(h, "cublasLtMatmulPreferenceDestroy", &c->PrefDestroy) &&
              bind_symbol(h, "cublasLtMatmulPreferenceSetAttribute", &c->PrefSet) &&
              bind_symbol(h, "cublasLtMatmulAlgoGetHeuristic", &c->Heuristic) &&
              bind_symbol(h, "cublasLtMatmul", &c->Matmul);
    if (!ok) c->why = "cuBLASLt lacks the functions kiln calls";
    return c;
  }();
  return *c;
}

/// Everything the descriptors of one cuBLASLt call depend on (besides pointers' alignments).
struct CallShape {
  int dtype;                  // cudaDataType of every matrix (and of the bias)
  int64_t m, n, k;            // cuBLASLt's: m = our N, n = our M
  int32_t trans_first, trans_second;
  int64_t ld_first, ld_second;
  int32_t count;              // matrices in the strided batch
  int64_t stride_first, stride_second, stride_out;
  bool bias;
};

CallShape call_shape(const ir::GemmCall& g, const std::vector<ir::Buffer>& buffers, const CublasProduct& p,
                     size_t first) {
  CallShape s;
  s.dtype = lt::data_type(buffers[g.out].dtype);
  s.m = p.N;
  s.n = p.M;
  s.k = p.K;
  // cuBLASLt's first operand is our b, its second our a (out^T = b^T . a^T).
  s.trans_first = p.b.col_major ? lt::kOpT : lt::kOpN;
  s.trans_second = p.a.col_major ? lt::kOpT : lt::kOpN;
  s.ld_first = p.b.ld;
  s.ld_second = p.a.ld;
  s.count = static_cast<int32_t>(p.run);
  s.stride_first = p.b_stride(first);
  s.stride_second = p.a_stride(first);
  s.stride_out = p.M * p.N;
  s.bias = g.bias >= 0;
  return s;
}

/// The descriptors of one call; destroys what it created.
struct Descriptors {
  CublasLt* lt = nullptr;
  Desc desc = nullptr;
  MatrixLayout first = nullptr, second = nullptr, out = nullptr;
  Descriptors() = default;
  Descriptors(const Descriptors&) = delete;
  Descriptors& operator=(const Descriptors&) = delete;
  ~Descriptors() {
    if (!lt) return;
    if (desc) lt->DescDestroy(desc);
    for (MatrixLayout l : {first, second, out})
      if (l) lt->LayoutDestroy(l);
  }
};

/// Fills `d` for `s`; returns "" or the first call cuBLASLt refused, with its status.
std::string describe(CublasLt& c, const CallShape& s, uint64_t bias_ptr, Descriptors& d) {
  d.lt = &c;
  auto fail = [](Status st, const char* what) {
    return st == 0 ? std::string() : fmt::format("{} (status {})", what, st);
  };
  // float32 accumulation and scale for every dtype cublas_unsupported lets through.
  std::string err = fail(c.DescCreate(&d.desc, lt::kComputeF32, lt::kF32), "cublasLtMatmulDescCreate");
  if (err.empty()) err = fail(c.DescSet(d.desc, lt::kDescTransA, &s.trans_first, sizeof s.trans_first), "TRANSA");
  if (err.empty()) err = fail(c.DescSet(d.desc, lt::kDescTransB, &s.trans_second, sizeof s.trans_second), "TRANSB");
  uint32_t epilogue = s.bias ? lt::kEpilogueBias : lt::kEpilogueDefault;
  if (err.empty()) err = fail(c.DescSet(d.desc, lt::kDescEpilogue, &epilogue, sizeof epilogue), "EPILOGUE");
  if (err.empty() && s.bias) {
    const void* ptr = reinterpret_cast<const void*>(static_cast<uintptr_t>(bias_ptr));
    err = fail(c.DescSet(d.desc, lt::kDescBiasPointer, &ptr, sizeof ptr), "BIAS_POINTER");
  }
  // A layout describes the matrix as stored (before its transpose flag applies).
  auto layout = [&](MatrixLayout* l, int64_t rows, int64_t cols, int64_t ld, int64_t stride, const char* what) {
    if (!err.empty()) return;
    err = fail(c.LayoutCreate(l, s.dtype, static_cast<uint64_t>(rows), static_cast<uint64_t>(cols), ld), what);
    if (err.empty() && s.count > 1) {
      err = fail(c.LayoutSet(*l, lt::kLayoutBatchCount, &s.count, sizeof s.count), "BATCH_COUNT");
      if (err.empty()) err = fail(c.LayoutSet(*l, lt::kLayoutBatchStride, &stride, sizeof stride), "BATCH_STRIDE");
    }
  };
  bool first_t = s.trans_first == lt::kOpT, second_t = s.trans_second == lt::kOpT;
  layout(&d.first, first_t ? s.k : s.m, first_t ? s.m : s.k, s.ld_first, s.stride_first, "layout of b");
  layout(&d.second, second_t ? s.n : s.k, second_t ? s.k : s.n, s.ld_second, s.stride_second, "layout of a");
  layout(&d.out, s.m, s.n, s.m, s.stride_out, "layout of the output");
  return err;
}

/// The largest power of two (at most 256) dividing `ptr`: what cuBLASLt's algorithm choice
/// may assume of it.
uint32_t alignment(uint64_t ptr) {
  uint32_t a = 256;
  while (a > 1 && ptr % a) a /= 2;
  return a;
}

/// The descriptors and algorithm of one call shape in one context.
struct Plan {
  Descriptors d;
  lt::Algo algo{};
  std::mutex mu;  // the bias pointer is an attribute of the shared descriptor
};

using PlanKey = std::vector<int64_t>;
std::mutex g_plans_mu;
std::map<PlanKey, std::unique_ptr<Plan>> g_plans;
std::map<CuContext, Handle> g_handles;

/// cuBLASLt refused a product's descriptors or has no algorithm for it: not a failed call.
struct NoPlan : CudaError {
  using CudaError::CudaError;
};

void check(Status s, const std::string& what) {
  if (s != 0) throw CudaError(fmt::format("kiln: cuBLASLt error {} in {}", s, what));
}

Handle handle_for(CublasLt& c, CuContext ctx) {
  std::lock_guard<std::mutex> lock(g_plans_mu);
  auto it = g_handles.find(ctx);
  if (it != g_handles.end()) return it->second;
  Handle h = nullptr;
  check(c.Create(&h), "cublasLtCreate");
  g_handles.emplace(ctx, h);
  return h;
}

/// The algorithm search's preferences (host-only): no workspace, and the alignments of the
/// operands (cuBLASLt assumes 256-byte aligned pointers unless told: a view's offset may break
/// that). Returns the first failing status (0: all set); `*pref` is to be destroyed.
Status preference(CublasLt& c, uint32_t align_first, uint32_t align_second, uint32_t align_out, Preference* pref) {
  Status st = c.PrefCreate(pref);
  uint64_t workspace = 0;  // kiln's memory is PyTorch's; the algorithms chosen need none
  if (st == 0) st = c.PrefSet(*pref, lt::kPrefMaxWorkspace, &workspace, sizeof workspace);
  if (st == 0) st = c.PrefSet(*pref, lt::kPrefAlignA, &align_first, sizeof align_first);
  if (st == 0) st = c.PrefSet(*pref, lt::kPrefAlignB, &align_second, sizeof align_second);
  if (st == 0) st = c.PrefSet(*pref, lt::kPrefAlignC, &align_out, sizeof align_out);
  if (st == 0) st = c.PrefSet(*pref, lt::kPrefAlignD, &align_out, sizeof align_out);
  return st;
}

Plan& plan_for(CublasLt& c, const ir::GemmCall& g, const CallShape& s, Handle h, CuContext ctx, uint64_t a,
               uint64_t b, uint64_t out, uint64_t bias) {
  uint32_t align_first = alignment(b), align_second = alignment(a), align_out = alignment(out),
           align_bias = s.bias ? alignment(bias) : 256;
  PlanKey key = {reinterpret_cast<int64_t>(ctx), s.dtype, s.m, s.n, s.k, s.trans_first, s.trans_second,
                 s.ld_first, s.ld_second, s.count, s.stride_first, s.stride_second, s.stride_out, s.bias,
                 align_first, align_second, align_out, align_bias};
  std::lock_guard<std::mutex> lock(g_plans_mu);
  auto it = g_plans.find(key);
  if (it != g_plans.end()) return *it->second;
  auto plan = std::make_unique<Plan>();
  std::string err = describe(c, s, bias, plan->d);
  if (!err.empty()) throw NoPlan(fmt::format("kiln: cuBLASLt refused {}: {}", g.name, err));
  Preference pref = nullptr;
  Status st = preference(c, align_first, align_second, align_out, &pref);
  lt::HeuristicResult result{};
  int found = 0;
  if (st == 0)
    st = c.Heuristic(h, plan->d.desc, plan->d.first, plan->d.second, plan->d.out, plan->d.out, pref, 1, &result,
                     &found);
  if (pref) c.PrefDestroy(pref);
  if (st != 0 || found == 0)
    throw NoPlan(fmt::format("kiln: cuBLASLt has no algorithm for {} (status {}, pointers aligned to {}/{}/{}/{} "
                             "bytes)", g.name, st, align_first, align_second, align_out, align_bias));
  plan->algo = result.algo;
  return *g_plans.emplace(std::move(key), std::move(plan)).first->second;
}

}  // namespace

bool cublaslt_available(std::string* why) {
  CublasLt& c = table();
  if (why) *why = c.why;
  return c.why.empty();
}

void cublaslt_prefer(const std::string& path) { g_library.prefer(path); }

bool needs_cublaslt(const ir::GemmCall& call) { return call.bias >= 0; }

std::string cublaslt_check_descriptors(const ir::GemmCall& g, const std::vector<ir::Buffer>& buffers) {
  CublasLt& c = table();
  if (!c.why.empty()) return c.why;
  CublasProduct p = cublas_product(g);
  for (size_t i = 0; i < static_cast<size_t>(p.batch); i += p.run) {
    Descriptors d;
    std::string err = describe(c, call_shape(g, buffers, p, i), /*bias_ptr=*/0x1000, d);
    if (!err.empty()) return err;
  }
  Preference pref = nullptr;
  Status st = preference(c, 2, 16, 256, &pref);
  if (pref) c.PrefDestroy(pref);
  return st == 0 ? "" : fmt::format("the algorithm search's preferences (status {})", st);
}

std::string cublaslt_prepare(const ir::GemmCall& g, const std::vector<ir::Buffer>& buffers) {
  CublasLt& c = table();
  if (!c.why.empty()) return c.why;
  CublasProduct p = cublas_product(g);
  if (p.batch == 0 || p.M == 0 || p.N == 0) return "";
  if (!p.a.direct || !p.b.direct || p.K == 0) return cublas_unsupported(g, buffers);
  try {
    CuContext ctx = cuda_current_context(0);
    Handle h = handle_for(c, ctx);
    constexpr uint64_t kAligned = 1 << 20;  // only its alignment is read
    for (size_t i = 0; i < static_cast<size_t>(p.batch); i += p.run)
      plan_for(c, g, call_shape(g, buffers, p, i), h, ctx, kAligned, kAligned, kAligned, kAligned);
  } catch (const CudaError& e) {
    return e.what();
  }
  return "";
}

std::string cublaslt_gemm(const ir::GemmCall& g, const CublasProduct& p, const std::vector<ir::Buffer>& buffers,
                          const std::vector<uint64_t>& ptrs, CuStream stream) {
  CublasLt& c = table();
  if (!c.why.empty()) throw CudaError("kiln: " + c.why);
  if (p.batch == 0 || p.M == 0 || p.N == 0) return "";
  if (!p.a.direct || !p.b.direct || p.K == 0) throw CudaError("kiln: " + cublas_unsupported(g, buffers));
  CuContext ctx = cuda_current_context(0);
  Handle h = handle_for(c, ctx);
  size_t elem = ir::dtype_bytes(buffers[g.out].dtype);
  uint64_t A = ptrs[g.a.buffer], B = ptrs[g.b.buffer], D = ptrs[g.out];
  uint64_t bias = g.bias >= 0 ? ptrs[g.bias] + static_cast<uint64_t>(g.bias_offset) * elem : 0;
  const float one = 1, zero = 0;
  // Every call planned first (a plan for one alignment may not exist: nothing is enqueued
  // then), then enqueued.
  struct Call {
    Plan* plan;
    uint64_t a, b, out;
  };
  std::vector<Call> calls;
  for (size_t i = 0; i < static_cast<size_t>(p.batch); i += p.run) {
    Call call{nullptr, A + p.a_offsets[i] * elem, B + p.b_offsets[i] * elem, D + i * p.M * p.N * elem};
    try {
      call.plan = &plan_for(c, g, call_shape(g, buffers, p, i), h, ctx, call.a, call.b, call.out, bias);
    } catch (const NoPlan& e) {
      return e.what();
    }
    calls.push_back(call);
  }
  auto dev = [](uint64_t x) { return reinterpret_cast<void*>(static_cast<uintptr_t>(x)); };
  for (const Call& call : calls) {
    Plan& plan = *call.plan;
    std::lock_guard<std::mutex> lock(plan.mu);
    if (g.bias >= 0) {
      const void* ptr = dev(bias);
      check(c.DescSet(plan.d.desc, lt::kDescBiasPointer, &ptr, sizeof ptr), "BIAS_POINTER of " + g.name);
    }
    // beta = 0: C is not read (it is D, as PyTorch passes it).
    check(c.Matmul(h, plan.d.desc, &one, dev(call.b), plan.d.first, dev(call.a), plan.d.second, &zero, dev(call.out),
                   plan.d.out, dev(call.out), plan.d.out, &plan.algo, nullptr, 0, stream),
          g.name);
  }
  return "";
}

}  // namespace kiln::runtime
