/// \file cuda_prelude.h
/// The text put in front of every generated CUDA kernel: scalar helpers with torch's semantics
/// (the same rules codegen_cpu/cpu_codegen.cpp implements in LLVM IR), half conversions, 16-byte
/// vector accesses and the block reduction. It needs no header under NVRTC; under nvcc the
/// `__CUDACC_RTC__` guard pulls in the one header NVRTC provides implicitly.
#pragma once

namespace kiln::cuda {

/// Include-guarded (KILN_PRELUDE), so several kernels' sources can be concatenated.
inline const char* cuda_prelude() {
  return R"KILN(// ---- kiln prelude: helpers shared by every generated kernel -----------------------------
#ifndef KILN_PRELUDE
#define KILN_PRELUDE
#ifndef __CUDACC_RTC__
#include <cuda_runtime.h>  // nvcc: uint2/uint4 and the math functions NVRTC has built in
#endif

// float16 / bfloat16 live in memory as their 16 bits and in registers as float (the arithmetic
// runs in float32, as PyTorch's own kernels do; a cast to them rounds).
#ifdef KILN_HOST_EMULATION  // tests/python/cuda_emulation.py runs kernels on the CPU: the host's _Float16
__device__ __forceinline__ float kiln_f16_to_f32(unsigned short h) {
  _Float16 v;
  __builtin_memcpy(&v, &h, 2);
  return (float)v;
}
__device__ __forceinline__ unsigned short kiln_f32_to_f16(float f) {
  _Float16 v = (_Float16)f;  // round to nearest even, as cvt.rn
  unsigned short h;
  __builtin_memcpy(&h, &v, 2);
  return h;
}
#else
__device__ __forceinline__ float kiln_f16_to_f32(unsigned short h) {
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
  return f;
}
__device__ __forceinline__ unsigned short kiln_f32_to_f16(float f) {
  unsigned short h;
  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
  return h;
}
#endif
__device__ __forceinline__ float kiln_bf16_to_f32(unsigned short h) { return __uint_as_float(((unsigned int)h) << 16); }
__device__ __forceinline__ unsigned short kiln_f32_to_bf16(float f) {
  unsigned int u = __float_as_uint(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((u >> 16) | 0x40u);  // NaN stays a quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);                                                  // round half to even
  return (unsigned short)(u >> 16);
}
__device__ __forceinline__ float kiln_round_f16(float x) { return kiln_f16_to_f32(kiln_f32_to_f16(x)); }
__device__ __forceinline__ float kiln_round_bf16(float x) { return kiln_bf16_to_f32(kiln_f32_to_bf16(x)); }

// torch.maximum / torch.minimum: a NaN in either operand wins (fmaxf would drop it).
__device__ __forceinline__ float kiln_max(float a, float b) { return (a != a || a > b) ? a : b; }
__device__ __forceinline__ float kiln_min(float a, float b) { return (a != a || a < b) ? a : b; }
__device__ __forceinline__ double kiln_max(double a, double b) { return (a != a || a > b) ? a : b; }
__device__ __forceinline__ double kiln_min(double a, double b) { return (a != a || a < b) ? a : b; }
template <class T> __device__ __forceinline__ T kiln_max(T a, T b) { return a > b ? a : b; }
template <class T> __device__ __forceinline__ T kiln_min(T a, T b) { return a < b ? a : b; }
__device__ __forceinline__ bool kiln_isnan(float x) { return x != x; }
__device__ __forceinline__ bool kiln_isnan(double x) { return x != x; }
template <class T> __device__ __forceinline__ bool kiln_isnan(T) { return false; }

// Integer division and remainder without traps: a zero divisor sets `st` (the kernel then
// raises the status word and kiln reruns the call eagerly, which raises torch's error) and
// divides by 1; MIN / -1 wraps. Floor forms round toward -inf, as torch's // and %.
template <class T> struct kiln_signed { static constexpr bool value = true; };
template <> struct kiln_signed<bool> { static constexpr bool value = false; };
template <> struct kiln_signed<unsigned char> { static constexpr bool value = false; };
template <class T> __device__ __forceinline__ T kiln_truncdiv(T a, T b, int& st) {
  if (b == 0) { st = 1; b = 1; }
  if constexpr (kiln_signed<T>::value) {
    if (b == (T)(-1)) return (T)(0ull - (unsigned long long)a);
  }
  return (T)(a / b);
}
// Index check for gathers: an out-of-range index flags the kernel and reads element 0.
__device__ __forceinline__ long long kiln_index_check(long long i, long long n, int& kst) {
  bool bad = (unsigned long long)i >= (unsigned long long)n;
  kst |= bad;
  return bad ? 0 : i;
}

template <class T> __device__ __forceinline__ T kiln_truncmod(T a, T b, int& st) {
  if (b == 0) { st = 1; b = 1; }
  if constexpr (kiln_signed<T>::value) {
    if (b == (T)(-1)) return (T)0;
  }
  return (T)(a % b);
}
template <class T> __device__ __forceinline__ T kiln_floordiv(T a, T b, int& st) {
  T q = kiln_truncdiv(a, b, st);
  if constexpr (kiln_signed<T>::value) {
    if (b == 0) return q;
    T r = kiln_truncmod(a, b, st);
    if (r != 0 && ((r < 0) != (b < 0))) return (T)(q - 1);
  }
  return q;
}
template <class T> __device__ __forceinline__ T kiln_floormod(T a, T b, int& st) {
  T r = kiln_truncmod(a, b, st);
  if constexpr (kiln_signed<T>::value) {
    if (b != 0 && r != 0 && ((r < 0) != (b < 0))) return (T)(r + b);
  }
  return r;
}
// The same for a constant divisor c > 0 (index arithmetic): nothing can fail.
__device__ __forceinline__ long long kiln_floordiv_c(long long a, long long c) {
  long long q = a / c;
  return (a % c != 0 && a < 0) ? q - 1 : q;
}
__device__ __forceinline__ long long kiln_floormod_c(long long a, long long c) {
  long long r = a % c;
  return (r != 0 && r < 0) ? r + c : r;
}

// Reductions: the combining operators, also used across threads.
template <class T> struct kiln_arg {  // argmax/argmin: value and its position (-1: none yet)
  T v;
  long long pos;
};
// Does `a` win over `b`? The first NaN wins; otherwise the best value, the first of equals.
template <bool Max, class T> __device__ __forceinline__ bool kiln_arg_wins(kiln_arg<T> a, kiln_arg<T> b) {
  if (b.pos < 0) return true;
  if (a.pos < 0) return false;
  const bool an = kiln_isnan(a.v), bn = kiln_isnan(b.v);
  if (an || bn) return an && (!bn || a.pos < b.pos);
  if (a.v == b.v) return a.pos < b.pos;
  return Max ? a.v > b.v : a.v < b.v;
}
template <class T> __device__ __forceinline__ kiln_arg<T> kiln_argmax(kiln_arg<T> a, kiln_arg<T> b) {
  return kiln_arg_wins<true>(a, b) ? a : b;
}
template <class T> __device__ __forceinline__ kiln_arg<T> kiln_argmin(kiln_arg<T> a, kiln_arg<T> b) {
  return kiln_arg_wins<false>(a, b) ? a : b;
}
struct kiln_sum_op { template <class T> __device__ __forceinline__ T operator()(T a, T b) const { return (T)(a + b); } };
struct kiln_prod_op { template <class T> __device__ __forceinline__ T operator()(T a, T b) const { return (T)(a * b); } };
struct kiln_max_op { template <class T> __device__ __forceinline__ T operator()(T a, T b) const { return kiln_max(a, b); } };
struct kiln_min_op { template <class T> __device__ __forceinline__ T operator()(T a, T b) const { return kiln_min(a, b); } };
struct kiln_any_op { __device__ __forceinline__ bool operator()(bool a, bool b) const { return a || b; } };
struct kiln_all_op { __device__ __forceinline__ bool operator()(bool a, bool b) const { return a && b; } };
struct kiln_argmax_op {
  template <class T> __device__ __forceinline__ kiln_arg<T> operator()(kiln_arg<T> a, kiln_arg<T> b) const { return kiln_argmax(a, b); }
};
struct kiln_argmin_op {
  template <class T> __device__ __forceinline__ kiln_arg<T> operator()(kiln_arg<T> a, kiln_arg<T> b) const { return kiln_argmin(a, b); }
};

// Warp shuffles for every accumulator type (sub-word types travel as int).
#define KILN_FULL_MASK 0xffffffffu
__device__ __forceinline__ float kiln_shfl_down(float v, int o) { return __shfl_down_sync(KILN_FULL_MASK, v, o); }
__device__ __forceinline__ double kiln_shfl_down(double v, int o) { return __shfl_down_sync(KILN_FULL_MASK, v, o); }
__device__ __forceinline__ int kiln_shfl_down(int v, int o) { return __shfl_down_sync(KILN_FULL_MASK, v, o); }
__device__ __forceinline__ long long kiln_shfl_down(long long v, int o) { return __shfl_down_sync(KILN_FULL_MASK, v, o); }
__device__ __forceinline__ bool kiln_shfl_down(bool v, int o) { return __shfl_down_sync(KILN_FULL_MASK, (int)v, o) != 0; }
__device__ __forceinline__ short kiln_shfl_down(short v, int o) { return (short)__shfl_down_sync(KILN_FULL_MASK, (int)v, o); }
__device__ __forceinline__ signed char kiln_shfl_down(signed char v, int o) {
  return (signed char)__shfl_down_sync(KILN_FULL_MASK, (int)v, o);
}
__device__ __forceinline__ unsigned char kiln_shfl_down(unsigned char v, int o) {
  return (unsigned char)__shfl_down_sync(KILN_FULL_MASK, (int)v, o);
}
template <class T> __device__ __forceinline__ kiln_arg<T> kiln_shfl_down(kiln_arg<T> v, int o) {
  v.v = kiln_shfl_down(v.v, o);
  v.pos = kiln_shfl_down(v.pos, o);
  return v;
}

__device__ __forceinline__ float kiln_shfl_up(float v, int o) { return __shfl_up_sync(KILN_FULL_MASK, v, o); }
__device__ __forceinline__ double kiln_shfl_up(double v, int o) { return __shfl_up_sync(KILN_FULL_MASK, v, o); }
__device__ __forceinline__ int kiln_shfl_up(int v, int o) { return __shfl_up_sync(KILN_FULL_MASK, v, o); }
__device__ __forceinline__ long long kiln_shfl_up(long long v, int o) { return __shfl_up_sync(KILN_FULL_MASK, v, o); }

// Folding scatters (scatter_add, index_add, scatter_reduce): `*p = f(*p)` as one atomic step
// (Note [CUDA folding scatters]). f maps the element's old memory value to its new one; the
// compare-and-swap runs on the element's own 4- or 8-byte word, or on the aligned 4-byte word
// holding a 1- or 2-byte element.
template <class M, class W>
__device__ __forceinline__ W kiln_bits_of(M v) {  // v's bytes in the low bytes of a W
  union { M m; W w; } u;
  u.w = 0;
  u.m = v;
  return u.w;
}
template <class M, class W>
__device__ __forceinline__ M kiln_from_bits(W w) {
  union { M m; W w; } u;
  u.w = w;
  return u.m;
}
template <class M, class F>
__device__ __forceinline__ void kiln_atomic_update(M* p, F f) {
  if (sizeof(M) == 8) {
    unsigned long long* w = (unsigned long long*)p;
    unsigned long long old = *w, seen;
    do {
      seen = old;
      old = atomicCAS(w, seen, kiln_bits_of<M, unsigned long long>(f(kiln_from_bits<M, unsigned long long>(seen))));
    } while (old != seen);
  } else {
    unsigned long long addr = (unsigned long long)p;
    unsigned int* w = (unsigned int*)(addr & ~3ull);
    const unsigned shift = (unsigned)(addr & 3ull) * 8u;
    const unsigned mask = sizeof(M) == 4 ? 0xffffffffu : ((1u << (sizeof(M) * 8u)) - 1u) << shift;
    unsigned int old = *w, seen;
    do {
      seen = old;
      M v = kiln_from_bits<M, unsigned int>((seen & mask) >> shift);
      unsigned int n = kiln_bits_of<M, unsigned int>(f(v));
      old = atomicCAS(w, seen, (seen & ~mask) | (n << shift));
    } while (old != seen);
  }
}

// Scans (cumsum, cumprod): each thread's fold of its chunk of the row in, the fold of every
// chunk before it out (`identity` for thread 0), in chunk order: an inclusive scan within each
// warp (shuffles), the warps' totals scanned by warp 0 in `smem` (33 values), then each thread
// combines its warp's prefix with its exclusive place in the warp.
template <class T, class Op>
__device__ __forceinline__ T kiln_block_exclusive_scan(T v, Op op, T identity, T* smem) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (int)(blockDim.x >> 5);
  T x = v;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    T y = kiln_shfl_up(x, o);
    if (lane >= o) x = op(y, x);
  }
  if (lane == 31) smem[warp] = x;
  __syncthreads();
  if (warp == 0) {
    T w = lane < warps ? smem[lane] : identity;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      T y = kiln_shfl_up(w, o);
      if (lane >= o) w = op(y, w);
    }
    if (lane < warps) smem[lane] = w;
  }
  __syncthreads();
  T before = kiln_shfl_up(x, 1);  // this warp's fold up to the previous lane
  T r = warp > 0 ? smem[warp - 1] : identity;
  if (lane > 0) r = op(r, before);
  __syncthreads();  // smem is reused by the next row
  return r;
}

// Folds one value per thread into one per block and gives it to every thread. `smem` holds 33
// values: one per warp, then the result. blockDim.x is a multiple of 32.
template <class T, class Op>
__device__ __forceinline__ T kiln_block_reduce(T v, Op op, T identity, T* smem) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = op(v, kiln_shfl_down(v, o));
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  if (warp == 0) {
    T w = lane < (int)(blockDim.x >> 5) ? smem[lane] : identity;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) w = op(w, kiln_shfl_down(w, o));
    if (lane == 0) smem[32] = w;
  }
  __syncthreads();
  return smem[32];
}

// Column kernels: thread t folds column t % W of the block's tile (W divides 32), so column c's
// partials are in threads c, c + W, c + 2W, ... Folds them (shuffles within each warp, then the
// warps' values in order from `smem`, which holds blockDim.x / 32 * W) and gives every thread
// its column's result.
template <int W, class T, class Op>
__device__ __forceinline__ T kiln_column_reduce(T v, Op op, T* smem) {
#pragma unroll
  for (int o = 16; o >= W; o >>= 1) v = op(v, kiln_shfl_down(v, o));
  const int col = threadIdx.x % W;
  if ((threadIdx.x & 31) < W) smem[(threadIdx.x >> 5) * W + col] = v;
  __syncthreads();
  T r = smem[col];
  for (int w = 1; w < (int)(blockDim.x >> 5); ++w) r = op(r, smem[w * W + col]);
  __syncthreads();
  return r;
}

// N consecutive elements in one access of up to 16 bytes (the caller checked kiln_aligned).
template <int N, class T> __device__ __forceinline__ bool kiln_aligned(const T* p) {
  constexpr unsigned long long bytes = N * sizeof(T) >= 16 ? 16 : N * sizeof(T);
  return (reinterpret_cast<unsigned long long>(p) & (bytes - 1)) == 0;
}
template <int N, class T> __device__ __forceinline__ void kiln_vload(T (&d)[N], const T* p) {
  constexpr int bytes = N * (int)sizeof(T);
  if constexpr (bytes % 16 == 0) {
#pragma unroll
    for (int k = 0; k < bytes / 16; ++k) reinterpret_cast<uint4*>(d)[k] = reinterpret_cast<const uint4*>(p)[k];
  } else if constexpr (bytes == 8) {
    *reinterpret_cast<uint2*>(d) = *reinterpret_cast<const uint2*>(p);
  } else if constexpr (bytes == 4) {
    *reinterpret_cast<unsigned int*>(d) = *reinterpret_cast<const unsigned int*>(p);
  } else {
#pragma unroll
    for (int k = 0; k < N; ++k) d[k] = p[k];
  }
}
template <int N, class T> __device__ __forceinline__ void kiln_vstore(T* p, const T (&s)[N]) {
  constexpr int bytes = N * (int)sizeof(T);
  if constexpr (bytes % 16 == 0) {
#pragma unroll
    for (int k = 0; k < bytes / 16; ++k) reinterpret_cast<uint4*>(p)[k] = reinterpret_cast<const uint4*>(s)[k];
  } else if constexpr (bytes == 8) {
    *reinterpret_cast<uint2*>(p) = *reinterpret_cast<const uint2*>(s);
  } else if constexpr (bytes == 4) {
    *reinterpret_cast<unsigned int*>(p) = *reinterpret_cast<const unsigned int*>(s);
  } else {
#pragma unroll
    for (int k = 0; k < N; ++k) p[k] = s[k];
  }
}
#endif  // KILN_PRELUDE
// ---- end of prelude ---------------------------------------------------------------------------
)KILN";
}

}  // namespace kiln::cuda
