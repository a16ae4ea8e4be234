/// \file kernel_template_test.cpp
/// Kernel templates (Note [Kernel templates]): which constants become parameters, and which
/// lowerings match a template with which values.
#include "ir/kernel_template.h"

#include <gtest/gtest.h>

#include <memory>

using namespace kiln::ir;

namespace {

/// for i in 0..n: buf1[i] = buf0[i + offset] * scale  (buf0 holds n + offset elements).
KernelProgram shifted_scale(int64_t n, int64_t offset, double scale) {
  KernelProgram p;
  p.ctx = std::make_shared<Context>();
  Context& c = *p.ctx;
  p.buffers.push_back({BufferKind::Input, 0, DType::Float32, {n + offset}, {1}});
  p.buffers.push_back({BufferKind::Output, 0, DType::Float32, {n}, {1}});
  Kernel k;
  k.name = "k0_scale";
  Expr outer = c.var(2), i = c.var(n);
  k.loops = {{outer, LoopKind::Parallel}};
  Phase ph;
  ph.loops = {{i, LoopKind::Vectorized}};
  Expr v = c.binary(ExprOp::Mul, c.load(0, c.add(i, offset), DType::Float32), c.float_const(scale, DType::Float32));
  ph.stores.push_back({1, i, v});
  k.phases.push_back(ph);
  p.kernels.push_back(k);
  p.steps.push_back({Step::Kind::Kernel, 0});
  p.outputs.push_back({OutputSpec::Kind::Buffer, 1});
  return p;
}

}  // namespace

TEST(KernelTemplate, ConstantsThatDifferBecomeParameters) {
  KernelTemplate t;
  // The loop count and the offset change together (8, 8 -> 12, 12): one parameter; the scale
  // stays a constant.
  ASSERT_EQ(make_kernel_template(shifted_scale(8, 8, 0.5), shifted_scale(12, 12, 0.5), &t), "");
  ASSERT_EQ(t.params.size(), 1u);
  EXPECT_EQ(t.params[0].dtype, DType::Int64);
  EXPECT_EQ(t.params[0].seen[0], 8);
  EXPECT_EQ(t.params[0].seen[1], 12);
  EXPECT_EQ(t.program.param_count, 1);
  std::string text = print(t.program.kernels[0]);
  EXPECT_NE(text.find("in 0..p0"), std::string::npos) << text;
  EXPECT_NE(text.find("+ p0"), std::string::npos) << text;

  std::vector<int64_t> params;
  EXPECT_EQ(match_kernel_template(t, shifted_scale(30, 30, 0.5), &params), "");
  EXPECT_EQ(params, std::vector<int64_t>{30});
}

TEST(KernelTemplate, FloatConstantsTravelAsTheirBits) {
  KernelTemplate t;
  ASSERT_EQ(make_kernel_template(shifted_scale(8, 1, 1.0 / 8), shifted_scale(8, 1, 1.0 / 12), &t), "");
  ASSERT_EQ(t.params.size(), 1u);
  EXPECT_EQ(t.params[0].dtype, DType::Float32);
  std::vector<int64_t> params;
  EXPECT_EQ(match_kernel_template(t, shifted_scale(8, 1, 1.0 / 3), &params), "");
  ASSERT_EQ(params.size(), 1u);
  EXPECT_EQ(float_param_value(params[0]), 1.0 / 3);
}

TEST(KernelTemplate, MismatchesAreRefusedWithTheReason) {
  KernelTemplate t;
  ASSERT_EQ(make_kernel_template(shifted_scale(8, 8, 0.5), shifted_scale(12, 12, 0.5), &t), "");
  std::vector<int64_t> params;
  // A constant the template keeps is another value here.
  std::string why = match_kernel_template(t, shifted_scale(20, 20, 0.25), &params);
  EXPECT_NE(why.find("the constant"), std::string::npos) << why;
  // One parameter would need two values (the count 20, the offset 21).
  why = match_kernel_template(t, shifted_scale(20, 21, 0.5), &params);
  EXPECT_NE(why.find("would be both"), std::string::npos) << why;
  // Another structure: an offset of 0 folds away.
  why = match_kernel_template(t, shifted_scale(20, 0, 0.5), &params);
  EXPECT_FALSE(why.empty());
  // Lowerings whose structure differs make no template.
  EXPECT_NE(make_kernel_template(shifted_scale(8, 0, 0.5), shifted_scale(12, 12, 0.5), &t), "");
}
