/// \file dynamic_program.h
/// One compiled CPU program for every value of a size symbol (Note [Dynamic sizes]).
///
/// Two captures of one function at two sizes give a graph template: every integer of the graph
/// is a constant or an affine form of one symbol `s`. The template is lowered at the two
/// captured sizes; where the two kernel programs have one structure, their kernel template
/// (ir/kernel_template.h) is compiled once, and each size's own lowering runs on that code
/// when it matches the template.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "ir/graph.h"
#include "ir/kernel_template.h"
#include "runtime/compile_cpu.h"

namespace kiln::runtime {

/// base + coeff * s.
struct Affine {
  int64_t base = 0, coeff = 0;
  int64_t at(int64_t s) const { return base + coeff * s; }
  bool operator==(const Affine& o) const { return base == o.base && coeff == o.coeff; }
};

/// A captured graph whose integers are affine forms of one size symbol.
struct GraphTemplate {
  ir::Graph graph;              ///< the second capture
  std::vector<Affine> ints;     ///< per integer of the graph, in visit_graph_ints order
  int64_t seen[2] = {0, 0};     ///< the symbol's values at the two captures
  /// Per Input node: its leaf and the forms of its sizes and strides (what the guards check).
  struct InputForm {
    int leaf;
    std::vector<Affine> sizes, strides;
  };
  std::vector<InputForm> inputs;
  /// Int arguments that changed between the captures, each with its form (what the guards
  /// check): a Dynamo graph's size argument, a row count passed as an int.
  std::vector<std::pair<int, Affine>> values;
  std::string source;           ///< where the symbol was read first, e.g. "leaf 0 size(0)"

  /// The graph at `s`. Does not check that it is what a capture at `s` would give.
  ir::Graph at(int64_t s) const;
  /// The graph at `s` when `s` is in kMinSymbol..max_symbol() and the graph there holds
  /// (sizes_hold); else nothing, with `why` set.
  std::optional<ir::Graph> valid_at(int64_t s, std::string* why) const;
};

/// An int argument that changed between the captures: (leaf, value in a, value in b).
struct ChangedInt {
  int leaf;
  int64_t a, b;
};

/// Fits a template to two captures of one function. The symbol is the first input size that
/// changed, else the first changed int argument. Throws Unsupported naming the first
/// difference no single symbol explains (another op, a float, a second size that changed
/// differently, a non-affine size).
/// `rules_a`/`rules_b`: the (input size, computed size) pairs of non-affine size rules each
/// capture applied (GraphEditor::size_rules); one whose input size changed is refused.
using SizeRules = std::vector<std::pair<int64_t, int64_t>>;
GraphTemplate fit_graph_template(const ir::Graph& a, const ir::Graph& b, const std::vector<ChangedInt>& ints = {},
                                 const SizeRules& rules_a = {}, const SizeRules& rules_b = {});

/// Whether the views of `g` stay inside their operands and every size is consistent with the
/// operands' (a slice clamped at one size is out of bounds at a smaller one); `why` says where.
bool sizes_hold(const ir::Graph& g, std::string* why);

/// The smallest and largest symbol value a dynamic program serves (0 and 1 stay specialised:
/// broadcasting depends on them; the largest keeps every affine form within int64).
constexpr int64_t kMinSymbol = 2;
int64_t max_symbol();

/// Machine code compiled once from the kernel template of two lowerings (ir/kernel_template.h),
/// and the programs of other lowerings that match it, which run on that code.
class TemplateCode {
 public:
  /// Makes the template of `a` and `b` and compiles it; throws Unsupported naming the first
  /// difference when they differ beyond constants and loop counts. Appends LLVM's timings.
  TemplateCode(const ir::KernelProgram& a, const ir::KernelProgram& b, const CpuCompileOptions& opts,
               std::vector<std::string>* timings);
  /// `p` as a program on the shared code (its own buffers, products and arena plan), or null
  /// with `why` set when `p` does not match the template.
  std::shared_ptr<CompiledProgram> instance(ir::KernelProgram p, std::string* why) const;
  const ir::KernelTemplate& kernel_template() const { return template_; }

 private:
  ir::KernelTemplate template_;
  std::shared_ptr<const cpu::CpuCode> code_;
  bool profile_ = false;
  std::shared_ptr<ArenaPool> arenas_ = std::make_shared<ArenaPool>();  // shared by the instances
};

/// "\n<indent>p0 (int64): 24 at s = 24, 32 at s = 32" per parameter of `t`.
std::string describe_params(const ir::KernelTemplate& t, const int64_t seen[2], const std::string& indent);

class DynamicCpuProgram {
 public:
  /// Lowers `t` at its two captured sizes and compiles their kernel template once. Throws
  /// Unsupported with the reason when the two lowerings differ beyond constants and loop
  /// counts.
  DynamicCpuProgram(GraphTemplate t, const CpuCompileOptions& opts);

  /// The program at `s` (its own lowering and arena plan, the shared machine code), or null
  /// with `why` set when the graph at `s` is not valid (a slice clamped at the captured sizes)
  /// or its lowering does not match the template.
  std::shared_ptr<CompiledProgram> at(int64_t s, std::string* why) const;

  /// The program for graph `g` when its lowering matches the template (a capture at a size
  /// the guards leave out), or null. At size 1 it never does: that lowering drops the loop.
  std::shared_ptr<CompiledProgram> for_graph(const ir::Graph& g, std::string* why) const;

  const GraphTemplate& graph_template() const { return t_; }
  const std::vector<std::string>& timings() const { return timings_; }
  double compile_ms() const { return compile_ms_; }
  /// The symbol, and each kernel parameter with its values at the captured sizes.
  const std::string& describe() const { return describe_; }

 private:
  ir::KernelProgram lower(const ir::Graph& g, std::vector<std::string>* timings) const;

  GraphTemplate t_;
  passes::PassOptions passes_;
  std::unique_ptr<TemplateCode> code_;
  std::vector<std::string> timings_;
  double compile_ms_ = 0;
  std::string describe_;
};

}  // namespace kiln::runtime
