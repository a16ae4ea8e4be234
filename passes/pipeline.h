/// \file pipeline.h
/// The one ordered list of passes from a captured graph to a KernelProgram.
#pragma once

#include "ir/kernel.h"
#include "passes/pass.h"

namespace kiln::passes {
/// decompose -> simplify -> lower to loops (with fusion). Throws Unsupported for what the
/// backends cannot compile yet, so the caller can run the function eagerly instead.
ir::KernelProgram run_pipeline(const ir::Graph& g, const PassOptions& opts);
}  // namespace kiln::passes
