/// \file partition_test.cpp
/// passes/partition_joint: which forward values a joint graph's backward saves or recomputes.
#include <gtest/gtest.h>

#include "ir/graph_editor.h"
#include "passes/partition_joint.h"

using namespace kiln;
using namespace kiln::ir;

namespace {
int count(const Graph& g, OpKind k) {
  int n = 0;
  for (const auto& node : g.nodes) n += node.op == k;
  return n;
}
}  // namespace

// y = gelu(x @ w); backward of gelu reads the product, the next product's weight gradient
// would read y: the product is saved, gelu recomputed, and x and w are passed through.
TEST(Partition, RecomputesAPointwiseChainFromASavedProduct) {
  Graph g;
  GraphEditor e(g);
  int x = e.input(DType::Float32, {4, 8}, {8, 1}, 0);
  int w = e.input(DType::Float32, {8, 16}, {16, 1}, 1);
  int a = e.matmul(x, w);
  int y = e.composite(OpKind::Gelu, {a}, {});
  int backward_start = static_cast<int>(g.nodes.size());
  int t = e.input(DType::Float32, {4, 16}, {16, 1}, 2);  // tangent of y
  // "backward": something reading y (as a weight gradient would) and a (gelu's derivative)
  int gy = e.binary(OpKind::Mul, t, y);
  int ga = e.binary(OpKind::Mul, gy, e.unary(OpKind::Exp, a));
  int gw = e.matmul(e.permute(x, {1, 0}), ga);
  g.outputs = {y, gw};
  passes::JointSpec spec{1, {t}, backward_start};
  passes::Partition p = passes::partition_joint_graph(g, spec, {});
  ASSERT_EQ(p.saved.size(), 1u);
  EXPECT_EQ(p.saved[0], a);
  EXPECT_EQ(p.saved_bytes, 4 * 16 * 4);
  EXPECT_EQ(p.saved_inputs, std::vector<int>{0});  // x (for x^T ga); w is not read
  EXPECT_EQ(p.recomputed, std::vector<int>{y});
  verify(p.forward);
  verify(p.backward);
  EXPECT_EQ(p.forward.outputs.size(), 2u);  // y, then the saved product
  EXPECT_EQ(p.saved_positions, std::vector<int>{1});
  EXPECT_EQ(count(p.forward, OpKind::Matmul), 1);
  EXPECT_EQ(count(p.backward, OpKind::Matmul), 1);  // only the gradient's product
  EXPECT_EQ(count(p.backward, OpKind::Gelu), 1);    // recomputed
  // backward inputs: saved product (arg0), x (arg1), tangent (arg2)
  ASSERT_EQ(p.backward.input_ids.size(), 3u);
  EXPECT_EQ(p.backward.nodes[0].sizes, (Sizes{4, 16}));
  EXPECT_EQ(p.backward.nodes[1].sizes, (Sizes{4, 8}));
  EXPECT_EQ(p.backward.nodes[2].attrs.int_value, 2);
  EXPECT_EQ(p.gradient_positions, std::vector<int>{0});
}

TEST(Partition, WithoutRecomputeSavesEveryValueTheBackwardReads) {
  Graph g;
  GraphEditor e(g);
  int x = e.input(DType::Float32, {4, 8}, {8, 1}, 0);
  int w = e.input(DType::Float32, {8, 16}, {16, 1}, 1);
  int a = e.matmul(x, w);
  int y = e.composite(OpKind::Gelu, {a}, {});
  int backward_start = static_cast<int>(g.nodes.size());
  int t = e.input(DType::Float32, {4, 16}, {16, 1}, 2);
  int gw = e.binary(OpKind::Mul, e.binary(OpKind::Mul, t, y), a);
  g.outputs = {y, gw};
  passes::PartitionOptions no;
  no.recompute = false;
  passes::Partition p = passes::partition_joint_graph(g, {1, {t}, backward_start}, no);
  EXPECT_EQ(p.saved, (std::vector<int>{a, y}));
  EXPECT_TRUE(p.recomputed.empty());
  EXPECT_EQ(p.saved_positions, (std::vector<int>{1, 0}));  // y is already forward output 0
}

// A random op (an eager fallback) is never recomputed: its draw happens once, in the forward.
TEST(Partition, NeverRecomputesAFallback) {
  Graph g;
  GraphEditor e(g);
  int x = e.input(DType::Float32, {16}, {1}, 0);
  Node fb{OpKind::Fallback, {x}, {}, DType::Float32, {16}, {}};
  fb.attrs.ints = {0};
  int mask = e.append(fb);
  int y = e.binary(OpKind::Mul, x, mask);
  int backward_start = static_cast<int>(g.nodes.size());
  int t = e.input(DType::Float32, {16}, {1}, 1);
  int gx = e.binary(OpKind::Mul, t, mask);
  g.outputs = {y, gx};
  passes::Partition p = passes::partition_joint_graph(g, {1, {t}, backward_start}, {});
  EXPECT_EQ(p.saved, std::vector<int>{mask});
  EXPECT_EQ(count(p.backward, OpKind::Fallback), 0);
  EXPECT_EQ(count(p.forward, OpKind::Fallback), 1);
}

// A gradient equal to a tangent is an output of its own (a copy), and two equal gradients share
// one output.
TEST(Partition, GradientThatIsATangentIsCopied) {
  Graph g;
  GraphEditor e(g);
  int a = e.input(DType::Float32, {3}, {1}, 0);
  int b = e.input(DType::Float32, {3}, {1}, 1);
  int y = e.binary(OpKind::Add, a, b);
  int backward_start = static_cast<int>(g.nodes.size());
  int t = e.input(DType::Float32, {3}, {1}, 2);
  g.outputs = {y, t, t};
  passes::Partition p = passes::partition_joint_graph(g, {1, {t}, backward_start}, {});
  verify(p.backward);
  EXPECT_EQ(p.gradient_positions, (std::vector<int>{0, 0}));
  ASSERT_EQ(p.backward.outputs.size(), 1u);
  EXPECT_EQ(p.backward.nodes[p.backward.outputs[0]].op, OpKind::Cast);
  EXPECT_TRUE(p.saved.empty());
  EXPECT_TRUE(p.saved_inputs.empty());
}
