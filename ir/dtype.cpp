/// \file dtype.cpp
/// Dtype facts and PyTorch's type promotion (c10::promoteTypes and at::native::result_type).
#include "ir/dtype.h"

#include <algorithm>
#include <cmath>

#include "support/error.h"

namespace kiln::ir {
namespace {
struct DTypeInfo {
  const char* name;
  int bytes;
  bool is_float;
  bool is_int;
};
constexpr DTypeInfo kInfo[] = {
#define KILN_DTYPE_INFO(e, n, b, f, i) {n, b, f, i},
    KILN_FOR_EACH_DTYPE(KILN_DTYPE_INFO)
#undef KILN_DTYPE_INFO
};
const DTypeInfo& info(DType t) { return kInfo[static_cast<int>(t)]; }

// Category order used by result_type: bool < integral < floating.
int category(DType t) { return is_bool(t) ? 0 : is_int(t) ? 1 : 2; }
}  // namespace

const char* dtype_name(DType t) { return info(t).name; }
int dtype_bytes(DType t) { return info(t).bytes; }
bool is_float(DType t) { return info(t).is_float; }
bool is_int(DType t) { return info(t).is_int; }
bool is_signed_int(DType t) { return is_int(t) && t != DType::UInt8; }

double round_to_dtype(double v, DType t) {
  if (t == DType::Float64 || !is_float(t)) return v;
  double f = static_cast<float>(v);
  if (t == DType::Float32 || !std::isfinite(f) || f == 0) return f;
  // Half types: `bits` of precision; below the smallest normal, a fixed spacing (subnormals).
  const int bits = t == DType::Float16 ? 11 : 8;
  const int min_exp = t == DType::Float16 ? -13 : -125;  // frexp's exponent of the smallest normal
  const double max = t == DType::Float16 ? 65504.0 : 3.3895313892515355e38;
  int e = 0;
  std::frexp(f, &e);
  double q = std::ldexp(1.0, std::max(e, min_exp) - bits);
  double r = std::nearbyint(f / q) * q;  // f / q is exact; nearbyint: ties to even
  return std::fabs(r) > max ? std::copysign(INFINITY, f) : r;
}

DType dtype_from_name(const std::string& name) {
  for (int i = 0; i < static_cast<int>(sizeof kInfo / sizeof kInfo[0]); ++i)
    if (name == kInfo[i].name) return static_cast<DType>(i);
  throw UserError("kiln: unknown dtype '" + name + "'");
}

DType promote_types(DType a, DType b) {
  if (a == b) return a;
  if (is_bool(a)) return b;
  if (is_bool(b)) return a;
  if (is_float(a) || is_float(b)) {
    if (!is_float(a)) return b;
    if (!is_float(b)) return a;
    // float16 with bfloat16 promotes to float32; otherwise the wider type.
    if ((a == DType::Float16 && b == DType::BFloat16) || (a == DType::BFloat16 && b == DType::Float16))
      return DType::Float32;
    return dtype_bytes(a) >= dtype_bytes(b) ? a : b;
  }
  // Both integral. uint8 with a signed type: the signed type if wider, else int16.
  if (a == DType::UInt8 || b == DType::UInt8) {
    DType s = a == DType::UInt8 ? b : a;
    return s == DType::Int8 ? DType::Int16 : s;
  }
  return dtype_bytes(a) >= dtype_bytes(b) ? a : b;
}

DType result_type(const std::vector<PromotionOperand>& ops, DType default_float) {
  // Mirrors at::native::result_type: promote separately within each priority class, then let a
  // lower class win only when it is of a higher category (bool < int < float).
  bool have[3] = {false, false, false};
  DType state[3] = {DType::Bool, DType::Bool, DType::Bool};
  for (const auto& op : ops) {
    int k = static_cast<int>(op.kind);
    DType t = op.dtype;
    if (op.kind == OperandKind::Scalar && is_float(t)) t = default_float;
    state[k] = have[k] ? promote_types(state[k], t) : t;
    have[k] = true;
  }
  auto combine = [](bool& hh, DType& higher, bool hl, DType lower) {
    if (!hl) return;
    if (!hh) {
      hh = true;
      higher = lower;
      return;
    }
    if (category(lower) > category(higher)) higher = promote_types(higher, lower);
  };
  // combine(dim, combine(zero, wrapped))
  bool hz = have[1];
  DType z = state[1];
  combine(hz, z, have[2], state[2]);
  bool hd = have[0];
  DType d = state[0];
  combine(hd, d, hz, z);
  KILN_CHECK(hd, "result_type of no operands");
  return d;
}

}  // namespace kiln::ir
