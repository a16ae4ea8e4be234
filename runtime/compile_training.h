/// \file compile_training.h
/// The training compile driver: a joint forward+backward graph -> partition (which forward
/// values are saved, which recomputed) -> a compiled forward and a compiled backward program.
#pragma once

#include "passes/partition_joint.h"
#include "runtime/compile_cpu.h"

namespace kiln::runtime {

struct CompiledCpuTraining {
  passes::Partition partition;
  CompiledCpuGraph forward, backward;
  std::string joint_text;  ///< the joint graph, printed (kiln.explain)
};

/// The options both halves of a training step compile with (Note [Training layouts]).
CpuCompileOptions training_half_options(const CpuCompileOptions& opts);

/// Partitions `joint` and compiles both halves for the CPU. The backward's saved-value inputs
/// take the layouts the compiled forward stores them in. Debug artifacts go to
/// `opts.debug_dir`/forward and /backward, with joint_graph.txt and partition.txt beside them.
CompiledCpuTraining compile_cpu_training(const ir::Graph& joint, const passes::JointSpec& spec,
                                         const passes::PartitionOptions& popts, const CpuCompileOptions& opts);

}  // namespace kiln::runtime
