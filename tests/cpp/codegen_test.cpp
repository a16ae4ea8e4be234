/// \file codegen_test.cpp
/// CPU codegen numerics on raw buffers: every output buffer is poisoned first, so an element a
/// kernel fails to write shows up as a mismatch.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <type_traits>

#include "capture/graph_builder.h"
#include "codegen_cpu/cpu_codegen.h"
#include "passes/pipeline.h"
#include "runtime/compiled_program.h"

using namespace kiln;
using namespace kiln::ir;

namespace {
capture::Operand V(int v) { return capture::Operand::of_value(v); }
capture::Operand F(double f) { return {capture::Operand::Kind::Float, -1, f, 0}; }
capture::Operand I(int64_t i) { return {capture::Operand::Kind::Int, -1, 0, i}; }

/// Compiles the builder's graph and runs it on raw input buffers; returns each output's bytes.
struct Runner {
  KernelProgram prog;
  std::unique_ptr<runtime::CompiledProgram> compiled;
  explicit Runner(const capture::GraphBuilder& b) {
    passes::PassOptions o;
    o.verify = true;
    KernelProgram p = passes::run_pipeline(b.graph(), o);
    cpu::CpuCode code = cpu::compile_cpu(p, {});
    compiled = std::make_unique<runtime::CompiledProgram>(std::move(p), std::move(code));
  }
  /// Returns false when a kernel flagged integer division by zero.
  bool run(const std::vector<void*>& inputs, std::vector<std::vector<char>>& outputs) {
    const auto& p = compiled->program();
    std::vector<void*> ptrs(p.buffers.size());
    outputs.assign(p.outputs.size(), {});
    for (size_t i = 0; i < p.buffers.size(); ++i) {
      const Buffer& b = p.buffers[i];
      if (b.kind == BufferKind::Input) ptrs[i] = inputs[b.index];
      if (b.kind == BufferKind::Output) {
        auto& o = outputs[b.index];
        o.assign(b.storage_numel() * dtype_bytes(b.dtype), static_cast<char>(0x7f));  // poison
        ptrs[i] = o.data();
      }
    }
    return compiled->run(ptrs);
  }
};

template <typename T>
std::vector<T> as(const std::vector<char>& bytes) {
  std::vector<T> v(bytes.size() / sizeof(T));
  std::memcpy(v.data(), bytes.data(), bytes.size());
  return v;
}

std::vector<float> random_floats(size_t n, uint32_t seed, float lo = -1.5f, float hi = 1.5f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}
}  // namespace

TEST(Codegen, FusedChainWithVectorTails) {
  for (int64_t n : {1, 7, 17, 1023, 40000}) {
    capture::GraphBuilder b;
    int x = b.add_input(DType::Float32, {n}, {1}, 0);
    int y = b.add_input(DType::Float32, {n}, {1}, 1);
    int v = b.call("mul", {V(x), V(y)}, {});
    v = b.call("add", {V(v), F(0.5)}, {});
    v = b.call("tanh", {V(v)}, {});
    v = b.call("mul", {V(v), V(x)}, {});
    b.set_outputs({v});
    Runner r(b);
    auto xs = random_floats(n, 1), ys = random_floats(n, 2);
    std::vector<std::vector<char>> out;
    ASSERT_TRUE(r.run({xs.data(), ys.data()}, out));
    auto o = as<float>(out[0]);
    for (int64_t i = 0; i < n; ++i) {
      float ref = std::tanh(xs[i] * ys[i] + 0.5f) * xs[i];
      ASSERT_NEAR(o[i], ref, 2e-6f) << "n=" << n << " i=" << i;
    }
  }
}

TEST(Codegen, BroadcastPermuteSliceReshape) {
  // out[i, j] = x[j, i] (transposed view) + y[2*j] (sliced with step) over a reshaped z
  capture::GraphBuilder b;
  int x = b.add_input(DType::Float32, {6, 5}, {5, 1}, 0);
  int y = b.add_input(DType::Float32, {12}, {1}, 1);
  int xt = b.call("permute", {V(x)}, {{1, 0}});
  Attrs sl;
  sl.ints = {0, 0, 12, 2};
  int ys = b.call("slice", {V(y)}, sl);
  int s = b.call("add", {V(xt), V(ys)}, {});
  Attrs rs;
  rs.ints = {30};
  b.set_outputs({b.call("reshape", {V(s)}, rs)});
  Runner r(b);
  auto xs = random_floats(30, 3), ysv = random_floats(12, 4);
  std::vector<std::vector<char>> out;
  ASSERT_TRUE(r.run({xs.data(), ysv.data()}, out));
  auto o = as<float>(out[0]);
  for (int i = 0; i < 5; ++i)
    for (int j = 0; j < 6; ++j) EXPECT_FLOAT_EQ(o[i * 6 + j], xs[j * 5 + i] + ysv[2 * j]);
}

TEST(Codegen, NaNRulesOfMaximumAndComparisons) {
  capture::GraphBuilder b;
  int x = b.add_input(DType::Float32, {4}, {1}, 0);
  int y = b.add_input(DType::Float32, {4}, {1}, 1);
  b.set_outputs({b.call("maximum", {V(x), V(y)}, {}), b.call("ne", {V(x), V(y)}, {}),
                 b.call("lt", {V(x), V(y)}, {})});
  Runner r(b);
  float nan = std::numeric_limits<float>::quiet_NaN();
  std::vector<float> xs = {nan, 1.f, 2.f, -0.f}, ys = {1.f, nan, 3.f, 0.f};
  std::vector<std::vector<char>> out;
  ASSERT_TRUE(r.run({xs.data(), ys.data()}, out));
  auto mx = as<float>(out[0]);
  EXPECT_TRUE(std::isnan(mx[0]));
  EXPECT_TRUE(std::isnan(mx[1]));
  EXPECT_EQ(mx[2], 3.f);
  auto ne = as<uint8_t>(out[1]);
  auto lt = as<uint8_t>(out[2]);
  EXPECT_EQ(std::vector<int>(ne.begin(), ne.end()), (std::vector<int>{1, 1, 1, 0}));
  EXPECT_EQ(std::vector<int>(lt.begin(), lt.end()), (std::vector<int>{0, 0, 1, 0}));
}

TEST(Codegen, IntegerFloorDivisionAndRemainder) {
  capture::GraphBuilder b;
  int x = b.add_input(DType::Int32, {6}, {1}, 0);
  int y = b.add_input(DType::Int32, {6}, {1}, 1);
  b.set_outputs({b.call("floor_divide", {V(x), V(y)}, {}), b.call("remainder", {V(x), V(y)}, {}),
                 b.call("fmod", {V(x), V(y)}, {})});
  Runner r(b);
  std::vector<int32_t> xs = {7, -7, 7, -7, INT32_MIN, 5}, ys = {2, 2, -2, -2, -1, 7};
  std::vector<std::vector<char>> out;
  ASSERT_TRUE(r.run({xs.data(), ys.data()}, out));
  EXPECT_EQ(as<int32_t>(out[0]), (std::vector<int32_t>{3, -4, -4, 3, INT32_MIN, 0}));
  EXPECT_EQ(as<int32_t>(out[1]), (std::vector<int32_t>{1, 1, -1, -1, 0, 5}));
  EXPECT_EQ(as<int32_t>(out[2]), (std::vector<int32_t>{1, -1, 1, -1, 0, 5}));
}

TEST(Codegen, FusedMultiplyAddRoundsOnce) {
  // addcmul records fma(value * t1, t2, self) (capture/pointwise_ops.cpp): one rounding, as
  // eager's contracted kernel; 33 elements reach both the vector body and the tail.
  capture::GraphBuilder b;
  int x = b.add_input(DType::Float32, {33}, {1}, 0);
  int y = b.add_input(DType::Float32, {33}, {1}, 1);
  int z = b.add_input(DType::Float32, {33}, {1}, 2);
  b.set_outputs({b.call("addcmul", {V(x), V(y), V(z), F(1.0)}, {})});
  Runner r(b);
  auto xs = random_floats(33, 1), ys = random_floats(33, 2, -1e4f, 1e4f), zs = random_floats(33, 3, -1e4f, 1e4f);
  std::vector<std::vector<char>> out;
  ASSERT_TRUE(r.run({xs.data(), ys.data(), zs.data()}, out));
  auto got = as<float>(out[0]);
  int unfused_differs = 0;
  for (size_t i = 0; i < 33; ++i) {
    EXPECT_EQ(got[i], std::fma(ys[i], zs[i], xs[i])) << i;
    volatile float p = ys[i] * zs[i];
    unfused_differs += (p + xs[i]) != got[i];
  }
  EXPECT_GT(unfused_differs, 0);  // the inputs tell a fused multiply-add from a separate one
}

namespace {
/// ATen's powi: squaring on the exponent's bits, products wrapping; negative exponents give 0
/// except for bases 1 and -1.
template <typename T>
T reference_powi(T a, T e) {
  if (e < 0) return a == 1 ? 1 : a == -1 ? ((-static_cast<int64_t>(e)) % 2 ? -1 : 1) : 0;
  using U = std::make_unsigned_t<T>;
  U r = 1, base = static_cast<U>(a);
  while (e) {
    if (e & 1) r = static_cast<U>(r * base);
    e /= 2;
    base = static_cast<U>(base * base);
  }
  return static_cast<T>(r);
}
}  // namespace

TEST(Codegen, IntegerPowBySquaringWraps) {
  capture::GraphBuilder b;
  int x = b.add_input(DType::Int32, {12}, {1}, 0);
  int y = b.add_input(DType::Int32, {12}, {1}, 1);
  b.set_outputs({b.call("pow", {V(x), V(y)}, {})});
  Runner r(b);
  std::vector<int32_t> xs = {2, 3, -3, 7, 1, -1, -1, 5, 0, 0, -2, INT32_MIN};
  std::vector<int32_t> ys = {10, 40, 21, 1000, -7, -3, -4, -1, 0, 5, 31, 2};
  std::vector<std::vector<char>> out;
  ASSERT_TRUE(r.run({xs.data(), ys.data()}, out));
  auto got = as<int32_t>(out[0]);
  for (size_t i = 0; i < xs.size(); ++i) EXPECT_EQ(got[i], reference_powi(xs[i], ys[i])) << xs[i] << " ** " << ys[i];
}

TEST(Codegen, IntegerDivisionByZeroIsFlaggedNotTrapped) {
  capture::GraphBuilder b;
  int x = b.add_input(DType::Int64, {3}, {1}, 0);
  int y = b.add_input(DType::Int64, {3}, {1}, 1);
  b.set_outputs({b.call("floor_divide", {V(x), V(y)}, {})});
  Runner r(b);
  std::vector<int64_t> xs = {1, 2, 3}, ys = {1, 0, 1};
  std::vector<std::vector<char>> out;
  EXPECT_FALSE(r.run({xs.data(), ys.data()}, out));
  ys[1] = 2;
  EXPECT_TRUE(r.run({xs.data(), ys.data()}, out));
}

TEST(Codegen, CastsAndPromotion) {
  capture::GraphBuilder b;
  int x = b.add_input(DType::Int32, {4}, {1}, 0);
  int f = b.call("add", {V(x), F(0.5)}, {});  // int32 + float scalar -> float32
  int t = b.call("mul", {V(x), I(3)}, {});    // int32 * int scalar -> int32
  Attrs to_bool;
  to_bool.dtype = DType::Bool;
  b.set_outputs({f, t, b.call("cast", {V(x)}, to_bool)});
  EXPECT_EQ(b.node(f).dtype, DType::Float32);
  EXPECT_EQ(b.node(t).dtype, DType::Int32);
  Runner r(b);
  std::vector<int32_t> xs = {-2, 0, 3, 100};
  std::vector<std::vector<char>> out;
  ASSERT_TRUE(r.run({xs.data()}, out));
  EXPECT_EQ(as<float>(out[0]), (std::vector<float>{-1.5f, 0.5f, 3.5f, 100.5f}));
  EXPECT_EQ(as<int32_t>(out[1]), (std::vector<int32_t>{-6, 0, 9, 300}));
  auto bo = as<uint8_t>(out[2]);
  EXPECT_EQ(std::vector<int>(bo.begin(), bo.end()), (std::vector<int>{1, 0, 1, 1}));
}

TEST(Codegen, ZeroDimAndSizeOne) {
  capture::GraphBuilder b;
  int x = b.add_input(DType::Float64, {}, {}, 0);
  int y = b.add_input(DType::Float64, {1, 3}, {3, 1}, 1);
  b.set_outputs({b.call("exp", {V(x)}, {}), b.call("mul", {V(x), V(y)}, {})});
  Runner r(b);
  double xv = 0.25;
  std::vector<double> ys = {1, 2, 3};
  std::vector<std::vector<char>> out;
  ASSERT_TRUE(r.run({&xv, ys.data()}, out));
  EXPECT_DOUBLE_EQ(as<double>(out[0])[0], std::exp(0.25));
  EXPECT_EQ(as<double>(out[1]), (std::vector<double>{0.25, 0.5, 0.75}));
}

TEST(Codegen, KernelIsVectorised) {
  capture::GraphBuilder b;
  int x = b.add_input(DType::Float32, {4096}, {1}, 0);
  b.set_outputs({b.call("exp", {V(b.call("mul", {V(x), F(2.0)}, {}))}, {})});
  passes::PassOptions o;
  KernelProgram p = passes::run_pipeline(b.graph(), o);
  cpu::CpuCode code = cpu::compile_cpu(p, {});
  EXPECT_NE(code.text.module_ir.find("x float>"), std::string::npos) << code.text.module_ir;
}

TEST(Runtime, ASerialOuterLoopRunsInOrderOnOneThread) {
  // The runtime splits a kernel's outer loop across threads only when it is parallel. A serial
  // one (a folding scatter's only loop) must run in order: here each element reads the one
  // before it, which a split would read before its thread had written it.
  constexpr int64_t n = 1 << 20;
  capture::GraphBuilder b;
  int x = b.add_input(DType::Int64, {n}, {1}, 0);
  b.set_outputs({b.call("add", {V(x), I(1)}, {})});
  passes::PassOptions o;
  KernelProgram p = passes::run_pipeline(b.graph(), o);
  ASSERT_EQ(p.kernels.size(), 1u);
  Kernel& k = p.kernels[0];
  ASSERT_EQ(k.loops.size(), 1u);
  k.loops[0].kind = LoopKind::Serial;
  Context& c = *p.ctx;
  Store& s = k.phases[0].stores.at(0);
  Expr i = k.loops[0].var;
  Expr prev = c.binary(ExprOp::Max, c.add(i, -1), c.int_const(0));
  s.value = c.select(c.binary(ExprOp::Eq, i, c.int_const(0)), c.int_const(0),
                     c.add(c.load(s.buffer, prev, DType::Int64), 1));
  cpu::CpuCode code = cpu::compile_cpu(p, {});
  runtime::CompiledProgram compiled(std::move(p), std::move(code));
  const auto& q = compiled.program();
  std::vector<int64_t> in(n, 0), out(n, -7);
  std::vector<void*> ptrs(q.buffers.size());
  for (size_t bi = 0; bi < q.buffers.size(); ++bi)
    ptrs[bi] = q.buffers[bi].kind == BufferKind::Input ? static_cast<void*>(in.data()) : static_cast<void*>(out.data());
  ASSERT_TRUE(compiled.run(ptrs));
  for (int64_t j = 0; j < n; j += 4099) ASSERT_EQ(out[j], j) << "element " << j;
  EXPECT_EQ(out[n - 1], n - 1);
}
