/// \file passes_test.cpp
/// Graph passes and lowering: decomposition, CSE/DCE, kernel counts, loop order and collapsing.
#include <gtest/gtest.h>

#include "capture/graph_builder.h"
#include "ir/graph_editor.h"
#include "passes/decompose.h"
#include "passes/fold_batch_norm.h"
#include "passes/lower_to_loops.h"
#include "passes/pipeline.h"
#include "passes/simplify.h"

using namespace kiln;
using namespace kiln::ir;

namespace {
int count(const Graph& g, OpKind k) {
  int n = 0;
  for (const auto& node : g.nodes) n += node.op == k;
  return n;
}
passes::PassOptions verifying() {
  passes::PassOptions o;
  o.verify = true;
  return o;
}
}  // namespace

TEST(Decompose, SiluBecomesSigmoidTimesX) {
  Graph g;
  GraphEditor e(g);
  int x = e.input(DType::Float32, {8}, {1}, 0);
  g.outputs = {e.composite(OpKind::Silu, {x}, {})};
  Graph d = passes::run_decompose(g, verifying());
  verify(d);
  EXPECT_EQ(count(d, OpKind::Silu), 0);
  EXPECT_EQ(count(d, OpKind::Sigmoid), 1);
  EXPECT_EQ(count(d, OpKind::Mul), 1);
}

TEST(Decompose, NoCompositeSurvives) {
  Graph g;
  GraphEditor e(g);
  int x = e.input(DType::Float32, {8}, {1}, 0);
  Attrs slope;
  slope.floats = {0.1};
  Attrs elu;
  elu.floats = {1.0, 1.0, 1.0};
  Attrs sp;
  sp.floats = {1.0, 20.0};
  int y = e.composite(OpKind::LeakyRelu, {x}, slope);
  y = e.composite(OpKind::Elu, {y}, elu);
  y = e.composite(OpKind::Softplus, {y}, sp);
  for (OpKind k : {OpKind::Relu, OpKind::Gelu, OpKind::GeluTanh, OpKind::Mish, OpKind::Hardswish, OpKind::Hardsigmoid})
    y = e.composite(k, {y}, {});
  g.outputs = {y};
  Graph d = passes::run_decompose(g, verifying());
  verify(d);
  for (const auto& n : d.nodes) EXPECT_NE(op_category(n.op), OpCategory::Composite) << op_name(n.op);
}

TEST(Simplify, CseAndDce) {
  Graph g;
  GraphEditor e(g);
  int x = e.input(DType::Float32, {4}, {1}, 0);
  int y = e.input(DType::Float32, {4}, {1}, 1);
  int a = e.binary(OpKind::Add, x, y);
  int b = e.binary(OpKind::Add, x, y);
  int dead = e.unary(OpKind::Exp, x);
  (void)dead;
  int one = e.float_constant(1.0, DType::Float32);
  int m = e.binary(OpKind::Mul, e.binary(OpKind::Mul, a, b), one);
  g.outputs = {m};
  Graph s = passes::run_simplify(g, verifying());
  verify(s);
  EXPECT_EQ(count(s, OpKind::Add), 1);
  EXPECT_EQ(count(s, OpKind::Exp), 0);
  EXPECT_EQ(count(s, OpKind::Mul), 1);  // x*1 removed
  EXPECT_EQ(count(s, OpKind::Input), 2);  // inputs are kept even when unused
}

TEST(Simplify, KeepsSignedZeroSemantics) {
  Graph g;
  GraphEditor e(g);
  int x = e.input(DType::Float32, {4}, {1}, 0);
  g.outputs = {e.binary(OpKind::Add, x, e.float_constant(0.0, DType::Float32))};
  Graph s = passes::run_simplify(g, verifying());
  EXPECT_EQ(count(s, OpKind::Add), 1);  // -0.0 + 0.0 == +0.0: not an identity for floats
}

TEST(Simplify, NoOpPassKeepsTheGraph) {
  Graph g;
  GraphEditor e(g);
  int x = e.input(DType::Float32, {4}, {1}, 0);
  g.outputs = {e.unary(OpKind::Exp, x)};
  Graph s = passes::run_simplify(g, verifying());
  EXPECT_EQ(structural_hash(s), structural_hash(g));
}

namespace {
KernelProgram lower(const capture::GraphBuilder& b) { return passes::run_pipeline(b.graph(), verifying()); }
capture::Operand V(int v) { return capture::Operand::of_value(v); }
capture::Operand F(double f) { return {capture::Operand::Kind::Float, -1, f, 0}; }
}  // namespace

TEST(Lowering, PointwiseChainIsOneKernel) {
  capture::GraphBuilder b;
  int x = b.add_input(DType::Float32, {64, 64}, {64, 1}, 0);
  int y = b.add_input(DType::Float32, {64}, {1}, 1);
  int v = b.call("mul", {V(x), V(y)}, {});
  v = b.call("add", {V(v), F(1.0)}, {});
  v = b.call("tanh", {V(v)}, {});
  v = b.call("sigmoid", {V(v)}, {});
  v = b.call("exp", {V(v)}, {});
  v = b.call("sub", {V(v), V(x)}, {});
  v = b.call("abs", {V(v)}, {});
  v = b.call("sqrt", {V(v)}, {});
  v = b.call("maximum", {V(v), V(y)}, {});
  v = b.call("gelu", {V(v)}, {});
  b.set_outputs({v});
  KernelProgram p = lower(b);
  ASSERT_EQ(p.kernels.size(), 1u);
  // A contiguous [64, 64] domain collapses into one loop of 4096... unless the broadcast of y
  // keeps the inner index separate; either way there is exactly one parallel outer loop.
  EXPECT_EQ(p.kernels[0].loops.front().kind, LoopKind::Parallel);
  EXPECT_EQ(p.kernels[0].phases.at(0).stores.size(), 1u);
}

TEST(Lowering, ContiguousLoopsCollapse) {
  capture::GraphBuilder b;
  int x = b.add_input(DType::Float32, {8, 16, 32}, {512, 32, 1}, 0);
  b.set_outputs({b.call("exp", {V(x)}, {})});
  KernelProgram p = lower(b);
  ASSERT_EQ(p.kernels.size(), 1u);
  ASSERT_EQ(p.kernels[0].loops.size(), 1u);
  EXPECT_EQ(p.kernels[0].loops[0].var->ival, 8 * 16 * 32);
}

TEST(Lowering, FollowsTheOutputLayout) {
  // A transposed input: eager gives a transposed output, and the loops walk memory order.
  capture::GraphBuilder b;
  int x = b.add_input(DType::Float32, {32, 16}, {1, 32}, 0);
  int y = b.call("exp", {V(x)}, {});
  b.set_layout(y, {1, 32});
  b.set_outputs({y});
  KernelProgram p = lower(b);
  ASSERT_EQ(p.kernels.size(), 1u);
  EXPECT_EQ(p.buffers.back().strides, (Sizes{1, 32}));
  ASSERT_EQ(p.kernels[0].loops.size(), 1u);  // both sides contiguous in memory order
}

TEST(Lowering, CostlyBroadcastProducerIsMaterialised) {
  capture::GraphBuilder b;
  int x = b.add_input(DType::Float32, {256, 1}, {1, 1}, 0);
  int y = b.add_input(DType::Float32, {256, 128}, {128, 1}, 1);
  int e = b.call("exp", {V(x)}, {});
  e = b.call("tanh", {V(e)}, {});
  b.set_outputs({b.call("mul", {V(e), V(y)}, {})});
  KernelProgram p = lower(b);
  EXPECT_EQ(p.kernels.size(), 2u);
  bool logged = false;
  for (const auto& l : p.fusion_log) logged |= l.find("materialise") != std::string::npos;
  EXPECT_TRUE(logged);
}

TEST(Lowering, SameDomainOutputsShareAKernel) {
  capture::GraphBuilder b;
  int x = b.add_input(DType::Float32, {100}, {1}, 0);
  int a = b.call("exp", {V(x)}, {});
  int c = b.call("add", {V(a), F(1.0)}, {});
  b.set_outputs({a, c});
  KernelProgram p = lower(b);
  ASSERT_EQ(p.kernels.size(), 1u);
  EXPECT_EQ(p.kernels[0].phases.at(0).stores.size(), 2u);
}

TEST(Lowering, EmptyOutputsNeedNoKernel) {
  capture::GraphBuilder b;
  int x = b.add_input(DType::Float32, {0, 3}, {3, 1}, 0);
  b.set_outputs({b.call("exp", {V(x)}, {})});
  KernelProgram p = lower(b);
  EXPECT_EQ(p.kernels.size(), 0u);
  EXPECT_EQ(p.outputs.size(), 1u);
}

namespace {
int64_t I64(int64_t v) { return v; }

/// softmax over the last dim of a [64, 1000] float32 input, lowered.
KernelProgram lowered_softmax() {
  capture::GraphBuilder b;
  int x = b.add_input(DType::Float32, {64, 1000}, {1000, 1}, 0);
  Attrs a;
  a.ints = {I64(-1)};
  b.set_outputs({b.call("softmax", {V(x)}, a)});
  return lower(b);
}
}  // namespace

TEST(Lowering, SoftmaxIsOneRowKernel) {
  KernelProgram p = lowered_softmax();
  ASSERT_EQ(p.kernels.size(), 1u);
  const Kernel& k = p.kernels[0];
  ASSERT_EQ(k.loops.size(), 1u);
  EXPECT_EQ(k.loops[0].var->ival, 64);
  // max, then sum (needs the max), then the normalised row.
  ASSERT_GE(k.phases.size(), 3u);
  EXPECT_EQ(k.phases[0].reductions.at(0).op, ReduceOp::Max);
  EXPECT_EQ(k.phases[1].reductions.at(0).op, ReduceOp::Sum);
  EXPECT_FALSE(k.phases[2].stores.empty());
}

TEST(DropUnreadStores, SoftmaxStoresOnlyItsResult) {
  // The row's max and sum live in accumulators; no other step reads them, so they are not
  // stored into temporaries (they were, a write per row and a CUDA allocation per call).
  KernelProgram p = lowered_softmax();
  ASSERT_EQ(p.kernels.size(), 1u);
  for (const Phase& ph : p.kernels[0].phases)
    for (const Store& st : ph.stores) EXPECT_EQ(p.buffers.at(st.buffer).kind, BufferKind::Output) << print(p);
}

TEST(DropUnreadStores, KeepsAStoreWhoseDivisionMayFail) {
  // x // y is used by nothing, but the division by a tensor may meet a zero, and its check
  // must still run (eager raises): its store into a temporary nobody reads stays (the fuzzer
  // found eager's ZeroDivisionError lost when it went).
  capture::GraphBuilder b;
  int x = b.add_input(DType::Int32, {8, 16}, {16, 1}, 0);
  int y = b.add_input(DType::Int32, {8, 16}, {16, 1}, 1);
  b.call("floor_divide", {V(x), V(y)}, {});
  b.set_outputs({b.call("mul", {V(x), V(x)}, {})});
  KernelProgram p = lower(b);
  bool checked = false;
  for (const Kernel& k : p.kernels)
    for (Expr e : k.exprs()) {
      std::set<Expr> seen;
      visit(e, seen, [&](Expr z) { checked |= z->op == ExprOp::Div && !is_float(z->dtype); });
    }
  EXPECT_TRUE(checked) << print(p);
}

TEST(Lowering, LayerNormAndRmsNormAreOneKernel) {
  for (const char* op : {"layer_norm", "rms_norm"}) {
    capture::GraphBuilder b;
    int x = b.add_input(DType::Float32, {32, 256}, {256, 1}, 0);
    int w = b.add_input(DType::Float32, {256}, {1}, 1);
    Attrs a;
    a.floats = {1e-5};
    std::vector<capture::Operand> ops = {V(x), V(w)};
    if (std::string(op) == "layer_norm") {
      a.ints = {1, 1, 0};
      ops.push_back(F(0));
    } else {
      a.ints = {1, 1};
    }
    b.set_outputs({b.call(op, ops, a)});
    KernelProgram p = lower(b);
    EXPECT_EQ(p.kernels.size(), 1u) << op << "\n" << print(p);
  }
}

TEST(Lowering, WholeTensorSumSplitsAcrossChunks) {
  capture::GraphBuilder b;
  int x = b.add_input(DType::Float32, {1 << 20}, {1}, 0);
  b.set_outputs({b.call("sum", {V(x)}, {})});
  KernelProgram p = lower(b);
  ASSERT_EQ(p.kernels.size(), 2u);
  EXPECT_GT(p.kernels[0].outer_extent(), 1);  // chunks run in parallel
  // float32 sums this long accumulate in float64
  EXPECT_EQ(p.kernels[0].phases.at(0).reductions.at(0).acc_dtype, DType::Float64);
}

TEST(ColumnReductions, MeanOverHwOfChannelsLastFoldsColumns) {
  // [16, 480, 14, 14] channels-last, mean over H and W: the kept channels are contiguous.
  capture::GraphBuilder b;
  int x = b.add_input(DType::Float32, {16, 480, 14, 14}, {94080, 1, 6720, 480}, 0);
  Attrs a;
  a.ints = {2, 3};
  b.set_outputs({b.call("mean", {V(x)}, a)});
  KernelProgram p = lower(b);
  ASSERT_EQ(p.kernels.size(), 1u) << print(p);
  const Kernel& k = p.kernels[0];
  ASSERT_EQ(k.loops.size(), 1u) << print(k);
  EXPECT_EQ(k.loops[0].var->ival, 16);  // the batch stays the parallel loop
  for (const Phase& ph : k.phases) {
    EXPECT_TRUE(ph.reductions.empty()) << print(k);
    ASSERT_FALSE(ph.loops.empty()) << print(k);
    EXPECT_EQ(ph.loops.back().var->ival, 480);  // channels, vectorised
    EXPECT_EQ(ph.loops.back().kind, LoopKind::Vectorized);
  }
  ASSERT_EQ(k.phases.size(), 3u);  // identity, fold, store
  EXPECT_EQ(k.phases[1].loops.at(0).var->ival, 196);
}

TEST(ColumnReductions, SumOverRowsSplitsColumnsAcrossThreadsAndRowSumsStay) {
  capture::GraphBuilder b;
  int x = b.add_input(DType::Float32, {4096, 1024}, {1024, 1}, 0);
  Attrs a0, a1;
  a0.ints = {0};
  a1.ints = {1};
  b.set_outputs({b.call("sum", {V(x)}, a0), b.call("sum", {V(x)}, a1)});
  KernelProgram p = lower(b);
  ASSERT_EQ(p.kernels.size(), 2u) << print(p);
  const Kernel& cols = p.kernels[0];
  EXPECT_GE(cols.outer_extent(), 8) << print(cols);  // column blocks for the threads
  EXPECT_TRUE(cols.phases.at(1).reductions.empty());
  const Kernel& rows = p.kernels[1];  // contiguous rows: the row form
  EXPECT_EQ(rows.phases.at(0).reductions.size(), 1u) << print(rows);
}

TEST(Lowering, LinearIsAGemmStepWithItsEpilogueInOneKernel) {
  // relu(x . w^T + b): the transposed weight reaches the BLAS step as a view (no copy kernel),
  // bias and relu are one kernel after it.
  capture::GraphBuilder b;
  int x = b.add_input(DType::Float32, {16, 32}, {32, 1}, 0);
  int w = b.add_input(DType::Float32, {24, 32}, {32, 1}, 1);
  int bias = b.add_input(DType::Float32, {24}, {1}, 2);
  Attrs perm;
  perm.ints = {1, 0};
  int wt = b.call("permute", {V(w)}, perm);
  int y = b.call("matmul", {V(x), V(wt)}, {});
  y = b.call("add", {V(bias), V(y)}, {});
  y = b.call("relu", {V(y)}, {});
  b.set_outputs({y});
  KernelProgram p = lower(b);
  ASSERT_EQ(p.gemms.size(), 1u);
  ASSERT_EQ(p.kernels.size(), 1u);
  ASSERT_EQ(p.steps.size(), 2u);
  EXPECT_EQ(p.steps[0].kind, Step::Kind::Gemm);
  const GemmCall& g = p.gemms[0];
  EXPECT_EQ(g.b.buffer, 1);  // the weight argument itself
  EXPECT_EQ(g.b.sizes, (Sizes{32, 24}));
  EXPECT_EQ(g.b.strides, (Sizes{1, 32}));  // column-major: a BLAS transpose
  EXPECT_EQ(p.buffers[g.out].sizes, (Sizes{16, 24}));
  // Note [Epilogues in cache]: the kernel runs on each tile of rows as the product makes it.
  EXPECT_EQ(g.epilogue, p.steps[1].index);
  EXPECT_EQ(g.epilogue_span % 24, 0);
}

TEST(GemmEpilogues, NotWhereAnIterationReadsAcrossTilesOrWritesAnOperand) {
  // (x . w)^T + 1 stored row-major: iteration i reads a column of the product, across every
  // row tile.
  {
    capture::GraphBuilder b;
    int x = b.add_input(DType::Float32, {64, 32}, {32, 1}, 0);
    int w = b.add_input(DType::Float32, {32, 48}, {48, 1}, 1);
    int y = b.call("matmul", {V(x), V(w)}, {});
    Attrs perm;
    perm.ints = {1, 0};
    int t = b.call("permute", {V(y)}, perm);
    b.set_outputs({b.call("add", {V(t), F(1.0)}, {})});
    KernelProgram p = lower(b);
    ASSERT_EQ(p.gemms.size(), 1u) << print(p);
    EXPECT_EQ(p.gemms[0].epilogue, -1) << print(p);
  }
  // A column sum of the product: one iteration reads every row.
  {
    capture::GraphBuilder b;
    int x = b.add_input(DType::Float32, {64, 32}, {32, 1}, 0);
    int w = b.add_input(DType::Float32, {32, 48}, {48, 1}, 1);
    int y = b.call("matmul", {V(x), V(w)}, {});
    Attrs a;
    a.ints = {0};
    b.set_outputs({b.call("sum", {V(y)}, a)});
    KernelProgram p = lower(b);
    ASSERT_EQ(p.gemms.size(), 1u) << print(p);
    EXPECT_EQ(p.gemms[0].epilogue, -1) << print(p);
  }
}

namespace {
/// The CUDA pipeline's choices that the bias pass depends on.
KernelProgram lower_for_cuda(const capture::GraphBuilder& b) {
  passes::PassOptions o = verifying();
  o.gemm_epilogues = false;
  o.gemm_bias = true;
  return passes::run_pipeline(b.graph(), o);
}

/// x[8, 32] . w[32, 24] + bias (optionally under relu, optionally also returning the product)
/// through the CUDA pipeline's bias pass.
KernelProgram linear_for_cuda(DType t, Sizes bias_sizes, bool relu, bool return_product) {
  capture::GraphBuilder b;
  int x = b.add_input(t, {8, 32}, {32, 1}, 0);
  int w = b.add_input(t, {32, 24}, {24, 1}, 1);
  int bias = b.add_input(t, bias_sizes, contiguous_strides(bias_sizes), 2);
  int y = b.call("matmul", {V(x), V(w)}, {});
  int z = b.call("add", {V(y), V(bias)}, {});
  if (relu) z = b.call("relu", {V(z)}, {});
  b.set_outputs(return_product ? std::vector<int>{z, y} : std::vector<int>{z});
  return lower_for_cuda(b);
}
}  // namespace

TEST(GemmBias, ALinearLayerIsOneProductThatAddsItsBias) {
  for (DType t : {DType::Float32, DType::BFloat16, DType::Float16}) {
    KernelProgram p = linear_for_cuda(t, {24}, false, false);
    ASSERT_EQ(p.steps.size(), 1u) << print(p);
    ASSERT_EQ(p.gemms.size(), 1u);
    EXPECT_TRUE(p.kernels.empty());
    const GemmCall& g = p.gemms[0];
    EXPECT_EQ(g.bias, 2);
    EXPECT_EQ(g.bias_offset, 0);
    EXPECT_EQ(p.buffers[g.out].kind, BufferKind::Output) << print(p);
  }
}

TEST(GemmBias, UnderAnActivationTheKernelStaysWithoutTheAdd) {
  KernelProgram p = linear_for_cuda(DType::BFloat16, {1, 24}, true, false);
  ASSERT_EQ(p.steps.size(), 2u) << print(p);
  EXPECT_EQ(p.gemms[0].bias, 2);
  std::string text = print(p.kernels[0]);
  EXPECT_EQ(text.find("buf2"), std::string::npos) << text;  // the bias is the product's now
}

TEST(GemmBias, EveryReadOfTheProductInARowKernelTakesTheBias) {
  // layer_norm(x . w + b): the row kernel reads the sum in each of its three phases.
  for (DType t : {DType::Float32, DType::BFloat16}) {
    capture::GraphBuilder b;
    int x = b.add_input(t, {8, 32}, {32, 1}, 0);
    int w = b.add_input(t, {32, 24}, {24, 1}, 1);
    int bias = b.add_input(t, {24}, {1}, 2);
    int y = b.call("add", {V(b.call("matmul", {V(x), V(w)}, {})), V(bias)}, {});
    Attrs a;
    a.ints = {1, 0, 0};  // over the last dim, no weight, no bias
    a.floats = {1e-5};
    b.set_outputs({b.call("layer_norm", {V(y), F(0), F(0)}, a)});
    KernelProgram p = lower_for_cuda(b);
    ASSERT_EQ(p.kernels.size(), 1u) << print(p);
    EXPECT_EQ(p.gemms[0].bias, 2) << print(p);
    std::string text = print(p.kernels[0]);
    EXPECT_EQ(text.find("buf2["), std::string::npos) << text;
  }
}

TEST(GemmBias, NotWhereTheProductIsReadElsewhereOrTheBiasIsNotARow) {
  // The product is returned too: its buffer must keep the plain product.
  KernelProgram p = linear_for_cuda(DType::Float32, {24}, false, true);
  EXPECT_EQ(p.gemms[0].bias, -1) << print(p);
  // A bias per row (8, 1) or per element (8, 24) is not a vector over the columns.
  p = linear_for_cuda(DType::Float32, {8, 1}, false, false);
  EXPECT_EQ(p.gemms[0].bias, -1) << print(p);
  p = linear_for_cuda(DType::Float32, {8, 24}, false, false);
  EXPECT_EQ(p.gemms[0].bias, -1) << print(p);
  // float64: cuBLAS's classic API, no epilogue.
  p = linear_for_cuda(DType::Float64, {24}, false, false);
  EXPECT_EQ(p.gemms[0].bias, -1) << print(p);
  // A batch of products (eager's F.linear flattens its batch; a bmm gets no epilogue).
  capture::GraphBuilder b;
  int x = b.add_input(DType::Float32, {2, 8, 32}, {256, 32, 1}, 0);
  int w = b.add_input(DType::Float32, {2, 32, 24}, {768, 24, 1}, 1);
  int bias = b.add_input(DType::Float32, {24}, {1}, 2);
  b.set_outputs({b.call("add", {V(b.call("matmul", {V(x), V(w)}, {})), V(bias)}, {})});
  p = lower_for_cuda(b);
  EXPECT_EQ(p.gemms[0].bias, -1) << print(p);
}

TEST(Lowering, ComputedOperandOfAProductIsMaterialisedOnce) {
  // (x * 2) feeds a product directly and through a transpose: one buffer, read twice.
  capture::GraphBuilder b;
  int x = b.add_input(DType::Float32, {8, 8}, {8, 1}, 0);
  int y = b.call("mul", {V(x), F(2.0)}, {});
  Attrs perm;
  perm.ints = {1, 0};
  int yt = b.call("permute", {V(y)}, perm);
  b.set_outputs({b.call("matmul", {V(y), V(yt)}, {})});
  KernelProgram p = lower(b);
  ASSERT_EQ(p.gemms.size(), 1u);
  ASSERT_EQ(p.kernels.size(), 1u);
  EXPECT_EQ(p.gemms[0].a.buffer, p.gemms[0].b.buffer);
  EXPECT_EQ(p.gemms[0].b.strides, (Sizes{1, 8}));
}

TEST(Layouts, ConvolutionOperandsAreStoredChannelsLast) {
  capture::GraphBuilder b;
  int x = b.add_input(DType::Float32, {2, 3, 5, 5}, {75, 25, 5, 1}, 0);
  int w = b.add_input(DType::Float32, {4, 3, 3, 3}, {27, 9, 3, 1}, 1);
  int h = b.call("tanh", {V(x)}, {});
  auto conv = b.add_fallback(0, {h, w}, {DType::Float32}, {{2, 4, 5, 5}}, {{100, 25, 5, 1}},
                             "aten.convolution.default");
  int y = b.call("sigmoid", {V(conv[0])}, {});
  int z = b.call("mul", {V(y), F(2.0)}, {});
  b.set_outputs({z});
  KernelProgram p = lower(b);
  ASSERT_EQ(p.externs.size(), 1u);
  // tanh(x) is written NHWC for the convolution, whose result is read NHWC ...
  EXPECT_EQ(p.buffers[p.externs[0].inputs[0]].strides, (Sizes{75, 1, 15, 3}));
  EXPECT_EQ(p.buffers[p.externs[0].outputs[0]].strides, (Sizes{100, 1, 20, 4}));
  // ... and the output keeps eager's NCHW.
  EXPECT_EQ(p.buffers[p.outputs[0].index].strides, (Sizes{100, 25, 5, 1}));
}

namespace {
/// conv(x, w[, bias]) -> batch_norm_eval -> relu, through the builder as the tracer records it.
Graph conv_batch_norm(bool conv_bias, int64_t traits, int64_t hw = 6, bool conv_out_is_output = false) {
  capture::GraphBuilder b;
  int x = b.add_input(DType::Float32, {2, 3, hw, hw}, {3 * hw * hw, hw * hw, hw, 1}, 0);
  int w = b.add_input(DType::Float32, {4, 3, 1, 1}, {3, 1, 1, 1}, 1);
  std::vector<int> conv_in = {x, w};
  if (conv_bias) conv_in.push_back(b.add_input(DType::Float32, {4}, {1}, 2));
  auto conv = b.add_fallback(0, conv_in, {DType::Float32}, {{2, 4, hw, hw}}, {{4 * hw * hw, hw * hw, hw, 1}},
                             "aten.convolution.default", traits);
  std::vector<capture::Operand> bn = {V(conv[0])};
  for (int k = 0; k < 4; ++k) bn.push_back(V(b.add_input(DType::Float32, {4}, {1}, 3 + k)));
  Attrs a;
  a.ints = {1, 1};
  a.floats = {1e-5};
  int y = b.call("batch_norm_eval", bn, a);
  int r = b.call("relu", {V(y)}, {});
  if (conv_out_is_output) b.set_outputs({r, conv[0]});
  else b.set_outputs({r});
  return b.graph();
}
int convolution_weight_is_scaled(const Graph& g) {
  for (const Node& n : g.nodes)
    if (n.op == OpKind::Fallback) return g.nodes[n.inputs[1]].op == OpKind::Mul;
  return -1;
}
}  // namespace

TEST(FoldBatchNorm, IntoTheConvolutionsWeightsAndBias) {
  Graph with_bias = passes::run_fold_batch_norm(conv_batch_norm(true, kFallbackConvolution), verifying());
  verify(with_bias);
  EXPECT_EQ(count(with_bias, OpKind::BatchNormEval), 0);
  EXPECT_EQ(convolution_weight_is_scaled(with_bias), 1);
  // the folded convolution's output feeds relu directly: the shift went into its bias
  const Node& relu = with_bias.nodes[with_bias.outputs[0]];
  EXPECT_EQ(with_bias.nodes[relu.inputs[0]].op, OpKind::Fallback);
  // no bias: the convolution keeps its two operands and the shift is one add after it
  Graph no_bias = passes::run_fold_batch_norm(conv_batch_norm(false, kFallbackConvolution), verifying());
  EXPECT_EQ(count(no_bias, OpKind::BatchNormEval), 0);
  EXPECT_EQ(convolution_weight_is_scaled(no_bias), 1);
  for (const Node& n : no_bias.nodes)
    if (n.op == OpKind::Fallback) EXPECT_EQ(n.inputs.size(), 2u);
}

TEST(FoldBatchNorm, NotWhereInvalidOrCostly) {
  // not marked as a convolution (transposed, or another op)
  EXPECT_EQ(count(passes::run_fold_batch_norm(conv_batch_norm(true, 0), verifying()), OpKind::BatchNormEval), 1);
  // the unnormalised output is needed too
  EXPECT_EQ(count(passes::run_fold_batch_norm(conv_batch_norm(true, kFallbackConvolution, 6, true), verifying()),
                  OpKind::BatchNormEval),
            1);
  // 12 weights for 2 * 4 * 1 * 1 outputs: scaling them costs more than the fold can save
  EXPECT_EQ(count(passes::run_fold_batch_norm(conv_batch_norm(true, kFallbackConvolution, 1), verifying()),
                  OpKind::BatchNormEval),
            1);
}
