/// \file gemm_test.cpp
/// Matrix-product steps on raw buffers against a naive reference: every operand layout BLAS
/// reads in place (row-major, transposed) or the runtime packs (strided, broadcast), batches
/// with a broadcast operand, row and column splits across threads, float64, and empty sums.
/// Outputs are poisoned first, so an element no tile wrote fails.
#include <gtest/gtest.h>

#include <dlfcn.h>

#include <cmath>
#include <random>
#include <vector>

#include "runtime/blas.h"
#include "runtime/gemm.h"
#include "support/config.h"

using kiln::ir::Buffer;
using kiln::ir::BufferKind;
using kiln::ir::DType;
using kiln::ir::GemmCall;
using kiln::ir::GemmOperand;
using kiln::ir::Sizes;
using kiln::runtime::ThreadPool;

namespace {

/// Strides of a [batch..., rows, cols] view: "row" (row-major), "col" (last two dims swapped in
/// memory), "step2" (every other column), "bcast_rows" (stride 0 over rows); batch dims are
/// outermost, or stride 0 when `batch_bcast`.
Sizes strides_for(const Sizes& sizes, const std::string& layout, bool batch_bcast, int64_t* span) {
  size_t r = sizes.size();
  int64_t rows = sizes[r - 2], cols = sizes[r - 1];
  Sizes st(r, 0);
  int64_t mat = 0;
  if (layout == "row") {
    st[r - 2] = cols, st[r - 1] = 1, mat = rows * cols;
  } else if (layout == "col") {
    st[r - 2] = 1, st[r - 1] = rows, mat = rows * cols;
  } else if (layout == "step2") {
    st[r - 2] = 2 * cols, st[r - 1] = 2, mat = 2 * rows * cols;
  } else {  // bcast_rows
    st[r - 2] = 0, st[r - 1] = 1, mat = cols;
  }
  int64_t acc = std::max<int64_t>(mat, 1);
  for (size_t d = r - 2; d-- > 0;) {
    st[d] = batch_bcast ? 0 : acc;
    if (!batch_bcast) acc *= sizes[d];
  }
  *span = acc + 1;
  return st;
}

template <typename T>
void run_case(Sizes a_sizes, Sizes b_sizes, const std::string& la, const std::string& lb, bool b_batch_bcast,
              int threads, bool zero_start = false) {
  size_t r = a_sizes.size();
  int64_t a_span = 0, b_span = 0;
  Sizes as = strides_for(a_sizes, la, false, &a_span), bs = strides_for(b_sizes, lb, b_batch_bcast, &b_span);
  std::mt19937 gen(42);
  std::uniform_real_distribution<double> dist(-1.5, 1.5);
  std::vector<T> A(a_span + 3), B(b_span + 3);
  for (auto& x : A) x = static_cast<T>(dist(gen));
  for (auto& x : B) x = static_cast<T>(dist(gen));
  A[3] = static_cast<T>(-0.0);  // a -0 product where K = 1
  Sizes out_sizes(a_sizes.begin(), a_sizes.end() - 1);
  out_sizes.push_back(b_sizes[r - 1]);
  int64_t nout = 1;
  for (int64_t s : out_sizes) nout *= s;
  std::vector<T> C(std::max<int64_t>(nout, 1), static_cast<T>(NAN));  // poison
  DType dt = sizeof(T) == 4 ? DType::Float32 : DType::Float64;
  std::vector<Buffer> bufs = {{BufferKind::Input, 0, dt, {a_span + 3}, {1}},
                              {BufferKind::Input, 1, dt, {b_span + 3}, {1}},
                              {BufferKind::Temp, -1, dt, out_sizes, {}}};
  GemmCall call;
  call.a = GemmOperand{0, a_sizes, as, 3};  // offset 3: the view does not start at the buffer's start
  call.b = GemmOperand{1, b_sizes, bs, 2};
  call.out = 2;
  call.zero_start = zero_start;
  void* ptrs[] = {A.data(), B.data(), C.data()};
  ThreadPool pool(threads);
  ASSERT_TRUE(kiln::runtime::run_gemm(call, bufs, ptrs, pool));
  int64_t M = a_sizes[r - 2], K = a_sizes[r - 1], N = b_sizes[r - 1];
  int64_t nb = nout / std::max<int64_t>(M * N, 1);
  for (int64_t bi = 0; bi < (M * N != 0 ? nb : 0); ++bi) {
    // batch offsets (row-major over the batch dims)
    int64_t ao = 3, bo = 2, rem = bi;
    for (size_t d = r - 2; d-- > 0;) {
      int64_t i = rem % a_sizes[d];
      rem /= a_sizes[d];
      ao += i * as[d];
      bo += i * bs[d];
    }
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < N; ++n) {
        double ref = 0;
        for (int64_t k = 0; k < K; ++k)
          ref += static_cast<double>(A[ao + m * as[r - 2] + k * as[r - 1]]) * B[bo + k * bs[r - 2] + n * bs[r - 1]];
        double got = C[bi * M * N + m * N + n];
        if (K == 1) {  // one product, written out: exact, -0 kept unless summed into +0
          T p = A[ao + m * as[r - 2]] * B[bo + n * bs[r - 1]];
          T want = zero_start ? T(0) + p : p;
          ASSERT_EQ(std::signbit(got), std::signbit(want)) << "signed zero at (" << m << ", " << n << ")";
        }
        double tol = (sizeof(T) == 4 ? 1e-5 : 1e-12) * (1 + K);
        ASSERT_NEAR(got, ref, tol) << la << "/" << lb << " batch " << bi << " at (" << m << ", " << n << ")";
      }
  }
}

}  // namespace

/// Runs the test body once per library choice that opens here: `auto` (float32 on oneDNN when
/// libdnnl is installed) and `openblas`.
class GemmLibraries : public ::testing::TestWithParam<const char*> {
 protected:
  void SetUp() override {
    kiln::set_knob("blas", GetParam());
    if (!kiln::runtime::gemm_available()) GTEST_SKIP() << GetParam() << " does not open here";
  }
  void TearDown() override { kiln::set_knob("blas", "auto"); }
};
INSTANTIATE_TEST_SUITE_P(Gemm, GemmLibraries, ::testing::Values("auto", "openblas"));

TEST(Gemm, OpensABlas) { EXPECT_TRUE(kiln::runtime::gemm_available()) << kiln::runtime::blas::library().name; }

TEST(Gemm, AutoUsesOneDnnForFloat32WhenInstalled) {
  // Without torch's MKL in the process (these tests), auto pairs OpenBLAS with oneDNN on any CPU.
  void* h = dlopen("libdnnl.so.2", RTLD_NOW | RTLD_LOCAL);
  if (!h) GTEST_SKIP() << "libdnnl.so.2 is not installed";
  EXPECT_NE(kiln::runtime::blas::library().dnnl_sgemm, nullptr) << kiln::runtime::blas::library().name;
  dlclose(h);
}

TEST_P(GemmLibraries, Float32Layouts) {
  for (const char* la : {"row", "col", "step2"})
    for (const char* lb : {"row", "col", "bcast_rows"}) run_case<float>({37, 29}, {29, 41}, la, lb, false, 2);
  run_case<float>({3, 2, 6, 5}, {3, 2, 5, 4}, "row", "col", false, 2);
  run_case<float>({257, 33}, {33, 19}, "row", "row", false, 3);
  run_case<float>({2, 40}, {40, 1031}, "row", "col", false, 3);
}

TEST_P(GemmLibraries, SingleTermProductsKeepOrDropNegativeZero) {
  // K = 1: mm keeps a -0 product (as eager's BLAS does), bmm sums it into +0 (zero_start).
  for (bool zs : {false, true}) {
    run_case<float>({6, 1}, {1, 4}, "row", "row", false, 2, zs);
    run_case<float>({2, 6, 1}, {2, 1, 4}, "col", "row", false, 2, zs);
    run_case<double>({6, 1}, {1, 4}, "row", "col", false, 2, zs);
  }
}

TEST(Gemm, EveryOperandLayout) {
  for (const char* la : {"row", "col", "step2", "bcast_rows"})
    for (const char* lb : {"row", "col", "step2", "bcast_rows"}) run_case<float>({13, 7}, {7, 9}, la, lb, false, 2);
}

TEST(Gemm, SizeOneDimsAndVectors) {
  for (const char* l : {"row", "col"}) {
    run_case<float>({1, 5}, {5, 8}, l, l, false, 2);
    run_case<float>({6, 1}, {1, 4}, l, l, false, 2);
    run_case<float>({6, 5}, {5, 1}, l, l, false, 2);
    run_case<float>({1, 1}, {1, 1}, l, l, false, 1);
  }
}

TEST(Gemm, BatchesWithABroadcastOperand) {
  run_case<float>({3, 2, 6, 5}, {3, 2, 5, 4}, "row", "col", false, 2);
  run_case<float>({4, 6, 5}, {4, 5, 7}, "col", "row", true, 3);
}

TEST(Gemm, RowAndColumnSplitsCoverEveryElement) {
  run_case<float>({257, 33}, {33, 19}, "row", "row", false, 3);   // row blocks
  run_case<float>({2, 40}, {40, 1031}, "row", "col", false, 3);   // column blocks
  run_case<float>({1, 40}, {40, 517}, "step2", "row", false, 2);  // column blocks, packed a
}

TEST(Gemm, Float64) { run_case<double>({17, 9}, {9, 11}, "col", "step2", false, 2); }

TEST(Gemm, EmptyDims) {
  run_case<float>({4, 0}, {0, 3}, "row", "row", false, 2);  // zeros, not poison
  run_case<float>({0, 5}, {5, 3}, "row", "row", false, 2);
  run_case<float>({2, 0, 5}, {2, 5, 3}, "row", "row", false, 2);
}
