/// \file partition_joint.h
/// Splits a joint forward+backward graph (the forward as captured, then the backward PyTorch's
/// autograd ran on tangent inputs, recorded by the same tracer) into a forward graph and a
/// backward graph, choosing which forward values the backward reads are saved and which it
/// computes again (Note [Saving or recomputing] in partition_joint.cpp).
///
///   joint:    %0 = input(arg0)  %1 = input(arg1: tangent)  %2 = gelu(%0)  %3 = mul(%1, gelu'(%0))
///   forward:  outputs [%2] + saved [] (x is a primal input: passed to the backward as is)
///   backward: inputs [x, tangent] -> recomputes gelu'(x) -> output [%3]
///
/// Tests: tests/cpp/partition_test.cpp, tests/python/test_training*.py.
#pragma once

#include <cstdint>
#include <vector>

#include "ir/graph.h"
#include "ir/kernel.h"

namespace kiln::passes {

/// What the tracer knows about a joint graph's parts.
struct JointSpec {
  int forward_outputs = 0;    ///< joint.outputs[0, n) are the forward's; the rest are gradients
  std::vector<int> tangents;  ///< Input node ids of the tangents (the gradients of outputs)
  int backward_start = 0;     ///< nodes from this id on were recorded while autograd ran
};

struct PartitionOptions {
  /// Recompute cheap pointwise and view chains in the backward instead of saving their results
  /// (min-cut); false saves every forward value the backward reads.
  bool recompute = true;
};

struct Partition {
  /// Primal inputs (the joint's leaves, same arg indices) -> forward outputs, then the saved
  /// values not among them.
  ir::Graph forward;
  /// Inputs (arg index = node id): the saved values, then the saved primal inputs, then the
  /// tangents (in JointSpec::tangents order) -> the distinct gradients.
  ir::Graph backward;
  /// Per saved value: its joint node id and its position among the forward graph's outputs.
  std::vector<int> saved, saved_positions;
  /// Arg indices of the primal inputs the backward reads (passed through, never copied).
  std::vector<int> saved_inputs;
  /// Joint node ids the backward computes again from saved values.
  std::vector<int> recomputed;
  /// Per gradient (joint.outputs[forward_outputs + j]): its position among backward's outputs.
  std::vector<int> gradient_positions;
  /// Per gradient: the tangents it depends on (indices into JointSpec::tangents). When autograd
  /// gives none of them (the outputs they belong to were not used), eager's gradient is None,
  /// not zeros.
  std::vector<std::vector<int>> gradient_tangents;
  int64_t saved_bytes = 0;  ///< bytes of the saved values (saved primal inputs not counted)
};

/// Partitions `joint`; throws Unsupported when the backward would have to recompute a value
/// that cannot be recomputed (it never does for a graph the tracer recorded).
Partition partition_joint_graph(const ir::Graph& joint, const JointSpec& spec, const PartitionOptions& opts);

/// Gives backward input k (the k-th saved value) the strides the compiled forward stores its
/// output with; throws InternalError if that output is not a buffer of its own.
void adopt_saved_layouts(const ir::KernelProgram& forward, Partition& p);

/// KILN_INJECT_BUG=gradient (tests only): the first gradient comes out doubled, a planted wrong
/// backward that KILN_CHECK and the fuzzer's training mode must catch.
void plant_gradient_bug(ir::Graph& backward);

/// One line per saved or recomputed value, for kiln.explain.
std::string describe(const ir::Graph& joint, const Partition& p);

}  // namespace kiln::passes
