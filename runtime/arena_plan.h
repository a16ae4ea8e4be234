/// \file arena_plan.h
/// Where each temporary of a compiled CPU program lives in its arena: temporaries whose
/// lifetimes (ir::buffer_lifetimes, products' epilogues counted at the product) do not overlap
/// share memory, so a program's arena is the peak of its live temporaries rather than their
/// sum — what a training backward, with a temporary per activation gradient, needs to stay
/// within eager's peak memory. Tests: tests/cpp/arena_plan_test.cpp.
#pragma once

#include <cstddef>
#include <vector>

#include "ir/kernel.h"

namespace kiln::runtime {

struct ArenaPlan {
  std::vector<size_t> offset;  ///< per buffer: bytes into the arena (Temp buffers only)
  size_t bytes = 0;            ///< the arena's size
};

/// Offsets aligned to `align` bytes.
ArenaPlan plan_arena(const ir::KernelProgram& p, size_t align = 64);

}  // namespace kiln::runtime
