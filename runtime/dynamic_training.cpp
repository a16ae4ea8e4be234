/// \file dynamic_training.cpp
/// Dynamic training steps (see dynamic_training.h). Each half is a dynamic program's kernel
/// template (Note [Kernel templates] in ir/kernel_template.cpp); what is particular to training
/// is that a size's halves come from partitioning that size's joint graph, and that the
/// backward's saved inputs take the layouts its forward stores them in, as
/// compile_cpu_training does.
#include "runtime/dynamic_training.h"

#include <fmt/format.h>

#include <chrono>

#include "passes/pipeline.h"
#include "runtime/compile_training.h"
#include "support/error.h"

namespace kiln::runtime {

DynamicCpuTraining::Lowered DynamicCpuTraining::lower(const ir::Graph& joint, std::vector<std::string>* timings) const {
  Lowered out;
  out.partition = passes::partition_joint_graph(joint, spec_, popts_);
  passes::PassOptions popts = passes_;
  popts.timings = timings;
  out.forward = passes::run_pipeline(out.partition.forward, popts);
  passes::adopt_saved_layouts(out.forward, out.partition);
  if (plant_gradient_bug_) passes::plant_gradient_bug(out.partition.backward);
  out.backward = passes::run_pipeline(out.partition.backward, popts);
  return out;
}

DynamicCpuTraining::DynamicCpuTraining(GraphTemplate joint, passes::JointSpec spec, passes::PartitionOptions popts,
                                       const CpuCompileOptions& opts)
    : t_(std::move(joint)), spec_(std::move(spec)), popts_(popts) {
  auto t0 = std::chrono::steady_clock::now();
  CpuCompileOptions half = training_half_options(opts);
  passes_ = half.passes;
  passes_.dump = nullptr;  // per-size lowerings log nothing
  passes_.log_ir = passes_.log_fusion = false;
  plant_gradient_bug_ = opts.passes.inject_bug == "gradient";
  Lowered lowered[2];
  for (int k = 0; k < 2; ++k) {
    ir::Graph g = t_.at(t_.seen[k]);
    std::string why;
    KILN_UNSUPPORTED_IF(!sizes_hold(g, &why), "the joint graph is not valid at s = {}: {}", t_.seen[k], why);
    lowered[k] = lower(g, k == 1 ? &timings_ : nullptr);
  }
  auto compile = [&](const char* what, const ir::KernelProgram& a, const ir::KernelProgram& b) {
    try {
      return std::make_unique<TemplateCode>(a, b, half, &timings_);
    } catch (const Unsupported& e) {
      throw Unsupported(fmt::format("the {} lowerings at {} and {} differ: {}", what, t_.seen[0], t_.seen[1], e.what()));
    }
  };
  forward_ = compile("forward", lowered[0].forward, lowered[1].forward);
  backward_ = compile("backward", lowered[0].backward, lowered[1].backward);
  describe_ = fmt::format("s = {} (seen {} and {}); one training step for the sizes {} <= s <= {} whose lowerings "
                          "match its templates; forward {} and backward {} kernel parameters",
                          t_.source, t_.seen[0], t_.seen[1], kMinSymbol, max_symbol(),
                          forward_->kernel_template().params.size(), backward_->kernel_template().params.size());
  compile_ms_ = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

std::optional<TrainingInstance> DynamicCpuTraining::at(int64_t s, std::string* why) const {
  std::optional<ir::Graph> joint = t_.valid_at(s, why);
  if (!joint) return std::nullopt;
  Lowered l;
  try {
    l = lower(*joint, nullptr);
  } catch (const Unsupported& e) {
    *why = e.what();
    return std::nullopt;
  }
  TrainingInstance out;
  out.forward = forward_->instance(std::move(l.forward), why);
  if (!out.forward) return std::nullopt;
  out.backward = backward_->instance(std::move(l.backward), why);
  if (!out.backward) return std::nullopt;
  // Intermediates are freed after each half, as compile_cpu_training's are.
  out.forward->set_keep_arenas(false);
  out.backward->set_keep_arenas(false);
  out.partition = std::move(l.partition);
  return out;
}

}  // namespace kiln::runtime
