/// \file graph.h
/// The tensor-level graph IR: SSA values in topological order, one node per value.
///
/// A node has an op kind from the closed table in ops.def, its input values (earlier node ids),
/// small typed attributes and its result type (dtype and concrete sizes). Inputs carry the
/// strides they were captured with; any node may carry a preferred output layout (the strides
/// eager PyTorch gave the value on the capturing call), which lowering follows for outputs.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "ir/dtype.h"

namespace kiln::ir {

enum class OpKind : uint16_t {
#define KILN_OP(e, n, c, a) e,
#include "ir/ops.def"
#undef KILN_OP
};

enum class OpCategory : uint8_t {
  Leaf, Unary, Binary, Ternary, Cast, Composite, CompositeReduce, Movement, Reduction, Extern, Assemble,
  Contraction
};

const char* op_name(OpKind k);
OpCategory op_category(OpKind k);
int op_arity(OpKind k);  ///< -1 when variadic
/// Looks an op up by its table name; returns false when there is none.
bool op_from_name(const std::string& name, OpKind* out);
bool is_pointwise(OpKind k);  ///< Unary, Binary, Ternary, Cast or Composite

using Sizes = std::vector<int64_t>;

/// Small typed attributes. Their meaning per op is documented in ops.def.
struct Attrs {
  std::vector<int64_t> ints;
  std::vector<double> floats;
  DType dtype = DType::Float32;  ///< Cast target; Constant dtype
  int64_t int_value = 0;         ///< Constant value when its dtype is integral or bool
  double float_value = 0;        ///< Constant value when its dtype is floating
  bool operator==(const Attrs& o) const;
};

struct Node {
  OpKind op;
  std::vector<int> inputs;
  Attrs attrs;
  DType dtype;
  Sizes sizes;
  Sizes strides;  ///< Input: captured strides. Others: preferred layout, or empty (contiguous).
  int64_t numel() const;
};

/// How a scatter's source element meets the element it lands on (attrs.ints[1] of IndexCopy
/// and Scatter). Replace: with duplicate indices one of the sources lands, as eager documents;
/// the others fold every source in, in index order.
enum class ScatterCombine : int64_t { Replace = 0, Add = 1, Multiply = 2, Max = 3, Min = 4 };

/// Fallback nodes: attrs.ints[0] holds these traits of the eager op (set by the builder from
/// the ATen op's name, read by passes/layout).
constexpr int64_t kFallbackPrefersChannelsLast = 1;  ///< a 2-D convolution (oneDNN: NHWC is native)
/// A convolution that is not transposed: inputs are (input, weight[, bias]), and output channel
/// c (dim 1) reads only weight[c] and bias[c] (passes/fold_batch_norm).
constexpr int64_t kFallbackConvolution = 2;
/// A 2-D convolution's backward (aten.convolution_backward): inputs are (grad_output, input,
/// weight); with the first two channels-last, oneDNN runs it NHWC and returns NHWC results.
constexpr int64_t kFallbackConvolutionBackward = 4;

struct Graph {
  std::vector<Node> nodes;     ///< topological order; a node's id is its index
  std::vector<int> outputs;    ///< node ids, in the order the function returns them
  /// Per output (or empty): the call leaf whose new value it is (an in-place write the caller
  /// copies back), else -1, or kFreshOutput. Lets lowering write such a value into the argument
  /// itself, and return a view of an argument only where eager's result is one.
  std::vector<int> output_leaf;
  std::vector<int> input_ids;  ///< node ids of Input nodes, in argument order
};

/// Graph::output_leaf of an output that eager made as a new tensor (x.floor() of an integer x,
/// x + 0): even where kiln's value is a view of an argument, it is returned as a copy, since an
/// alias would see later writes to the argument (and the argument writes to it).
constexpr int kFreshOutput = -2;

/// Graph::output_leaf of a value a training step's forward saves for its backward
/// (passes/partition_joint): a buffer of its own, as kFreshOutput, whose layout nobody but the
/// backward sees (the backward reads it in whatever layout the forward stores it).
constexpr int kSavedValue = -3;

/// Contiguous (row-major) strides for `sizes`.
Sizes contiguous_strides(const Sizes& sizes);
int64_t numel(const Sizes& sizes);

/// True for an integer division or modulo whose divisor may be zero, and for a gather of a
/// user's index: eager raises (ZeroDivisionError, IndexError) even when the result is unused or
/// read in part, so such a node is never dead code and is computed whole.
bool may_raise(const Graph& g, const Node& n);

/// A stable textual form, one node per line: `%3 = add(%1, %2) : float32[4, 5]`.
std::string print(const Graph& g);
/// Checks well-formedness (topological order, arity, operand dtypes, view bounds); throws
/// InternalError naming the first broken node.
void verify(const Graph& g);
/// Structural hash: equal for graphs that print the same.
uint64_t structural_hash(const Graph& g);

}  // namespace kiln::ir
