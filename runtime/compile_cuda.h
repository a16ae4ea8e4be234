/// \file compile_cuda.h
/// The CUDA compile driver: a captured graph -> the pass pipeline (with the CUDA options) ->
/// CUDA source -> NVRTC -> a CudaProgram. Needs no GPU unless `want_cubin` is set.
#pragma once

#include <memory>
#include <string>

#include "ir/graph.h"
#include "passes/partition_joint.h"
#include "passes/pass.h"
#include "runtime/cuda_program.h"

namespace kiln::runtime {

/// The pass options of the CUDA pipeline (what differs from the CPU's, and why, is beside each
/// field), with the KILN_* knobs applied.
passes::PassOptions cuda_pass_options_from_knobs();

/// Compute capability to compile for: the device's when there is one, else 90 (sm_90).
int cuda_default_arch(int device);

/// Compiles `g` for compute capability `arch` (PTX; also a cubin when `want_cubin`, which needs
/// the driver). Writes each kernel's .cu and .ptx and the loop IR into `debug_dir` when set.
std::shared_ptr<CudaProgram> compile_cuda_graph(const ir::Graph& g, int arch, bool want_cubin,
                                                const std::string& debug_dir);

/// A joint forward+backward graph partitioned (passes/partition_joint.h) and compiled for CUDA:
/// the backward reads saved values in the layouts the compiled forward stores them in.
struct CompiledCudaTraining {
  passes::Partition partition;
  std::shared_ptr<CudaProgram> forward, backward;
  std::string joint_text;
};
CompiledCudaTraining compile_cuda_training(const ir::Graph& joint, const passes::JointSpec& spec,
                                           const passes::PartitionOptions& popts, int arch, bool want_cubin,
                                           const std::string& debug_dir);

}  // namespace kiln::runtime
