/// \file pointwise_ops.cpp
/// Capture-level lowering of ATen pointwise and creation ops that are a few primitive nodes
/// each, recorded with eager's own formula and operation order so results match bit for bit:
/// isinf / isfinite / isposinf / isneginf, lerp, addcmul, addcdiv and linspace. ATen's CPU
/// kernels are built with floating-point contraction: where they compute a * b + c in one
/// expression, kiln records an Fma node (one rounding). GraphBuilder::call hands every name
/// to `pointwise_op` first.
/// Tested by tests/python/test_op_coverage.py.
#include <cmath>

#include "capture/graph_builder.h"
#include "support/error.h"

namespace kiln::capture {
using namespace kiln::ir;

int GraphBuilder::pointwise_op(const std::string& name, const std::vector<Operand>& args, const Attrs& attrs) {
  auto tensor = [&](size_t i) {
    KILN_UNSUPPORTED_IF(i >= args.size() || args[i].kind != Operand::Kind::Value, "{} operand {} must be a tensor",
                        name, i);
    return args[i].value;
  };
  if (name == "isinf" || name == "isfinite" || name == "isposinf" || name == "isneginf") {
    KILN_UNSUPPORTED_IF(args.size() != 1, "{} takes one tensor", name);
    int x = tensor(0);
    DType t = node(x).dtype;
    // Integers and bools are always finite, never infinite: x != x and its negation say so as
    // values computed from x, which take eager's layout (its ones_like / zeros_like keep x's;
    // a constant would be one value for every result of those sizes, in one layout).
    if (!is_float(t)) {
      int never = editor_.binary(OpKind::Ne, x, x);
      return name == "isfinite" ? editor_.unary(OpKind::LogicalNot, never) : never;
    }
    int inf = editor_.constant(INFINITY, t);
    if (name == "isposinf") return editor_.binary(OpKind::Eq, x, inf);
    if (name == "isneginf") return editor_.binary(OpKind::Eq, x, editor_.constant(-INFINITY, t));
    int a = editor_.unary(OpKind::Abs, x);
    // isfinite: |x| < inf is false for +-inf and NaN alike.
    return editor_.binary(name == "isinf" ? OpKind::Eq : OpKind::Lt, a, inf);
  }
  if (name == "lerp") {
    // Note [lerp]: eager's CPU kernel (LerpKernel.cpp, lerp_vec) computes its vector body as
    // fma(coeff, end - start, base), coeff = w and base = start where |w| < 0.5, coeff = w - 1
    // and base = end otherwise. Its scalar tail (ATen's Lerp.h: start + w * (end - start), or
    // end - (end - start) * (1 - w)) is contracted to the same fused multiply-adds (1 - w is
    // exactly -(w - 1)), so every element is that fma. A half lerp computes in float32 and
    // rounds once.
    KILN_UNSUPPORTED_IF(args.size() != 3, "lerp takes start, end, weight");
    DType t = promoted({args[0], args[1]});
    KILN_UNSUPPORTED_IF(!is_float(t), "lerp of {}", dtype_name(t));
    DType ct = compute_dtype(t);
    int s = editor_.cast(value_of(args[0], t), ct);
    int e = editor_.cast(value_of(args[1], t), ct);
    int w = args[2].kind == Operand::Kind::Value ? editor_.cast(value_of(args[2], t), ct) : value_of(args[2], ct);
    int diff = editor_.binary(OpKind::Sub, e, s);
    int small = editor_.binary(OpKind::Lt, editor_.unary(OpKind::Abs, w), editor_.constant(0.5, ct));
    int coeff = editor_.where(small, w, editor_.binary(OpKind::Sub, w, editor_.constant(1.0, ct)));
    int base = editor_.where(small, s, e);
    return editor_.cast(editor_.fma(coeff, diff, base), t);
  }
  if (name == "addcmul" || name == "addcdiv") {
    // eager (PointwiseOpsKernel.cpp): self + value * t1 * t2 and self + value * t1 / t2, in
    // that order ((value * t1) op t2, then + self), with value in the result dtype; half
    // tensors compute in float32 with value in float32 and round once. ATen's CPU kernels are
    // built with floating-point contraction: a float addcmul is fma(value * t1, t2, self)
    // (checked bit for bit against eager; addcdiv's division leaves nothing to contract).
    KILN_UNSUPPORTED_IF(args.size() != 4, "{} takes self, tensor1, tensor2, value", name);
    DType t = promoted({args[0], args[1], args[2]});
    KILN_UNSUPPORTED_IF(t == DType::Bool || (name == "addcdiv" && !is_float(t)), "{} of {}", name, dtype_name(t));
    DType ct = compute_dtype(t);
    int x = editor_.cast(value_of(args[0], t), ct);
    int t1 = editor_.cast(value_of(args[1], t), ct);
    int t2 = editor_.cast(value_of(args[2], t), ct);
    int v = value_of(args[3], ct);
    int vt1 = editor_.binary(OpKind::Mul, v, t1);
    if (name == "addcmul" && is_float(ct)) return editor_.cast(editor_.fma(vt1, t2, x), t);
    int p = editor_.binary(name == "addcmul" ? OpKind::Mul : OpKind::Div, vt1, t2);
    return editor_.cast(editor_.binary(OpKind::Add, x, p), t);
  }
  if (name == "linspace") {
    // eager (RangeFactoriesKernel.cpp, linspace_kernel): start and end converted to the result
    // dtype, step = (end - start) / (steps - 1) in the result dtype (float64 for integers);
    // element i < steps / 2 is start + step * i, the others end - step * (steps - i - 1),
    // each in the step's type (converted to an integer result by truncation). One step: start.
    // floats = start, end; ints = steps; dtype = the result's (float32, float64 or integral).
    KILN_UNSUPPORTED_IF(attrs.floats.size() != 2 || attrs.ints.size() != 1, "linspace takes start, end and steps");
    DType t = attrs.dtype;
    KILN_UNSUPPORTED_IF(t == DType::Bool || is_half(t), "linspace of {}", dtype_name(t));
    int64_t steps = attrs.ints[0];
    KILN_UNSUPPORTED_IF(steps < 0, "linspace with negative steps");
    double start = attrs.floats[0], end = attrs.floats[1];
    if (steps <= 1) return editor_.expand(editor_.constant(start, t), {steps});
    DType st = t == DType::Float32 ? DType::Float32 : DType::Float64;
    double step;
    if (t == DType::Float32) {
      float s32 = static_cast<float>(start), e32 = static_cast<float>(end);
      start = s32;
      end = e32;
      step = static_cast<float>((e32 - s32) / static_cast<float>(steps - 1));
    } else {
      if (!is_float(t)) {  // Scalar::to<integer>: truncated
        start = std::trunc(start);
        end = std::trunc(end);
      }
      step = (end - start) / static_cast<double>(steps - 1);
    }
    int idx = editor_.iota({steps}, 0, DType::Int64);
    int step_c = editor_.constant(step, st);
    // Contracted in eager's build (as addcmul): start + step * i is fma(step, i, start), and
    // end - step * r is fma(-step, r, end).
    int lo = editor_.fma(step_c, editor_.cast(idx, st), editor_.constant(start, st));
    int rest = editor_.binary(OpKind::Sub, editor_.int_constant(steps - 1, DType::Int64), idx);
    int hi = editor_.fma(editor_.constant(-step, st), editor_.cast(rest, st), editor_.constant(end, st));
    int first = editor_.binary(OpKind::Lt, idx, editor_.int_constant(steps / 2, DType::Int64));
    return editor_.cast(editor_.where(first, lo, hi), t);
  }
  return -1;
}

}  // namespace kiln::capture
