/// \file llvm_math.cpp
/// Branch-free float32 exp/expm1/log/log1p/tanh/erf/sigmoid as LLVM IR (see llvm_math.h).
///
/// Every function is range reduction + a minimax polynomial + reconstruction with integer
/// exponent arithmetic, and special inputs are patched with selects at the end. The polynomial
/// coefficients were fitted for this file (Lawson-weighted minimax in double, then rounded to
/// float and re-checked); they are not taken from another library.
///
/// Rules that keep the code vectorizable and correct on any target:
///  - No branches, no calls except llvm.fmuladd/fabs/copysign. Products that must be fused are
///    never required: llvm.fmuladd lets the backend fuse when the target has FMA and gives
///    separate mul+add otherwise (where llvm.fma would turn into a call to libm's fmaf), and
///    every reduction below is exact or accurate enough either way.
///  - Rounding to an integer uses the 1.5*2^23 "shifter" trick instead of llvm.rint/fptosi:
///    it needs no SSE4.1 round instruction, and a NaN input cannot produce poison (fptosi of
///    NaN is poison); NaN simply flows through the float arithmetic.
///  - Clamps are `select(fcmp olt/ogt)`, not minnum/maxnum, so that NaN inputs stay NaN.
#include "codegen_cpu/llvm_math.h"

#include <llvm/IR/Constants.h>
#include <llvm/IR/DerivedTypes.h>
#include <llvm/IR/Intrinsics.h>

#include <cstdint>
#include <limits>

#include "support/error.h"

namespace kiln::cpu {
namespace {

// ln(2) split for Cody-Waite reduction: kLn2Hi has 15 significant bits, so n * kLn2Hi is exact
// for |n| < 2^8 (all exponents that occur here), and kLn2Lo carries the rest.
constexpr float kLn2Hi = 0x1.62e4p-1f;        // 0.693145751953125
constexpr float kLn2Lo = 0x1.7f7d1cp-20f;     // 1.4286068e-06
constexpr float kLog2e = 1.44269504088896341f;
constexpr float kShifter = 0x1.8p23f;         // adding it rounds |v| < 2^22 to an integer
constexpr int32_t kShifterBits = 0x4b400000;  // bit pattern of kShifter
constexpr int32_t kSqrtHalfBits = 0x3f3504f3;  // bit pattern of float(sqrt(0.5))

// expm1(r) = r + r^2 * P(r) for |r| <= ln(2)/2 (+1%). Relative error 2.4e-9 (0.04 ulp).
constexpr float kExpm1Poly[] = {5.000000000e-01f, 1.666666567e-01f, 4.166634753e-02f,
                                8.333391510e-03f, 1.394166029e-03f, 1.984595874e-04f};
// log1p(f) = f + f^2 * P(f) for f in [sqrt(1/2) - 1, sqrt(2) - 1] (+0.002). Relative error
// 1.0e-8 (0.17 ulp).
constexpr float kLog1pPoly[] = {-4.999998808e-01f, 3.333332241e-01f, -2.500165403e-01f,
                                2.000215948e-01f,  -1.660740972e-01f, 1.417689025e-01f,
                                -1.325267553e-01f, 1.294230521e-01f,  -7.644891739e-02f};
// tanh(a) = a + a^3 * P(a^2) for a in [0, 0.625]. Relative error 2.7e-9 (0.05 ulp).
constexpr float kTanhPoly[] = {-3.333333135e-01f, 1.333320588e-01f,  -5.394676328e-02f,
                               2.170070261e-02f,  -8.177398704e-03f, 2.142961835e-03f};
constexpr float kTanhPolyLimit = 0.625f;
// erf(a) = a + a * P(a^2) for a in [0, 1]. Writing 2/sqrt(pi) = 1 + 0.128... keeps the leading
// coefficient's float rounding error out of the result (1.1283792f alone is 0.9 ulp off).
// Relative error 2.3e-9 (0.04 ulp).
constexpr float kErfSmallPoly[] = {1.283791661e-01f,  -3.761262596e-01f, 1.128358543e-01f,
                                   -2.685381286e-02f, 5.188327748e-03f,  -8.010195452e-04f,
                                   7.853867282e-05f};
constexpr float kErfSmallLimit = 1.0f;
// erfc(a) = e^(-a^2) * P(a - 2.5) for a in [1, 4], fitted so that the error of 1 - erfc(a) is
// at most 4.4e-9 relative to erf(a) (0.07 ulp). Above 4, erf(a) rounds to 1.
constexpr float kErfLargePoly[] = {2.108076513e-01f,  -7.434232533e-02f, 2.491227910e-02f,
                                   -8.137599565e-03f, 2.301722532e-03f,  -6.505604833e-04f,
                                   5.573129747e-04f,  2.322577930e-04f,  1.081956216e-04f};
constexpr float kErfLargeCenter = 2.5f;
constexpr float kErfClamp = 4.0f;

/// Small helper that builds splatted constants and common operations for one value type
/// (float or <N x float>) and its same-shaped i32 type.
class MathBuilder {
 public:
  MathBuilder(llvm::IRBuilder<>& b, llvm::Value* x)
      : b_(b),
        fty_(x->getType()),
        ity_(x->getType()->getWithNewType(b.getInt32Ty())),
        guard_(b) {
    llvm::Type* t = x->getType();
    KILN_CHECK(t->isFloatTy() || (llvm::isa<llvm::FixedVectorType>(t) &&
                                  t->getScalarType()->isFloatTy()),
               "llvm_math: expected float or fixed vector of float");
    // Reassociation or contraction flags would break the exact reductions below.
    b_.setFastMathFlags(llvm::FastMathFlags());
  }

  llvm::IRBuilder<>& ir() { return b_; }

  llvm::Value* f(float v) { return llvm::ConstantFP::get(fty_, static_cast<double>(v)); }
  llvm::Value* i(int32_t v) {
    return llvm::ConstantInt::get(ity_, static_cast<uint64_t>(static_cast<int64_t>(v)), true);
  }
  llvm::Value* inf() { return f(std::numeric_limits<float>::infinity()); }
  llvm::Value* nan() { return f(std::numeric_limits<float>::quiet_NaN()); }

  llvm::Value* add(llvm::Value* a, llvm::Value* c) { return b_.CreateFAdd(a, c); }
  llvm::Value* sub(llvm::Value* a, llvm::Value* c) { return b_.CreateFSub(a, c); }
  llvm::Value* mul(llvm::Value* a, llvm::Value* c) { return b_.CreateFMul(a, c); }
  llvm::Value* div(llvm::Value* a, llvm::Value* c) { return b_.CreateFDiv(a, c); }
  llvm::Value* neg(llvm::Value* a) { return b_.CreateFNeg(a); }
  /// a * c + d, fused where the target has FMA.
  llvm::Value* mul_add(llvm::Value* a, llvm::Value* c, llvm::Value* d) {
    return b_.CreateIntrinsic(llvm::Intrinsic::fmuladd, {fty_}, {a, c, d});
  }
  llvm::Value* fabs(llvm::Value* a) {
    return b_.CreateUnaryIntrinsic(llvm::Intrinsic::fabs, a);
  }
  llvm::Value* copysign(llvm::Value* mag, llvm::Value* sign) {
    return b_.CreateBinaryIntrinsic(llvm::Intrinsic::copysign, mag, sign);
  }

  // Ordered comparisons: false when an operand is NaN.
  llvm::Value* lt(llvm::Value* a, llvm::Value* c) { return b_.CreateFCmpOLT(a, c); }
  llvm::Value* gt(llvm::Value* a, llvm::Value* c) { return b_.CreateFCmpOGT(a, c); }
  llvm::Value* eq(llvm::Value* a, llvm::Value* c) { return b_.CreateFCmpOEQ(a, c); }
  /// a < c or either is NaN.
  llvm::Value* lt_or_nan(llvm::Value* a, llvm::Value* c) { return b_.CreateFCmpULT(a, c); }
  llvm::Value* select(llvm::Value* cond, llvm::Value* t, llvm::Value* e) {
    return b_.CreateSelect(cond, t, e);
  }
  // Clamps; NaN stays NaN (unlike minnum/maxnum).
  llvm::Value* at_least(llvm::Value* a, float lo) { return select(lt(a, f(lo)), f(lo), a); }
  llvm::Value* at_most(llvm::Value* a, float hi) { return select(gt(a, f(hi)), f(hi), a); }
  llvm::Value* clamp(llvm::Value* a, float lo, float hi) { return at_most(at_least(a, lo), hi); }

  llvm::Value* bits(llvm::Value* a) { return b_.CreateBitCast(a, ity_); }
  llvm::Value* from_bits(llvm::Value* a) { return b_.CreateBitCast(a, fty_); }
  llvm::Value* to_float(llvm::Value* n) { return b_.CreateSIToFP(n, fty_); }
  /// 2^n as a float, for integer n in [-126, 127] (built directly in the exponent field).
  llvm::Value* pow2(llvm::Value* n) {
    return from_bits(b_.CreateShl(b_.CreateAdd(n, i(127)), 23));
  }

  /// c[0] + a * (c[1] + a * (c[2] + ...)).
  template <size_t N>
  llvm::Value* horner(llvm::Value* a, const float (&c)[N]) {
    llvm::Value* acc = f(c[N - 1]);
    for (size_t k = N - 1; k-- > 0;) acc = mul_add(acc, a, f(c[k]));
    return acc;
  }

 private:
  llvm::IRBuilder<>& b_;
  llvm::Type* fty_;
  llvm::Type* ity_;
  llvm::IRBuilderBase::FastMathFlagGuard guard_;
};

/// Result of reducing x to x = n * ln2 + r with |r| <= ~ln(2)/2.
struct ExpReduction {
  llvm::Value* n;  ///< integer n (i32 lanes)
  llvm::Value* r;  ///< reduced argument
};

/// Cody-Waite reduction. Requires |x| < 2^21 * ln2 (callers clamp). n = round(x / ln2) comes
/// from the shifter trick: after t = x*log2e + 1.5*2^23 the low mantissa bits of t hold n.
/// Whether the mul_add is fused or not only decides which neighbour integer n becomes when
/// x / ln2 is within an ulp of a half-integer; |r| then exceeds ln(2)/2 by a negligible amount
/// that the polynomial's fitting interval (+1%) covers. r = x - n*ln2hi is exact (n*ln2hi is
/// exact and x is within a factor of 2 of it, or n = 0), so r carries only the error of the
/// final - n*ln2lo rounding.
ExpReduction reduce_exp(MathBuilder& m, llvm::Value* x) {
  llvm::Value* t = m.mul_add(x, m.f(kLog2e), m.f(kShifter));
  llvm::Value* nf = m.sub(t, m.f(kShifter));
  llvm::Value* n = m.ir().CreateSub(m.bits(t), m.i(kShifterBits));
  llvm::Value* r = m.mul_add(nf, m.f(-kLn2Hi), x);
  r = m.mul_add(nf, m.f(-kLn2Lo), r);
  return {n, r};
}

/// expm1(r) for reduced |r| <= ~ln(2)/2, accurate relative to the (possibly tiny) result.
llvm::Value* expm1_reduced(MathBuilder& m, llvm::Value* r) {
  return m.mul_add(m.mul(r, r), m.horner(r, kExpm1Poly), r);
}

/// e^x for x already clamped to [-104, 89] (NaN allowed: it propagates). With `wide` the
/// scale 2^n (n in [-150, 128]) is applied as two factors 2^(n/2) * 2^(n - n/2), each a normal
/// float, so the single rounding happens in the last multiply: results overflow to inf and
/// underflow through correctly rounded denormals like a true exp. Without `wide` the caller
/// guarantees x in [-87, 88] and one factor suffices.
llvm::Value* exp_clamped(MathBuilder& m, llvm::Value* x, bool wide) {
  ExpReduction red = reduce_exp(m, x);
  llvm::Value* p = m.add(m.f(1.0f), expm1_reduced(m, red.r));
  if (!wide) return m.mul(p, m.pow2(red.n));
  llvm::Value* n1 = m.ir().CreateAShr(red.n, 1);
  llvm::Value* n2 = m.ir().CreateSub(red.n, n1);
  return m.mul(m.mul(p, m.pow2(n1)), m.pow2(n2));
}

/// log(2^k * (1 + f)) for f in about [sqrt(1/2) - 1, sqrt(2) - 1] and k a float integer with
/// |k| < 2^8. k*ln2hi is exact, so the only roundings are the polynomial's and the last add.
/// When k = 0 the result is f + f^2*P(f), which keeps full relative precision for tiny f.
llvm::Value* log_reduced(MathBuilder& m, llvm::Value* f, llvm::Value* k) {
  llvm::Value* y = m.mul_add(m.mul(f, f), m.horner(f, kLog1pPoly), f);
  y = m.mul_add(k, m.f(kLn2Lo), y);
  return m.mul_add(k, m.f(kLn2Hi), y);
}

/// Splits the bits of a positive normal float v into v = 2^k * mm with mm in
/// [sqrt(1/2), sqrt(2)): adding (1.0 - sqrt(1/2)) in the bit domain carries into the exponent
/// exactly when the mantissa is >= sqrt(2)/2 * 2, so k comes out already rounded to the
/// nearest power of two and the mantissa is rebuilt around sqrt(1/2). Centering mm on 1 keeps
/// |f| = |mm - 1| <= 0.415, and f = mm - 1 is exact (Sterbenz).
struct LogSplit {
  llvm::Value* k;  ///< i32 exponent (unbiased)
  llvm::Value* f;  ///< mm - 1, exact
};
LogSplit split_log(MathBuilder& m, llvm::Value* v) {
  llvm::IRBuilder<>& b = m.ir();
  llvm::Value* ix = b.CreateAdd(m.bits(v), m.i(0x3f800000 - kSqrtHalfBits));
  llvm::Value* k = b.CreateSub(b.CreateAShr(ix, 23), m.i(127));
  llvm::Value* mm_bits = b.CreateAdd(b.CreateAnd(ix, m.i(0x007fffff)), m.i(kSqrtHalfBits));
  return {k, m.sub(m.from_bits(mm_bits), m.f(1.0f))};
}

}  // namespace

llvm::Value* emit_exp_f32(llvm::IRBuilder<>& b, llvm::Value* x) {
  MathBuilder m(b, x);
  // e^-104 < 2^-150 (half the smallest denormal) rounds to 0 and e^89 > FLT_MAX, so clamping
  // there changes no result and keeps n within [-150, 128] for the two-factor scaling.
  return exp_clamped(m, m.clamp(x, -104.0f, 89.0f), /*wide=*/true);
}

llvm::Value* emit_expm1_f32(llvm::IRBuilder<>& b, llvm::Value* x) {
  MathBuilder m(b, x);
  llvm::IRBuilder<>& ir = m.ir();
  // Below -26, e^x < 2^-37 and expm1 rounds to -1; above 89 it overflows. n is then in
  // [-38, 128].
  llvm::Value* xc = m.clamp(x, -26.0f, 89.0f);
  ExpReduction red = reduce_exp(m, xc);
  llvm::Value* u = expm1_reduced(m, red.r);
  // expm1(x) = 2^n * (1 + u) - 1 = 2^n * u + (2^n - 1). For n = 0 this is exactly u, which is
  // what keeps tiny x precise; for n <= 24, 2^n - 1 is exact. 2^128 is not a float, so
  // n = 128 uses s = 2^127 and doubles the result (there s - 1 == s anyway, and the final
  // doubling overflows to inf exactly when the true result does).
  llvm::Value* over = ir.CreateICmpSGT(red.n, m.i(127));
  llvm::Value* nc = ir.CreateSelect(over, m.i(127), red.n);
  llvm::Value* s = m.pow2(nc);
  llvm::Value* res = m.mul_add(s, u, m.sub(s, m.f(1.0f)));
  res = m.mul(res, m.select(over, m.f(2.0f), m.f(1.0f)));
  // u + 0 turns -0 into +0; expm1(-0) must be -0.
  return m.select(m.eq(x, m.f(0.0f)), x, res);
}

llvm::Value* emit_log_f32(llvm::IRBuilder<>& b, llvm::Value* x) {
  MathBuilder m(b, x);
  llvm::IRBuilder<>& ir = m.ir();
  // Denormals have no implicit leading 1: scale them by 2^23 into the normal range first.
  llvm::Value* denorm = m.lt(x, m.f(0x1p-126f));
  llvm::Value* xs = m.select(denorm, m.mul(x, m.f(0x1p23f)), x);
  LogSplit sp = split_log(m, xs);
  llvm::Value* k = ir.CreateSub(sp.k, ir.CreateSelect(denorm, m.i(23), m.i(0)));
  llvm::Value* res = log_reduced(m, sp.f, m.to_float(k));
  // The bit manipulation above produces garbage for these inputs; patch them.
  res = m.select(m.eq(x, m.inf()), m.inf(), res);
  res = m.select(m.eq(x, m.f(0.0f)), m.neg(m.inf()), res);
  return m.select(m.lt_or_nan(x, m.f(0.0f)), m.nan(), res);
}

llvm::Value* emit_log1p_f32(llvm::IRBuilder<>& b, llvm::Value* x) {
  MathBuilder m(b, x);
  // u = fl(1 + x) loses the low bits of small x; c = x - (u - 1) recovers them exactly
  // (Sterbenz / exact addition error) for u < 2^24. Since 1 + x = u + c = 2^k * (mm + c/2^k),
  // log1p(x) = k*ln2 + log1p(f + c/2^k) with f = mm - 1: the correction is folded into the
  // reduced argument, so no division is needed and tiny x gives f ~= x with full precision.
  // For u >= 2^24 the correction is below 2^-24 relative to u and is dropped (2^-k would not
  // be a normal float for k > 126 either).
  llvm::Value* u = m.add(m.f(1.0f), x);
  LogSplit sp = split_log(m, u);
  llvm::Value* c = m.sub(x, m.sub(u, m.f(1.0f)));
  llvm::Value* corr = m.mul(c, m.pow2(m.ir().CreateNeg(sp.k)));
  corr = m.select(m.lt(u, m.f(0x1p24f)), corr, m.f(0.0f));
  llvm::Value* res = log_reduced(m, m.add(sp.f, corr), m.to_float(sp.k));
  // u is never denormal here (u >= 2^-24 for x > -1), so only these need patching.
  res = m.select(m.eq(x, m.f(0.0f)), x, res);  // keeps -0
  res = m.select(m.eq(x, m.inf()), m.inf(), res);
  res = m.select(m.eq(x, m.f(-1.0f)), m.neg(m.inf()), res);
  return m.select(m.lt_or_nan(x, m.f(-1.0f)), m.nan(), res);
}

llvm::Value* emit_tanh_f32(llvm::IRBuilder<>& b, llvm::Value* x) {
  MathBuilder m(b, x);
  // tanh is odd: work on a = |x| and copy the sign back at the end (this also yields -0 for
  // -0, which a + a^3*P would turn into +0).
  llvm::Value* a = m.fabs(x);
  // Small |x|: odd polynomial, relative precision preserved down to denormals.
  llvm::Value* z = m.mul(a, a);
  llvm::Value* small = m.mul_add(m.mul(a, z), m.horner(z, kTanhPoly), a);
  // Larger |x|: tanh(a) = 1 - 2 / (e^(2a) + 1). With a >= 0.625 the result is >= 0.55, so the
  // subtraction does not cancel. tanh(a) rounds to 1 above ~9.01; clamping at 10 keeps e^(2a)
  // finite (and inf input gives exactly 1) while NaN passes through.
  llvm::Value* ac = m.at_most(a, 10.0f);
  llvm::Value* e = exp_clamped(m, m.add(ac, ac), /*wide=*/false);
  llvm::Value* large = m.sub(m.f(1.0f), m.div(m.f(2.0f), m.add(e, m.f(1.0f))));
  llvm::Value* res = m.select(m.lt(a, m.f(kTanhPolyLimit)), small, large);
  return m.copysign(res, x);
}

llvm::Value* emit_erf_f32(llvm::IRBuilder<>& b, llvm::Value* x) {
  MathBuilder m(b, x);
  // erf is odd: compute on a = |x|, copy the sign back (erf(-0) = -0).
  llvm::Value* a = m.fabs(x);
  // Small |x|: erf(a) = a + a*P(a^2), relative precision preserved for tiny a.
  llvm::Value* small = m.mul_add(a, m.horner(m.mul(a, a), kErfSmallPoly), a);
  // Larger |x|: erf(a) = 1 - e^(-a^2) * P(a). Here erf >= 0.84, so the rounding error of a^2
  // (which e^(-a^2) turns into a relative error of erfc) is scaled down by erfc/erf <= 0.19.
  // Above 4, erf rounds to 1; the clamp also maps inf to 1 while NaN passes through.
  llvm::Value* ac = m.at_most(a, kErfClamp);
  llvm::Value* e = exp_clamped(m, m.neg(m.mul(ac, ac)), /*wide=*/false);
  llvm::Value* erfc = m.mul(e, m.horner(m.sub(ac, m.f(kErfLargeCenter)), kErfLargePoly));
  llvm::Value* large = m.sub(m.f(1.0f), erfc);
  llvm::Value* res = m.select(m.lt(a, m.f(kErfSmallLimit)), small, large);
  return m.copysign(res, x);
}

llvm::Value* emit_sigmoid_f32(llvm::IRBuilder<>& b, llvm::Value* x) {
  MathBuilder m(b, x);
  // e = e^-|x| is in [0, 1], so 1 + e never overflows. For x >= 0 the result is 1 / (1 + e);
  // for x < 0 it is e / (1 + e) = e^x / (1 + e^x), which stays accurate (down to denormals)
  // where 1 / (1 + e^-x) would overflow to 0. NaN propagates through e.
  llvm::Value* na = m.neg(m.fabs(x));
  llvm::Value* e = exp_clamped(m, m.at_least(na, -104.0f), /*wide=*/true);
  llvm::Value* num = m.select(m.lt(x, m.f(0.0f)), e, m.f(1.0f));
  return m.div(num, m.add(m.f(1.0f), e));
}

}  // namespace kiln::cpu
