/// \file drop_unread_stores.h
/// Loop IR -> loop IR: stores into temporaries that nothing reads are dropped.
///
/// Lowering materialises every reduction of a row kernel (softmax's max and sum, a layer norm's
/// mean and rstd) into a temporary, because another kernel may read it; the kernel itself reads
/// the value from its accumulator. When no kernel, matrix product or eager op reads such a
/// temporary and it is not returned, its stores cost a write per row and, on CUDA, an allocation
/// per call, and they clutter the kernels users read:
///   before: for i0: ...; buf3[i] = div(exp(...), acc1); buf1[i0] = acc0; buf2[i0] = acc1
///   after:  for i0: ...; buf3[i] = div(exp(...), acc1)
/// The buffer entry stays (ids are unchanged); it is simply never touched. A store whose value
/// may fail the call (an integer division by a value that may be zero, an index check) stays:
/// its check is what makes eager redo the call and raise.
#pragma once

#include "ir/kernel.h"
#include "passes/pass.h"

namespace kiln::passes {
void run_drop_unread_stores(ir::KernelProgram& p, const PassOptions& opts);
}
