/// \file layout.h
/// Memory layouts of stored values chosen for the eager ops that read them.
#pragma once

#include "ir/graph.h"
#include "passes/pass.h"

namespace kiln::passes {
/// Note [Channels-last convolutions]: a 2-D convolution run eagerly inside a program is
/// 1.4-2.5x faster on channels-last (NHWC) operands on the CPU (oneDNN's native layout; a
/// depthwise 3x3 goes from 0.95 to 0.38 ms). The values kiln stores for such a convolution are
/// written channels-last (free: a kernel writes any layout), an argument is copied once into
/// that layout, and the convolution's result, which torch then returns channels-last, is read
/// as such by the kernels after it. Values the caller sees keep eager's layout.
ir::Graph run_choose_layouts(const ir::Graph& g, const PassOptions& opts);
}  // namespace kiln::passes
