/// \file gemm_bias.h
/// Loop IR -> loop IR (CUDA): a bias vector that every read of a matrix product adds to its row
/// is added by the product instead (cuBLASLt's BIAS epilogue); a kernel left copying the
/// product goes (Note [Bias in the product]).
///   before: gemm %5: buf3 = buf0 . buf1;  kernel k0: for i in 0..64: for j in 0..256:
///             buf4[i*256 + j] = buf2[j] + buf3[i*256 + j]
///   after:  gemm %5: buf4 = buf0 . buf1 + buf2[0 + col]
/// Tested by tests/cpp/passes_test.cpp (what folds, what does not) and
/// tests/python/test_cuda_codegen.py (values against eager, emulated and on a GPU).
#pragma once

#include "ir/kernel.h"
#include "passes/pass.h"

namespace kiln::passes {
void run_gemm_bias(ir::KernelProgram& p, const PassOptions& opts);
}
