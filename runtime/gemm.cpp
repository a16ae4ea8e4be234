/// \file gemm.cpp
/// Matrix-product steps (see gemm.h). Row-major products go to column-major BLAS as
/// C^T = B^T . A^T: a row-major operand read column-major is its own transpose, so a matrix
/// with unit column stride is passed as 'N' and one with unit row stride (a transposed weight)
/// as 'T', without a copy. Only operands with neither (a broadcast row, a strided slice) are
/// packed first, tile by tile. float32 products go to oneDNN's row-major GEMM when the library
/// has it (Note [Which GEMM] in blas.h): the same call with the operands in their own order;
/// bfloat16 ones always do (Note [bfloat16 products] below).
#include "runtime/gemm.h"

#include <algorithm>
#include <atomic>
#include <climits>
#include <cmath>
#include <cstring>
#include <type_traits>

#include "runtime/blas.h"
#include "runtime/gemm_layout.h"

namespace kiln::runtime {
namespace {

/// A bfloat16 element (its 16 bits): a type of its own so that templates tell it apart.
struct Bf16 {
  uint16_t bits;
};

/// The library's GEMM for element type T (picked by the pointer type).
blas::SgemmFn gemm_of(const blas::Library& l, const float*) { return l.sgemm; }
blas::DgemmFn gemm_of(const blas::Library& l, const double*) { return l.dgemm; }

float widen(Bf16 x) {
  uint32_t u = static_cast<uint32_t>(x.bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

/// float32 rounded to bfloat16, ties to even; NaN gives 0x7fc0 (c10::BFloat16's rounding, and
/// the CPU code generator's: Note [Half values in registers]).
Bf16 narrow(float f) {
  if (std::isnan(f)) return {0x7fc0};
  uint32_t u;
  std::memcpy(&u, &f, 4);
  u += ((u >> 16) & 1u) + 0x7fffu;
  return {static_cast<uint16_t>(u >> 16)};
}

// Note [bfloat16 products]: oneDNN's dnnl_gemm_bf16bf16f32 (what eager's bfloat16 mm runs on
// too) accumulates a tile in float32; kiln adds the row bias the product was handed (Note [Bias
// in the product]: a linear layer's), then rounds each element to bfloat16 once, as eager's
// addmm does, and the tile's epilogue reads it while it is in cache.
void finish_bf16_tile(const std::vector<float>& acc, Bf16* c, int64_t ldc, int m, int n, const Bf16* bias) {
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < n; ++j) c[i * ldc + j] = narrow(bias ? acc[i * n + j] + widen(bias[j]) : acc[i * n + j]);
}

/// A row-major copy of the rows x cols matrix at `src` (strides sr, sc) in `scratch`.
template <typename T>
const T* pack(const T* src, int64_t rows, int64_t cols, int64_t sr, int64_t sc, std::vector<T>& scratch) {
  scratch.resize(static_cast<size_t>(std::max<int64_t>(rows * cols, 1)));
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j) scratch[i * cols + j] = src[i * sr + j * sc];
  return scratch.data();
}

template <typename T>
bool run_typed(const ir::GemmCall& g, void* const* ptrs, ThreadPool& pool, const blas::Library& lib,
               const Epilogue* epi, bool* ran_epilogue) {
  constexpr bool bf16 = std::is_same<T, Bf16>::value;
  blas::DnnlGemmBf16Fn gemm_bf16 = bf16 ? blas::bf16_gemm() : nullptr;
  if (bf16 && !gemm_bf16) return false;
  const T* bias = g.bias >= 0 ? static_cast<const T*>(ptrs[g.bias]) + g.bias_offset : nullptr;
  if (bias && !bf16) return false;  // a CPU product takes a bias only in bfloat16 (Note [bfloat16 products])
  const ir::Sizes& as = g.a.sizes;
  size_t r = as.size();
  ir::Sizes batch(as.begin(), as.end() - 2);
  const ir::Sizes& bs = g.b.sizes;
  size_t rb = bs.size();
  int64_t M = as[r - 2], K = as[r - 1], N = bs[rb - 1];
  const T* A = static_cast<const T*>(ptrs[g.a.buffer]);
  const T* B = static_cast<const T*>(ptrs[g.b.buffer]);
  T* C = static_cast<T*>(ptrs[g.out]);
  int64_t nb = 1;
  for (int64_t s : batch) nb *= s;
  if (nb == 0 || M == 0 || N == 0) return true;
  if (K == 0) {  // an empty sum: zeros (BLAS need not touch C when k is 0), plus the bias
    if constexpr (bf16) {
      for (int64_t i = 0; i < nb * M; ++i)
        for (int64_t j = 0; j < N; ++j) C[i * N + j] = bias ? narrow(0.0f + widen(bias[j])) : Bf16{0};
    } else {
      std::fill(C, C + nb * M * N, T(0));
    }
    return true;
  }
  // A single-term product is written out here, not left to a BLAS: each library rounds a -0
  // product its own way (MKL keeps it, oneDNN sums it into +0), and eager's mm keeps it while
  // its bmm sums into +0 (see GemmCall::zero_start).
  bool single_term = K == 1;
  int64_t a_sr = as[r - 2] > 1 ? g.a.strides[r - 2] : 0, a_sc = K > 1 ? g.a.strides[r - 1] : 0;
  int64_t b_sr = K > 1 ? g.b.strides[rb - 2] : 0, b_sc = N > 1 ? g.b.strides[rb - 1] : 0;
  Layout la = layout_of(M, K, a_sr, a_sc), lb = layout_of(K, N, b_sr, b_sc);
  int64_t most = std::max({M, N, K, la.ld, lb.ld});
  if (most > INT_MAX) return false;
  std::vector<int64_t> a_off = batch_offsets(g.a), b_off = batch_offsets(g.b);
  // Tiles: whole matrices when the batch feeds every thread, else row blocks (column blocks when
  // there are too few rows: a decoder's single token).
  int threads = pool.threads();
  int64_t parts = 1;
  bool by_rows = true;
  if (nb < threads) {
    int64_t want = (threads + nb - 1) / nb;
    if (M >= 16 * want) {
      parts = want;
    } else if (N >= 64 * want) {
      parts = want;
      by_rows = false;
    }
  }
  // The epilogue runs per tile when each tile is whole spans of the output (rows of C, or a
  // batch's matrices), else after the product as its own step.
  bool fused = epi && by_rows && epi->span > 0 && (M * N) % epi->span == 0;
  for (int64_t p = 0; fused && p < parts; ++p) fused = (M * p / parts * N) % epi->span == 0;
  if (ran_epilogue) *ran_epilogue = fused;
  int64_t items = nb * parts;
  int64_t work = (M / (by_rows ? parts : 1)) * (N / (by_rows ? 1 : parts)) * K;
  bool dnnl = std::is_same<T, float>::value && lib.dnnl_sgemm;
  std::atomic<bool> failed{false};
  pool.parallel_for(items, std::max<int64_t>(work, 1), [&](int64_t begin, int64_t end) {
    int previous = lib.set_threads_local ? lib.set_threads_local(1) : 0;
    SerialOpenMP serial;
    thread_local std::vector<T> a_pack, b_pack;
    thread_local std::vector<float> acc;  // a bfloat16 tile before its one rounding
    for (int64_t item = begin; item < end; ++item) {
      int64_t bi = item / parts, p = item % parts;
      int64_t m0 = 0, m1 = M, n0 = 0, n1 = N;
      if (by_rows) {
        m0 = M * p / parts;
        m1 = M * (p + 1) / parts;
      } else {
        n0 = N * p / parts;
        n1 = N * (p + 1) / parts;
      }
      int m = static_cast<int>(m1 - m0), n = static_cast<int>(n1 - n0), k = static_cast<int>(K);
      if (m == 0 || n == 0) continue;
      // The tile's rows of C, handed to the epilogue while they are in this core's cache.
      auto epilogue = [&] {
        if (!fused) return;
        int64_t e0 = bi * M * N + m0 * N, e1 = bi * M * N + m1 * N;
        epi->fn(epi->buffers, e0 / epi->span, e1 / epi->span);
      };
      const T* a = A + a_off[bi] + m0 * a_sr;
      const T* b = B + b_off[bi] + n0 * b_sc;
      T* c = C + bi * M * N + m0 * N + n0;
      if (single_term) {
        if constexpr (bf16) {
          acc.resize(static_cast<size_t>(m) * n);
          for (int i = 0; i < m; ++i)
            for (int j = 0; j < n; ++j) {
              float p = widen(a[i * a_sr]) * widen(b[j * b_sc]);  // exact in float32
              acc[i * n + j] = g.zero_start ? 0.0f + p : p;
            }
          finish_bf16_tile(acc, c, N, m, n, bias ? bias + n0 : nullptr);
        } else {
          for (int i = 0; i < m; ++i)
            for (int j = 0; j < n; ++j) {
              T p = a[i * a_sr] * b[j * b_sc];
              c[i * N + j] = g.zero_start ? T(0) + p : p;
            }
        }
        epilogue();
        continue;
      }
      Layout ta = la, tb = lb;
      if (!la.direct) {
        a = pack(a, m, K, a_sr, a_sc, a_pack);
        ta = {true, false, std::max<int64_t>(1, K)};
      }
      if (!lb.direct) {
        b = pack(b, K, n, b_sr, b_sc, b_pack);
        tb = {true, false, std::max<int64_t>(1, n)};
      }
      int lda = static_cast<int>(ta.ld), ldb = static_cast<int>(tb.ld), ldc = static_cast<int>(N);
      const char* op_a = ta.col_major ? "T" : "N";
      const char* op_b = tb.col_major ? "T" : "N";
      if constexpr (bf16) {  // row-major, into a float32 tile (Note [bfloat16 products])
        acc.resize(static_cast<size_t>(m) * n);
        // oneDNN 2.6 pairs the k elements (vdpbf16ps) and, for an odd k, pads the last pair so
        // that an infinite last element of A gives NaN where eager gives inf: it sums an even
        // k here, and the last term is added below, in float32 (exact products).
        int even = k & ~1;
        bool ok = even == 0 ? (std::fill(acc.begin(), acc.end(), 0.0f), true)
                            : gemm_bf16(*op_a, *op_b, m, n, even, 1.0f, &a->bits, lda, &b->bits, ldb, 0.0f,
                                        acc.data(), n) == 0;
        if (!ok) {
          failed = true;
          continue;
        }
        if (even < k) {
          // element (i, k-1) of op(A) and (k-1, j) of op(B), in their stored layouts
          int64_t a_i = ta.col_major ? 1 : lda, a_k = ta.col_major ? lda : 1;
          int64_t b_k = tb.col_major ? 1 : ldb, b_j = tb.col_major ? ldb : 1;
          for (int i = 0; i < m; ++i) {
            float x = widen(a[i * a_i + (k - 1) * a_k]);
            for (int j = 0; j < n; ++j) acc[i * n + j] += x * widen(b[(k - 1) * b_k + j * b_j]);
          }
        }
        finish_bf16_tile(acc, c, ldc, m, n, bias ? bias + n0 : nullptr);
        epilogue();
      } else {
        if constexpr (std::is_same<T, float>::value) {
          if (dnnl) {  // row-major: C (m x n) = op(A) (m x k) . op(B) (k x n)
            if (lib.dnnl_sgemm(*op_a, *op_b, m, n, k, 1.0f, a, lda, b, ldb, 0.0f, c, ldc) != 0) failed = true;
            else epilogue();
            continue;
          }
        }
        // Column-major C^T (n x m) = op(B)^T (n x k) . op(A)^T (k x m).
        T one = 1, zero = 0;
        gemm_of(lib, a)(op_b, op_a, &n, &m, &k, &one, b, &ldb, a, &lda, &zero, c, &ldc);
        epilogue();
      }
    }
    if (lib.set_threads_local) lib.set_threads_local(previous);
  });
  return !failed;  // a oneDNN error (never seen: the arguments are checked above) runs the call eagerly
}

}  // namespace

std::string describe_gemm(const ir::GemmCall& g) {
  size_t r = g.a.sizes.size(), rb = g.b.sizes.size();
  auto how = [](const ir::GemmOperand& o) {
    Layout l = operand_layout(o);
    return !l.direct ? "packed" : l.col_major ? "transposed" : "as stored";
  };
  std::string batch;
  for (size_t d = 0; d + 2 < r; ++d) batch += std::to_string(g.a.sizes[d]) + "x";
  return g.name + ": " + (batch.empty() ? "" : "batch " + batch.substr(0, batch.size() - 1) + " of ") + "[" +
         std::to_string(g.a.sizes[r - 2]) + "x" + std::to_string(g.a.sizes[r - 1]) + "] . [" +
         std::to_string(g.b.sizes[rb - 2]) + "x" + std::to_string(g.b.sizes[rb - 1]) + "] (a " + how(g.a) + ", b " +
         how(g.b) + ")" + (g.epilogue >= 0 ? ", kernel " + std::to_string(g.epilogue) + " on each tile" : "");
}

bool gemm_available() { return blas::library().ok(); }

bool run_gemm(const ir::GemmCall& call, const std::vector<ir::Buffer>& buffers, void* const* ptrs, ThreadPool& pool,
              const Epilogue* epilogue, bool* ran_epilogue) {
  if (ran_epilogue) *ran_epilogue = false;
  const blas::Library& lib = blas::library();
  if (!lib.ok()) return false;
  switch (buffers[call.out].dtype) {
    case ir::DType::Float32: return run_typed<float>(call, ptrs, pool, lib, epilogue, ran_epilogue);
    case ir::DType::Float64: return run_typed<double>(call, ptrs, pool, lib, epilogue, ran_epilogue);
    case ir::DType::BFloat16: return run_typed<Bf16>(call, ptrs, pool, lib, epilogue, ran_epilogue);
    default: return false;
  }
}

}  // namespace kiln::runtime
