/// \file ir_test.cpp
/// Graph IR: dtype promotion, the op table, printer stability, verifier and structural hash.
#include <gtest/gtest.h>

#include <cmath>

#include "ir/graph.h"
#include "ir/graph_editor.h"
#include "support/error.h"

using namespace kiln;
using namespace kiln::ir;

TEST(DType, PromoteTypes) {
  EXPECT_EQ(promote_types(DType::Int32, DType::Int64), DType::Int64);
  EXPECT_EQ(promote_types(DType::UInt8, DType::Int8), DType::Int16);
  EXPECT_EQ(promote_types(DType::Bool, DType::Int32), DType::Int32);
  EXPECT_EQ(promote_types(DType::Int64, DType::Float32), DType::Float32);
  EXPECT_EQ(promote_types(DType::Float16, DType::BFloat16), DType::Float32);
  EXPECT_EQ(promote_types(DType::Float32, DType::Float64), DType::Float64);
}

TEST(DType, RoundToHalfTypesAsTorchConverts) {
  // Expected values: torch.tensor(v).half() / .bfloat16() on torch 2.13.
  EXPECT_EQ(round_to_dtype(0.1, DType::Float16), 0.0999755859375);
  EXPECT_EQ(round_to_dtype(0.1, DType::BFloat16), 0.10009765625);
  EXPECT_EQ(round_to_dtype(1.0 / 3, DType::Float16), 0.333251953125);
  EXPECT_EQ(round_to_dtype(1.0 / 3, DType::BFloat16), 0.333984375);
  EXPECT_EQ(round_to_dtype(65519.0, DType::Float16), 65504.0);   // the largest float16
  EXPECT_EQ(round_to_dtype(65520.0, DType::Float16), INFINITY);  // a tie past it: to even, inf
  EXPECT_EQ(round_to_dtype(65520.0, DType::BFloat16), 65536.0);
  EXPECT_EQ(round_to_dtype(1e-7, DType::Float16), 1.1920928955078125e-07);  // subnormal spacing 2^-24
  EXPECT_EQ(round_to_dtype(3e-8, DType::Float16), 5.960464477539063e-08);
  double nz = round_to_dtype(-2.5e-8, DType::Float16);
  EXPECT_TRUE(nz == 0 && std::signbit(nz));  // underflows to -0
  EXPECT_EQ(round_to_dtype(3.39e38, DType::BFloat16), 3.3895313892515355e+38);
  EXPECT_EQ(round_to_dtype(0.1, DType::Float32), static_cast<double>(0.1f));
  EXPECT_EQ(round_to_dtype(0.1, DType::Float64), 0.1);
  EXPECT_TRUE(std::isnan(round_to_dtype(NAN, DType::BFloat16)));
}

TEST(DType, ResultTypeFollowsPriorityClasses) {
  using K = OperandKind;
  // int tensor + float scalar -> default float
  EXPECT_EQ(result_type({{DType::Int32, K::Tensor}, {DType::Float64, K::Scalar}}), DType::Float32);
  // float32 tensor + float64 0-dim tensor -> float32 (0-dim does not win within a category)
  EXPECT_EQ(result_type({{DType::Float32, K::Tensor}, {DType::Float64, K::ZeroDim}}), DType::Float32);
  // int32 tensor + float64 0-dim tensor -> float64 (higher category wins)
  EXPECT_EQ(result_type({{DType::Int32, K::Tensor}, {DType::Float64, K::ZeroDim}}), DType::Float64);
  // int32 tensor + int scalar -> int32
  EXPECT_EQ(result_type({{DType::Int32, K::Tensor}, {DType::Int64, K::Scalar}}), DType::Int32);
  // bool tensor + int scalar -> int64
  EXPECT_EQ(result_type({{DType::Bool, K::Tensor}, {DType::Int64, K::Scalar}}), DType::Int64);
  // two 0-dim tensors promote normally
  EXPECT_EQ(result_type({{DType::Int32, K::ZeroDim}, {DType::Int64, K::ZeroDim}}), DType::Int64);
  // default dtype is honoured for float scalars
  EXPECT_EQ(result_type({{DType::Int64, K::Tensor}, {DType::Float64, K::Scalar}}, DType::Float64), DType::Float64);
}

TEST(OpTable, NamesRoundTrip) {
  OpKind k;
  ASSERT_TRUE(op_from_name("add", &k));
  EXPECT_EQ(k, OpKind::Add);
  EXPECT_STREQ(op_name(OpKind::Sigmoid), "sigmoid");
  EXPECT_EQ(op_category(OpKind::Gelu), OpCategory::Composite);
  EXPECT_EQ(op_arity(OpKind::Where), 3);
  EXPECT_FALSE(op_from_name("no_such_op", &k));
}

namespace {
Graph small_graph() {
  Graph g;
  GraphEditor e(g);
  int x = e.input(DType::Float32, {4, 5}, {5, 1}, 0);
  int y = e.input(DType::Float32, {5}, {1}, 1);
  int s = e.binary(OpKind::Add, x, y);
  int t = e.unary(OpKind::Tanh, s);
  g.outputs = {t};
  return g;
}
}  // namespace

TEST(Graph, PrinterIsStable) {
  EXPECT_EQ(print(small_graph()),
            "%0 = input(arg0, strides=[5, 1]) : float32[4, 5]\n"
            "%1 = input(arg1, strides=[1]) : float32[5]\n"
            "%2 = add(%0, %1) : float32[4, 5]\n"
            "%3 = tanh(%2) : float32[4, 5]\n"
            "return (%3)\n");
}

TEST(Graph, EditorInfersBroadcastAndViews) {
  Graph g;
  GraphEditor e(g);
  int x = e.input(DType::Float32, {3, 1, 5}, {5, 5, 1}, 0);
  int y = e.input(DType::Float32, {4, 5}, {5, 1}, 1);
  EXPECT_EQ(e.node(e.binary(OpKind::Mul, x, y)).sizes, (Sizes{3, 4, 5}));
  EXPECT_EQ(e.node(e.binary(OpKind::Lt, x, y)).dtype, DType::Bool);
  EXPECT_EQ(e.node(e.permute(y, {1, 0})).sizes, (Sizes{5, 4}));
  EXPECT_EQ(e.node(e.slice(y, 1, 1, 100, 2)).sizes, (Sizes{4, 2}));
  EXPECT_EQ(e.node(e.slice(y, 0, -2, 4, 1)).sizes, (Sizes{2, 5}));
  EXPECT_EQ(e.node(e.reduce(OpKind::Sum, y, {-1}, true)).sizes, (Sizes{4, 1}));
  EXPECT_EQ(e.node(e.reduce(OpKind::ArgMax, y, {}, false)).dtype, DType::Int64);
  EXPECT_THROW(e.binary(OpKind::Add, x, e.input(DType::Float32, {6}, {1}, 2)), Unsupported);
  EXPECT_THROW(e.reshape(y, {7}), Unsupported);
  EXPECT_EQ(e.reshape(y, {4, 5}), y);  // same shape: no node
}

TEST(Graph, VerifierRejectsMixedDtypes) {
  Graph g = small_graph();
  EXPECT_NO_THROW(verify(g));
  g.nodes[1].dtype = DType::Float64;
  EXPECT_THROW(verify(g), InternalError);
}

TEST(Graph, VerifierRejectsForwardReferences) {
  Graph g = small_graph();
  g.nodes[2].inputs[0] = 3;
  EXPECT_THROW(verify(g), InternalError);
}

TEST(Graph, StructuralHash) {
  EXPECT_EQ(structural_hash(small_graph()), structural_hash(small_graph()));
  Graph g = small_graph();
  g.nodes[3].op = OpKind::Exp;
  EXPECT_NE(structural_hash(g), structural_hash(small_graph()));
  Graph h = small_graph();
  h.nodes[0].strides = {1, 4};
  EXPECT_NE(structural_hash(h), structural_hash(small_graph()));
}
