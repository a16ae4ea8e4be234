/// \file training_ops.h
/// The capture-level names of the ops a training step reaches that kiln records as primitive
/// nodes: attention forward and backward (capture/attention_ops.h), batch norm in training mode
/// and its backward (capture/batch_norm_ops.h), and pooling backward
/// (capture/pooling_backward.h). GraphBuilder::call hands every name to `training_op` first.
#pragma once

#include <string>
#include <vector>

#include "capture/graph_builder.h"

namespace kiln::capture {

/// Records `name` (one of the names documented in training_ops.cpp) and returns the value id
/// of the requested result; -1 when `name` is none of them. An op with several results is
/// called once per result (attrs select which): the calls record the same nodes again, and
/// CSE (passes/simplify) keeps one copy.
int training_op(ir::GraphEditor& e, const std::string& name, const std::vector<Operand>& args, const ir::Attrs& attrs);

}  // namespace kiln::capture
