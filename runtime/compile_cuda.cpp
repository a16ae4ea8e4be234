/// \file compile_cuda.cpp
/// The CUDA compile driver (see compile_cuda.h).
#include "runtime/compile_cuda.h"

#include "passes/pipeline.h"
#include "runtime/cuda_driver.h"
#include "runtime/debug_dump.h"
#include "support/config.h"

namespace kiln::runtime {

passes::PassOptions cuda_pass_options_from_knobs() {
  passes::PassOptions opts;
  opts.verify = knob_bool("verify");
  opts.log_ir = log_enabled("ir");
  opts.log_fusion = log_enabled("fusion");
  opts.reuse_reduced_values = false;  // recomputing beats a round trip through HBM
  opts.column_reductions = false;     // a CPU vector layout (Note [Column reductions])
  opts.gemm_epilogues = false;        // cuBLAS calls and kernels are launched apart
  opts.gemm_bias = knob_bool("cuda_bias_epilogue");  // cuBLASLt adds a row bias in its epilogue
  opts.inplace_argument_writes = false;  // CUDA flags failures only at the end of the program
  opts.output_views = false;             // the CUDA runner returns buffers and arguments only
  opts.channels_last_convolutions = false;  // measured for oneDNN, not cuDNN
  opts.inject_bug = knob("inject_bug");
  return opts;
}

int cuda_default_arch(int device) {
  if (device >= 0 && cuda_available() && device < cuda_device_count()) return cuda_compute_capability(device);
  return 90;
}

std::shared_ptr<CudaProgram> compile_cuda_graph(const ir::Graph& g, int arch, bool want_cubin,
                                                const std::string& debug_dir) {
  ir::KernelProgram kp = passes::run_pipeline(g, cuda_pass_options_from_knobs());
  auto prog = std::make_shared<CudaProgram>(std::move(kp), arch, want_cubin);
  DebugDump dump{debug_dir, ""};
  for (const auto& k : prog->kernels()) {
    dump.write(k.name + ".cu", k.source);
    dump.write(k.name + ".ptx", k.ptx);
  }
  dump.write("loop_ir.txt", ir::print(prog->program()));
  return prog;
}

CompiledCudaTraining compile_cuda_training(const ir::Graph& joint, const passes::JointSpec& spec,
                                           const passes::PartitionOptions& popts, int arch, bool want_cubin,
                                           const std::string& debug_dir) {
  CompiledCudaTraining out;
  out.joint_text = ir::print(joint);
  out.partition = passes::partition_joint_graph(joint, spec, popts);
  DebugDump dump{debug_dir, ""};
  dump.write("joint_graph.txt", out.joint_text);
  dump.write("partition.txt", passes::describe(joint, out.partition));
  out.forward = compile_cuda_graph(out.partition.forward, arch, want_cubin, debug_dir.empty() ? "" : debug_dir + "/forward");
  passes::adopt_saved_layouts(out.forward->program(), out.partition);
  if (knob("inject_bug") == "gradient") passes::plant_gradient_bug(out.partition.backward);
  out.backward =
      compile_cuda_graph(out.partition.backward, arch, want_cubin, debug_dir.empty() ? "" : debug_dir + "/backward");
  return out;
}

}  // namespace kiln::runtime
