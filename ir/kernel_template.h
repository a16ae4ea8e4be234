/// \file kernel_template.h
/// A kernel program whose size-dependent constants are parameters the runtime passes: one
/// machine code for the lowerings of a graph at every size that has the same structure
/// (Note [Kernel templates] in kernel_template.cpp).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "ir/kernel.h"

namespace kiln::ir {

struct KernelTemplate {
  /// The lowering at one size, its kernels rewritten: each constant and inner loop count that
  /// differed at the other size is a parameter (Param expressions, Loop::extent_param).
  KernelProgram program;
  struct ParamInfo {
    DType dtype;          ///< Int64, or a float dtype (the value is passed as float64 bits)
    int64_t seen[2];      ///< its values in the two lowerings (`a`, `b`), as passed
  };
  std::vector<ParamInfo> params;
};

/// Makes the template of two lowerings of one graph at two sizes, from `b`'s kernels. Empty when
/// they have the same structure: the same steps, buffers (up to sizes and strides), matrix
/// products and outputs (up to shapes and offsets), and kernels equal but for constants and
/// loop counts; else the first difference, and `out` is not set.
std::string make_kernel_template(const KernelProgram& a, const KernelProgram& b, KernelTemplate* out);

/// The parameter values with which `t`'s kernels compute exactly what `p`'s do: `p` has `t`'s
/// structure, every constant of `t` is `p`'s, and each parameter has one value throughout.
/// Empty on success; else the first difference (`p` then needs code of its own).
std::string match_kernel_template(const KernelTemplate& t, const KernelProgram& p, std::vector<int64_t>* params);

/// A float constant's value as a parameter (its float64 bits) and back.
int64_t float_param_bits(double v);
double float_param_value(int64_t bits);

}  // namespace kiln::ir
