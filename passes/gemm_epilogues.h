/// \file gemm_epilogues.h
/// Loop IR -> loop IR: marks the kernel right after a matrix product as that product's
/// epilogue when each of its outer iterations reads a whole, disjoint slice of the product's
/// output (a row, or a batch's matrix) and it writes nothing the product reads. The runtime then
/// runs it on each tile of the product as soon as the tile is computed (Note [Epilogues in
/// cache]).
///   before: gemm buf3 = buf0 . buf1;  kernel k0: for i in 0..512 (parallel): for j in 0..1024:
///             buf4[i*1024 + j] = gelu(buf3[i*1024 + j] + buf2[j])
///   after:  the same, with gemm.epilogue = k0, epilogue_span = 1024 (one row per iteration)
/// Tested by tests/cpp/passes_test.cpp (which kernels are marked) and tests/python/test_matmul.py
/// (values against eager, run tile by tile).
#pragma once

#include "ir/kernel.h"
#include "passes/pass.h"

namespace kiln::passes {
void run_gemm_epilogues(ir::KernelProgram& p, const PassOptions& opts);
}
