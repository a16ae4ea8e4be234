/// \file llvm_math.h
/// Branch-free LLVM IR emitters for float32 transcendental functions (exp, expm1, log, log1p,
/// tanh, erf, sigmoid) used by the CPU code generator.
///
/// Each emitter writes straight-line IR at the builder's insertion point: float arithmetic,
/// fcmp/select, bitcasts and integer ops, and the intrinsics llvm.fmuladd, llvm.fabs and
/// llvm.copysign. They create no basic blocks and call no library functions, so LLVM's loop
/// vectorizer can widen a scalar loop that contains them, and they work unchanged when `x` is
/// already a vector. `x` must be `float` or a fixed vector of `float`; the result has the same
/// type. The emitters ignore (and restore) the builder's fast-math flags: their range
/// reductions depend on exact IEEE evaluation order.
///
/// Accuracy is stated as the largest distance, in float ulps, from the double-precision libm
/// result rounded to float, measured over all 2^32 float inputs on an x86-64 host (AVX-512, with
/// and without FMA contraction); tests/cpp/llvm_math_test.cpp checks it on random samples.
/// Special values (infinities, NaN, signed zeros, overflow and underflow) follow what PyTorch's
/// CPU kernels return.
#pragma once

#include <llvm/IR/IRBuilder.h>

namespace kiln::cpu {

/// e^x. Measured max error: 1 ulp. Overflows to +inf above ~88.72, returns denormals down to
/// ~-103.97 and 0 below; exp(-inf) = 0, exp(+inf) = +inf, exp(nan) = nan.
llvm::Value* emit_exp_f32(llvm::IRBuilder<>& b, llvm::Value* x);

/// e^x - 1, accurate in relative terms for tiny |x|. Measured max error: 1 ulp.
/// expm1(-inf) = -1, expm1(+inf) = +inf (overflow above ~88.72), expm1(-0) = -0.
llvm::Value* emit_expm1_f32(llvm::IRBuilder<>& b, llvm::Value* x);

/// Natural logarithm. Measured max error: 1 ulp (denormal inputs included).
/// log(+-0) = -inf, log(x < 0) = nan, log(+inf) = +inf, log(nan) = nan.
llvm::Value* emit_log_f32(llvm::IRBuilder<>& b, llvm::Value* x);

/// log(1 + x), accurate in relative terms for tiny |x|. Measured max error: 1 ulp (2 ulp on
/// targets without FMA).
/// log1p(-1) = -inf, log1p(x < -1) = nan, log1p(+inf) = +inf, log1p(-0) = -0.
llvm::Value* emit_log1p_f32(llvm::IRBuilder<>& b, llvm::Value* x);

/// Hyperbolic tangent. Measured max error: 1 ulp.
/// tanh(+-inf) = +-1, tanh(-0) = -0, tanh(nan) = nan.
llvm::Value* emit_tanh_f32(llvm::IRBuilder<>& b, llvm::Value* x);

/// Error function. Measured max error: 1 ulp.
/// erf(+-inf) = +-1, erf(-0) = -0, erf(nan) = nan.
llvm::Value* emit_erf_f32(llvm::IRBuilder<>& b, llvm::Value* x);

/// Logistic sigmoid 1 / (1 + e^-x), computed without overflow or NaN for large |x| (it returns
/// e^x / (1 + e^x) for x < 0, so tiny results keep their precision down to denormals).
/// Measured max error: 2 ulp. sigmoid(-inf) = 0, sigmoid(+inf) = 1, sigmoid(nan) = nan.
llvm::Value* emit_sigmoid_f32(llvm::IRBuilder<>& b, llvm::Value* x);

}  // namespace kiln::cpu
