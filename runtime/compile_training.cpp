/// \file compile_training.cpp
/// The training compile driver (see compile_training.h).
#include "runtime/compile_training.h"

#include "ir/graph_editor.h"
#include "runtime/debug_dump.h"
#include "support/error.h"

namespace kiln::runtime {

void adopt_saved_layouts(const ir::KernelProgram& forward, passes::Partition& p) {
  for (size_t k = 0; k < p.saved.size(); ++k) {
    const ir::OutputSpec& o = forward.outputs.at(p.saved_positions[k]);
    KILN_CHECK(o.kind == ir::OutputSpec::Kind::Buffer, "saved value {} is not a buffer of the forward", k);
    ir::Node& in = p.backward.nodes.at(k);
    KILN_CHECK(in.op == ir::OpKind::Input && in.attrs.int_value == static_cast<int64_t>(k),
               "backward input {} is not saved value {}", k, k);
    in.strides = forward.buffers.at(o.index).strides;
  }
}

namespace {
/// KILN_INJECT_BUG=gradient (tests only): the first gradient comes out doubled, a planted wrong
/// backward that KILN_CHECK and the fuzzer's training mode must catch.
void plant_gradient_bug(ir::Graph& backward) {
  if (backward.outputs.empty()) return;
  ir::GraphEditor e(backward);
  int g = backward.outputs[0];
  backward.outputs[0] = e.binary(ir::OpKind::Mul, g, e.constant(2.0, backward.nodes[g].dtype));
}
}  // namespace

CompiledCpuTraining compile_cpu_training(const ir::Graph& joint, const passes::JointSpec& spec,
                                         const passes::PartitionOptions& popts, const CpuCompileOptions& opts) {
  CompiledCpuTraining out;
  out.joint_text = ir::print(joint);
  if (opts.passes.verify) ir::verify(joint);
  out.partition = passes::partition_joint_graph(joint, spec, popts);
  DebugDump dump{opts.debug_dir, ""};
  dump.write("joint_graph.txt", out.joint_text);
  dump.write("partition.txt", passes::describe(joint, out.partition));
  CpuCompileOptions half = opts;
  if (!opts.debug_dir.empty()) half.debug_dir = opts.debug_dir + "/forward";
  out.forward = compile_cpu_graph(out.partition.forward, half);
  adopt_saved_layouts(out.forward.program->program(), out.partition);
  if (opts.passes.inject_bug == "gradient") plant_gradient_bug(out.partition.backward);
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
