/// \file graph_builder.h
/// What the Python tracer drives while it runs a function eagerly: it reports each ATen op it
/// saw, with operands that are graph values or Python numbers, and the builder records it in
/// primitive form. Type promotion is made explicit here (casts and typed constants are
/// inserted), so every later pass sees operands of one dtype. The tracer then checks the
/// builder's inferred dtype and sizes against the real result; any disagreement stops the
/// capture (Unsupported), so a graph never encodes semantics that differ from eager.
#pragma once

#include <string>
#include <vector>

#include "ir/graph_editor.h"

namespace kiln::capture {

/// One operand of a traced op: a graph value or a Python number.
struct Operand {
  enum class Kind { Value, Float, Int, Bool } kind = Kind::Value;
  int value = -1;
  double f = 0;
  int64_t i = 0;
  static Operand of_value(int v) { return {Kind::Value, v}; }
};

class GraphBuilder {
 public:
  GraphBuilder() : editor_(graph_) {}
  /// Sizes computed by rules that are not affine while recording (GraphEditor::note_size_rule).
  const std::vector<std::pair<int64_t, int64_t>>& size_rules() const { return editor_.size_rules(); }
  /// GraphEditor::note_size_rule, for a rule applied by the Python tracer (a split's pieces).
  void note_size_rule(int64_t in, int64_t out) { editor_.note_size_rule(in, out); }

  /// A tensor argument (or captured tensor) in position `arg_index` of the call's leaves.
  int add_input(ir::DType dtype, const ir::Sizes& sizes, const ir::Sizes& strides, int arg_index);
  /// Records `op` (an ops.def name, or one of the capture-level names documented in
  /// graph_builder.cpp) and returns the value id of its result.
  int call(const std::string& op, const std::vector<Operand>& args, const ir::Attrs& attrs);
  /// An op run eagerly inside the program (entry `table_index` of the Python-side fallback
  /// table) on tensor operands `inputs`; its results have the given dtypes, sizes and strides.
  /// Returns one value id per result. `aten_name` ("aten.convolution.default") sets the op's
  /// traits that passes act on (see kFallback* in ir/graph.h); `traits` adds those only the
  /// caller can tell from the op's arguments (kFallbackConvolution: not transposed).
  std::vector<int> add_fallback(int table_index, const std::vector<int>& inputs,
                                const std::vector<ir::DType>& dtypes, const std::vector<ir::Sizes>& sizes,
                                const std::vector<ir::Sizes>& strides, const std::string& aten_name = "",
                                int64_t traits = 0);
  /// Compares the inferred type of `id` with the real result's; throws Unsupported if they differ.
  void check(int id, ir::DType dtype, const ir::Sizes& sizes) const;
  /// Records the strides eager gave the value (followed when the value is an output).
  void set_layout(int id, const ir::Sizes& strides);
  void set_outputs(const std::vector<int>& ids);
  /// Per output: the call leaf it is the new value of (written in place by the function), or -1.
  void set_output_leaves(const std::vector<int>& leaves) { graph_.output_leaf = leaves; }
  /// Sets which call leaf Input node `id` reads (for inputs whose position is known late).
  void set_input_index(int id, int index);
  void set_default_float(ir::DType t) { default_float_ = t; }
  const ir::Node& node(int id) const { return graph_.nodes.at(id); }
  const ir::Graph& graph() const { return graph_; }

 private:
  /// Pooling and upsampling (capture/window_ops.h); -1 when `name` is none of them.
  int window_op(const std::string& name, const std::vector<Operand>& args, const ir::Attrs& attrs);
  /// isinf and friends, lerp, addcmul, addcdiv, linspace (capture/pointwise_ops.cpp); -1 when
  /// `name` is none of them.
  int pointwise_op(const std::string& name, const std::vector<Operand>& args, const ir::Attrs& attrs);
  /// index_put with integer indices (capture/index_ops.cpp); -1 when `name` is not it.
  int index_op(const std::string& name, const std::vector<Operand>& args, const ir::Attrs& attrs);
  int value_of(const Operand& o, ir::DType t);
  ir::PromotionOperand promotion(const Operand& o) const;
  ir::DType promoted(const std::vector<Operand>& args) const;

  ir::Graph graph_;
  ir::GraphEditor editor_;
  ir::DType default_float_ = ir::DType::Float32;
};

}  // namespace kiln::capture
