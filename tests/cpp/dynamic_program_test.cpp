/// \file dynamic_program_test.cpp
/// Dynamic programs (Note [Dynamic sizes]): a template fitted from two captures, one
/// compile, and instances that compute what a program specialised on each size computes.
#include <gtest/gtest.h>

#include <cmath>
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

/// Runs `p` on its inputs (by leaf index); returns the first output.
std::vector<float> run(runtime::CompiledProgram& p, const std::vector<std::vector<float>*>& inputs) {
  const auto& kp = p.program();
  std::vector<void*> ptrs(kp.buffers.size(), nullptr);
  std::vector<float> out;
  for (size_t i = 0; i < kp.buffers.size(); ++i) {
    const Buffer& b = kp.buffers[i];
    if (b.kind == BufferKind::Input) ptrs[i] = inputs.at(static_cast<size_t>(b.index))->data();
    if (b.kind == BufferKind::Output) {
      out.assign(b.storage_numel(), 12345.0f);  // poison: an element not written shows
      ptrs[i] = out.data();
    }
  }
  EXPECT_TRUE(p.run(ptrs));
  return out;
}
std::vector<float> run(runtime::CompiledProgram& p, std::vector<float>& x, std::vector<float>& w) {
  return run(p, std::vector<std::vector<float>*>{&x, &w});
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
  // ... and a capture at 1 row lowers without the row loop: not the template, its own code.
  EXPECT_FALSE(dyn.for_graph(row_graph(1), &why));
  EXPECT_NE(why.find("another loop nest"), std::string::npos) << why;
  // A capture whose lowering is the template's runs the same code.
  auto nine = dyn.for_graph(row_graph(9), &why);
  ASSERT_TRUE(nine) << why;
  auto x = random_floats(9 * 7, 5), w = random_floats(7, 6);
  runtime::CompiledCpuGraph fixed = runtime::compile_cpu_graph(row_graph(9), opts);
  auto got = run(*nine, x, w), want = run(*fixed.program, x, w);
  EXPECT_EQ(std::memcmp(got.data(), want.data(), got.size() * sizeof(float)), 0);
  capture::GraphBuilder other;  // another graph: not the template's
  int ox = other.add_input(DType::Float32, {9, 7}, {7, 1}, 0);
  other.add_input(DType::Float32, {7}, {1}, 1);
  other.set_outputs({other.call("neg", {V(ox)}, {})});
  EXPECT_FALSE(dyn.for_graph(other.graph(), &why));
}

/// Expects the dynamic program at each size of `sizes` to compute what the program specialised
/// on that size computes, on random inputs of the sizes `graph(n)` gives: the same loop IR, so
/// the same values up to the order in which LLVM adds a sum's terms (it vectorises a loop of a
/// known count differently from one whose count is a parameter).
template <class G>
void expect_specialised_results(const runtime::DynamicCpuProgram& dyn, G graph, std::initializer_list<int64_t> sizes) {
  for (int64_t n : sizes) {
    std::string why;
    auto p = dyn.at(n, &why);
    ASSERT_TRUE(p) << "n = " << n << ": " << why;
    Graph g = graph(n);
    std::vector<std::vector<float>> data;
    for (int id : g.input_ids)
      data.push_back(random_floats(static_cast<size_t>(g.nodes[id].numel()), static_cast<unsigned>(n + id)));
    std::vector<std::vector<float>*> inputs;
    for (auto& d : data) inputs.push_back(&d);
    auto got = run(*p, inputs);
    runtime::CompiledCpuGraph fixed = runtime::compile_cpu_graph(g, {});
    auto want = run(*fixed.program, inputs);
    ASSERT_EQ(got.size(), want.size());
    for (size_t i = 0; i < got.size(); ++i)
      ASSERT_NEAR(got[i], want[i], 1e-5f * (1.0f + std::fabs(want[i]))) << "n = " << n << ", element " << i;
  }
}

TEST(DynamicProgram, ReductionOverTheSymbol) {
  auto graph = [](int64_t n) {
    capture::GraphBuilder b;
    int x = b.add_input(DType::Float32, {n, 7}, {7, 1}, 0);
    Attrs sum;
    sum.ints = {0};
    b.set_outputs({b.call("sum", {V(x)}, sum)});
    return b.graph();
  };
  runtime::DynamicCpuProgram dyn(runtime::fit_graph_template(graph(4), graph(6)), {});
  expect_specialised_results(dyn, graph, {2, 3, 5, 17, 64, 1000});
}

TEST(DynamicProgram, InnerSizeIsAKernelParameter) {
  // softmax(x * 0.5 + mean(x)) over rows of a changing length n: the row loop's count, the
  // index stride n and the mean's 1/n are parameters of one kernel.
  auto graph = [](int64_t n) {
    capture::GraphBuilder b;
    int x = b.add_input(DType::Float32, {3, n}, {n, 1}, 0);
    Attrs mean;
    mean.ints = {1};
    mean.int_value = 1;
    Attrs dim;
    dim.ints = {1};
    int m = b.call("mean", {V(x)}, mean);
    int half = b.call("mul", {V(x), capture::Operand{capture::Operand::Kind::Float, -1, 0.5, 0}}, {});
    b.set_outputs({b.call("softmax", {V(b.call("add", {V(half), V(m)}, {}))}, dim)});
    return b.graph();
  };
  runtime::DynamicCpuProgram dyn(runtime::fit_graph_template(graph(8), graph(12)), {});
  EXPECT_NE(dyn.describe().find("p0"), std::string::npos) << dyn.describe();
  expect_specialised_results(dyn, graph, {2, 3, 5, 9, 16, 17, 33, 100, 1000});
  // A row long enough to be summed in float64 lowers to another kernel: that size misses.
  std::string why;
  EXPECT_FALSE(dyn.at(70000, &why));
  EXPECT_NE(why.find("reduction"), std::string::npos) << why;
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

TEST(DynamicProgram, SliceClampedToTheSizeIsNotAffine) {
  // x[:3] is all of x at 2 and 3 rows (the slice vanishes) and 3 rows at 4: the clamp is noted
  // at capture, so the two captures make no template.
  auto graph = [](int64_t n) {
    capture::GraphBuilder b;
    int x = b.add_input(DType::Float32, {n, 4}, {4, 1}, 0);
    Attrs sl;
    sl.ints = {0, 0, 3, 1};
    b.set_outputs({b.call("logical_xor", {V(b.call("slice", {V(x)}, sl)), V(x)}, {})});
    return b;
  };
  capture::GraphBuilder a = graph(3), b = graph(2);
  EXPECT_THROW(runtime::fit_graph_template(a.graph(), b.graph(), {}, a.size_rules(), b.size_rules()), Unsupported);
  // "To the end" (x[1:]) and from the end (x[-3:]) are affine: no rule.
  capture::GraphBuilder c;
  int x = c.add_input(DType::Float32, {5, 4}, {4, 1}, 0);
  Attrs tail, last3;
  tail.ints = {0, 1, INT64_MAX, 1};
  last3.ints = {0, -3, INT64_MAX, 1};
  c.call("slice", {V(x)}, tail);
  c.call("slice", {V(x)}, last3);
  EXPECT_TRUE(c.size_rules().empty());
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
