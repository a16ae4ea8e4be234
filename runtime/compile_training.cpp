/// \file compile_training.cpp
/// The training compile driver (see compile_training.h).
#include "runtime/compile_training.h"

#include "runtime/debug_dump.h"
#include "support/error.h"

namespace kiln::runtime {

CpuCompileOptions training_half_options(const CpuCompileOptions& opts) {
  CpuCompileOptions half = opts;
  // Note [Training layouts]: channels-last convolutions (passes/layout.h) are measured slower
  // in a training step: an NCHW argument read both by the first convolution and by a residual
  // add mixes layouts in the batch-norm kernels, whose per-channel reductions then gather
  // (resnet_block: 0.95x eager with channels-last, 1.03x in eager's layout, A/B in one process,
  // 2 threads). Both halves keep eager's layouts; the channels-last support for saved values
  // (kSavedValue) and convolution_backward stays for a pass that chooses per program.
  half.passes.channels_last_convolutions = false;
  return half;
}

CompiledCpuTraining compile_cpu_training(const ir::Graph& joint, const passes::JointSpec& spec,
                                         const passes::PartitionOptions& popts, const CpuCompileOptions& opts) {
  CompiledCpuTraining out;
  out.joint_text = ir::print(joint);
  if (opts.passes.verify) ir::verify(joint);
  out.partition = passes::partition_joint_graph(joint, spec, popts);
  DebugDump dump{opts.debug_dir, ""};
  dump.write("joint_graph.txt", out.joint_text);
  dump.write("partition.txt", passes::describe(joint, out.partition));
  CpuCompileOptions half = training_half_options(opts);
  if (!opts.debug_dir.empty()) half.debug_dir = opts.debug_dir + "/forward";
  out.forward = compile_cpu_graph(out.partition.forward, half);
  passes::adopt_saved_layouts(out.forward.program->program(), out.partition);
  if (opts.passes.inject_bug == "gradient") passes::plant_gradient_bug(out.partition.backward);
  if (!opts.debug_dir.empty()) half.debug_dir = opts.debug_dir + "/backward";
  out.backward = compile_cpu_graph(out.partition.backward, half);
  // Intermediates are freed after each half, as eager frees them: the forward's must not stay
  // held through the backward (peak memory), nor the backward's until the next step.
  out.forward.program->set_keep_arenas(false);
  out.backward.program->set_keep_arenas(false);
  if (out.forward.dump_error.empty()) out.forward.dump_error = dump.error;
  return out;
}

}  // namespace kiln::runtime
