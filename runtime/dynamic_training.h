/// \file dynamic_training.h
/// One compiled training step for every value of a size symbol: the joint forward+backward
/// graph of two captures fitted to a graph template (runtime/dynamic_program.h), each half
/// compiled once from the kernel template of its lowerings at the two captured sizes.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "passes/partition_joint.h"
#include "runtime/dynamic_program.h"

namespace kiln::runtime {

/// A training step at one size: its partition and both halves on the shared machine code.
struct TrainingInstance {
  passes::Partition partition;
  std::shared_ptr<CompiledProgram> forward, backward;
};

class DynamicCpuTraining {
 public:
  /// Partitions and lowers the joint graph at its two captured sizes and compiles each half's
  /// kernel template once. Throws Unsupported with the reason when the lowerings differ beyond
  /// constants and loop counts.
  DynamicCpuTraining(GraphTemplate joint, passes::JointSpec spec, passes::PartitionOptions popts,
                     const CpuCompileOptions& opts);

  /// The step at `s`: the joint graph there, partitioned and lowered again, each half on its
  /// template's code; nothing, with `why` set, when the graph is not valid at `s` or a half's
  /// lowering does not match its template (the caller specialises on that size).
  std::optional<TrainingInstance> at(int64_t s, std::string* why) const;

  const GraphTemplate& graph_template() const { return t_; }
  const std::vector<std::string>& timings() const { return timings_; }
  double compile_ms() const { return compile_ms_; }
  const std::string& describe() const { return describe_; }

 private:
  struct Lowered {
    passes::Partition partition;
    ir::KernelProgram forward, backward;
  };
  Lowered lower(const ir::Graph& joint, std::vector<std::string>* timings) const;

  GraphTemplate t_;
  passes::JointSpec spec_;
  passes::PartitionOptions popts_;
  passes::PassOptions passes_;
  bool plant_gradient_bug_ = false;  // KILN_INJECT_BUG=gradient, as compile_cpu_training
  std::unique_ptr<TemplateCode> forward_, backward_;
  std::vector<std::string> timings_;
  double compile_ms_ = 0;
  std::string describe_;
};

}  // namespace kiln::runtime
