/// \file dtype.h
/// Scalar types (the subset of PyTorch's c10::ScalarType kiln handles) and PyTorch's type
/// promotion rules, so that every node of a captured graph has an explicit dtype.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace kiln::ir {

// KILN_DTYPE(Enum, name, bytes, is_float, is_int)
#define KILN_FOR_EACH_DTYPE(X)            \
  X(Bool, "bool", 1, false, false)        \
  X(UInt8, "uint8", 1, false, true)       \
  X(Int8, "int8", 1, false, true)         \
  X(Int16, "int16", 2, false, true)       \
  X(Int32, "int32", 4, false, true)       \
  X(Int64, "int64", 8, false, true)       \
  X(Float16, "float16", 2, true, false)   \
  X(BFloat16, "bfloat16", 2, true, false) \
  X(Float32, "float32", 4, true, false)   \
  X(Float64, "float64", 8, true, false)

enum class DType : uint8_t {
#define KILN_DTYPE_ENUM(e, n, b, f, i) e,
  KILN_FOR_EACH_DTYPE(KILN_DTYPE_ENUM)
#undef KILN_DTYPE_ENUM
};

const char* dtype_name(DType t);
/// Parses "float32" etc.; throws UserError on an unknown name.
DType dtype_from_name(const std::string& name);
int dtype_bytes(DType t);
bool is_float(DType t);
bool is_int(DType t);  ///< integral, excluding bool
inline bool is_bool(DType t) { return t == DType::Bool; }
bool is_signed_int(DType t);
inline bool is_half(DType t) { return t == DType::Float16 || t == DType::BFloat16; }
/// The dtype ATen's CPU kernels compute an op of dtype `t` in (its "opmath" type): float32 for
/// the half types, `t` itself otherwise.
inline DType compute_dtype(DType t) { return is_half(t) ? DType::Float32 : t; }
/// A number as a value of floating-point dtype `t` holds it: rounded to nearest even (through
/// float32 for the half types, as c10::Half and c10::BFloat16 convert), +-inf past the range.
double round_to_dtype(double v, DType t);

/// How an operand takes part in type promotion (PyTorch's three priority classes).
enum class OperandKind : uint8_t {
  Tensor,      ///< a tensor with at least one dimension
  ZeroDim,     ///< a 0-dim tensor
  Scalar,      ///< a Python number ("wrapped number")
};

struct PromotionOperand {
  DType dtype;
  OperandKind kind;
};

/// torch.result_type over the operands. `default_float` is torch.get_default_dtype().
DType result_type(const std::vector<PromotionOperand>& ops, DType default_float = DType::Float32);
/// c10::promoteTypes for two dtypes.
DType promote_types(DType a, DType b);

}  // namespace kiln::ir
