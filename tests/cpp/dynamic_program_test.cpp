/// \file dynamic_program_test.cpp
/// Dynamic programs (Note [Dynamic leading sizes]): a template fitted from two captures, one
/// compile, and instances that compute what a program specialised on each size computes.
#include <gtest/gtest.h>

#include <cstring>
#include <random>

#include "capture/graph_builder.h"
#include "runtime/dynamic_program.h"
#include "support/error.h"

using namespace kiln;
using namespace kiln::ir;

namespace {
capture::Operand V(int v) { return capture::Operand::of_value(v); }

/// out = x * w + sum(x, dim 1, keepdim) over x: [n, 7], w: [7].
Graph row_graph(int64_t n) {
  capture::GraphBuilder b;
  int x = b.add_input(DType::Float32, {n, 7}, {7, 1}, 0);
  int w = b.add_input(DType::Float32, {7}, {1}, 1);
  Attrs sum;
  sum.ints = {1};
  sum.int_value = 1;
  int s = b.call("sum", {V(x)}, sum);
  b.set_outputs({b.call("add", {V(b.call("mul", {V(x), V(w)}, {})), V(s)}, {})});
  return b.graph();
}

/// Runs `p` on x [n, 7] and w [7]; returns the output.
std::vector<float> run(runtime::CompiledProgram& p, std::vector<float>& x, std::vector<float>& w) {
  const auto& kp = p.program();
  std::vector<void*> ptrs(kp.buffers.size(), nullptr);
  std::vector<float> out;
  for (size_t i = 0; i < kp.buffers.size(); ++i) {
    const Buffer& b = kp.buffers[i];
    if (b.kind == BufferKind::Input) ptrs[i] = b.index == 0 ? x.data() : w.data();
    if (b.kind == BufferKind::Output) {
      out.assign(b.storage_numel(), 12345.0f);  // poison: an element not written shows
      ptrs[i] = out.data();
    }
  }
  EXPECT_TRUE(p.run(ptrs));
  return out;
}

std::vector<float> random_floats(size_t n, unsigned seed) {
  std::mt19937 g(seed);
  std::normal_distribution<float> d;
  std::vector<float> v(n);
  for (auto& x : v) x = d(g);
  return v;
}
}  // namespace

TEST(DynamicProgram, OneCompileServesEverySizeBitForBit) {
  runtime::GraphTemplate t = runtime::fit_graph_template(row_graph(4), row_graph(6));
  EXPECT_EQ(t.source, "leaf 0 size(0)");
  ASSERT_EQ(t.inputs.size(), 2u);
  EXPECT_EQ(t.inputs[0].sizes[0], (runtime::Affine{0, 1}));
  EXPECT_EQ(t.inputs[0].strides[0], (runtime::Affine{7, 0}));
  runtime::CpuCompileOptions opts;
  runtime::DynamicCpuProgram dyn(t, opts);
  for (int64_t n : {2, 3, 5, 17, 64, 1000}) {
    std::string why;
    auto p = dyn.at(n, &why);
    ASSERT_TRUE(p) << why;
    auto x = random_floats(n * 7, static_cast<unsigned>(n)), w = random_floats(7, 99);
    auto got = run(*p, x, w);
    runtime::CompiledCpuGraph fixed = runtime::compile_cpu_graph(row_graph(n), opts);
    auto want = run(*fixed.program, x, w);
    ASSERT_EQ(got.size(), want.size());
    EXPECT_EQ(std::memcmp(got.data(), want.data(), got.size() * sizeof(float)), 0) << "n = " << n;
  }
  std::string why;
  EXPECT_FALSE(dyn.at(1, &why));  // sizes 0 and 1 are outside the guards...
  // ... but a capture at 1 whose graph is the template's there runs the same program.
  auto one = dyn.for_graph(row_graph(1));
  ASSERT_TRUE(one);
  auto x = random_floats(7, 5), w = random_floats(7, 6);
  runtime::CompiledCpuGraph fixed = runtime::compile_cpu_graph(row_graph(1), opts);
  auto got = run(*one, x, w), want = run(*fixed.program, x, w);
  EXPECT_EQ(std::memcmp(got.data(), want.data(), got.size() * sizeof(float)), 0);
  capture::GraphBuilder other;  // another graph at 1 row: not the template's
  int ox = other.add_input(DType::Float32, {1, 7}, {7, 1}, 0);
  other.add_input(DType::Float32, {7}, {1}, 1);
  other.set_outputs({other.call("neg", {V(ox)}, {})});
  EXPECT_FALSE(dyn.for_graph(other.graph()));
}

TEST(DynamicProgram, ReductionOverTheSymbolStaysSpecialised) {
  auto graph = [](int64_t n) {
    capture::GraphBuilder b;
    int x = b.add_input(DType::Float32, {n, 7}, {7, 1}, 0);
    Attrs sum;
    sum.ints = {0};
    b.set_outputs({b.call("sum", {V(x)}, sum)});
    return b.graph();
  };
  runtime::GraphTemplate t = runtime::fit_graph_template(graph(4), graph(6));
  EXPECT_THROW(runtime::DynamicCpuProgram(t, {}), Unsupported);
}

TEST(DynamicProgram, SliceClampedAtTheCapturesIsRefusedBelowThem) {
  // x[:3] of x: [n, 4] made 3 rows at n = 5 and 6; at n = 2 the template's slice is out of
  // bounds (eager would take 2 rows), so that size gets no instance.
  auto graph = [](int64_t n) {
    capture::GraphBuilder b;
    int x = b.add_input(DType::Float32, {n, 4}, {4, 1}, 0);
    Attrs sl;
    sl.ints = {0, 0, std::min<int64_t>(3, n), 1};
    b.set_outputs({b.call("neg", {V(b.call("slice", {V(x)}, sl))}, {})});
    return b.graph();
  };
  runtime::GraphTemplate t = runtime::fit_graph_template(graph(5), graph(6));
  runtime::DynamicCpuProgram dyn(t, {});
  std::string why;
  EXPECT_TRUE(dyn.at(3, &why));
  EXPECT_FALSE(dyn.at(2, &why));
  EXPECT_NE(why.find("slice"), std::string::npos) << why;
}

TEST(DynamicProgram, FitRejectsWhatOneSymbolDoesNotExplain) {
  auto square = [](int64_t n) {  // x: [n, n] flattened: n*n is not k*s or s+c
    capture::GraphBuilder b;
    int x = b.add_input(DType::Float32, {n, n}, {n, 1}, 0);
    Attrs rs;
    rs.ints = {n * n};
    b.set_outputs({b.call("reshape", {V(x)}, rs)});
    return b.graph();
  };
  EXPECT_THROW(runtime::fit_graph_template(square(4), square(6)), Unsupported);
  EXPECT_THROW(runtime::fit_graph_template(row_graph(1), row_graph(6)), Unsupported);  // size 1: specialised
  EXPECT_THROW(runtime::fit_graph_template(row_graph(4), row_graph(4)), Unsupported);  // nothing changed
}
