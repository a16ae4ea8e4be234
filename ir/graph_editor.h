/// \file graph_editor.h
/// Appends well-typed nodes to a Graph: each constructor infers the result's dtype and sizes
/// (broadcasting, view shapes, reduced shapes) and checks its operands. Used by capture (the
/// GraphBuilder the tracer drives) and by every graph pass that creates nodes.
#pragma once

#include "ir/graph.h"

namespace kiln::ir {

/// Broadcasts two shapes as torch does; throws Unsupported when they are incompatible.
Sizes broadcast_shapes(const Sizes& a, const Sizes& b);

class GraphEditor {
 public:
  explicit GraphEditor(Graph& g) : g_(g) {}

  /// Records that a size `out` was computed from an input size `in` by a rule that is not
  /// affine (a pooled or resampled length, an adaptive window, a clamped slice bound, a split's
  /// pieces): a dynamic program may not let `in` follow its symbol (Note [Dynamic sizes] in
  /// runtime/dynamic_program.cpp).
  void note_size_rule(int64_t in, int64_t out) { size_rules_.emplace_back(in, out); }
  const std::vector<std::pair<int64_t, int64_t>>& size_rules() const { return size_rules_; }

  int input(DType dtype, const Sizes& sizes, const Sizes& strides, int arg_index);
  int float_constant(double v, DType dtype);
  int int_constant(int64_t v, DType dtype);
  /// Constant of any dtype from a double (integral dtypes truncate toward zero).
  int constant(double v, DType dtype);

  /// Unary primitive; the operand dtype is kept (IsNan and LogicalNot give bool).
  int unary(OpKind op, int x);
  /// Binary primitive over operands of one dtype; comparisons and logical ops give bool.
  int binary(OpKind op, int a, int b);
  int where(int cond, int a, int b);
  /// a * b + c rounded once (operands of one float dtype, broadcast).
  int fma(int a, int b, int c);
  int cast(int x, DType dtype);
  /// Composite pointwise op; the result has the first operand's dtype and the broadcast shape.
  int composite(OpKind op, const std::vector<int>& xs, const Attrs& attrs);

  int reshape(int x, const Sizes& sizes);
  int permute(int x, const std::vector<int64_t>& perm);
  int expand(int x, const Sizes& sizes);
  /// Slice along `dim` with torch's clamping of start/end (negative values count from the end).
  int slice(int x, int64_t dim, int64_t start, int64_t end, int64_t step);
  /// Reduction over `dims` (any order, negative allowed; empty: all dims).
  int reduce(OpKind op, int x, std::vector<int64_t> dims, bool keepdim);
  /// Composite reduction / normalisation (see ops.def for the attribute layout). Reduction-like
  /// ops (mean, var, std, logsumexp, norm) take `dims` and keepdim like `reduce`; the others
  /// keep their input's shape.
  int composite_reduce(OpKind op, const std::vector<int>& xs, Attrs attrs);

  /// Concatenation along `dim` (torch.cat's shape rules; all operands of one dtype).
  int concat(const std::vector<int>& xs, int64_t dim);
  /// torch.gather: out[i] = x[i with dim replaced by index[i]]; `wrap` admits negative indices.
  /// `in_range`: the index is in range by construction (pooling's window taps), so the gather
  /// cannot raise (see ir::may_raise).
  int gather(int x, int index, int64_t dim, bool wrap, bool in_range = false);
  /// Constant padding: `pad` holds (low, high) per dim (non-negative), filled with `value`.
  int pad(int x, const std::vector<int64_t>& pad, double value);
  int flip(int x, std::vector<int64_t> dims);
  /// `base` with the slice [start:end:step] along `dim` replaced by `src` (a write through a view,
  /// made functional).
  int slice_scatter(int base, int src, int64_t dim, int64_t start, int64_t end, int64_t step);
  /// torch.index_copy / index_add: `base` with base[.., index[i], ..] (combine)= src[.., i, ..]
  /// along `dim` (index: 1-D int64; src: base's sizes with index's length at dim, base's dtype).
  int index_copy(int base, int index, int src, int64_t dim, ScatterCombine combine = ScatterCombine::Replace);
  /// torch.scatter / scatter_add / scatter_reduce(include_self): `base` with
  /// base[i with dim replaced by index[i]] (combine)= src[i] for each i in index (index: int64 of
  /// base's rank, no larger than src, nor than base off `dim`; src: base's rank and dtype, or a
  /// 0-dim value used for every element).
  int scatter(int base, int index, int src, int64_t dim, ScatterCombine combine);
  /// torch.cumsum (combine Add) / cumprod (Multiply) of `x` along `dim`, with result `dtype`.
  int scan(int x, int64_t dim, ScatterCombine combine, DType dtype);
  /// Matrix product of a [batch..., M, K] and b [batch..., K, N] (equal batch sizes, one float
  /// dtype): [batch..., M, N]. `zero_start`: a sum of one product is +0 where the product is
  /// -0 (eager's bmm adds to a zeroed accumulator; its mm does not), see ops.def.
  int matmul(int a, int b, bool zero_start = false);
  /// The index along `dim` of a tensor of `sizes`, in `dtype`.
  int iota(const Sizes& sizes, int64_t dim, DType dtype);

  /// Appends a fully described node after checking its inputs exist.
  int append(Node n);
  const Node& node(int id) const { return g_.nodes[id]; }
  Graph& graph() { return g_; }

 private:
  Graph& g_;
  std::vector<std::pair<int64_t, int64_t>> size_rules_;
  /// A slice's bounds of a dim of `n` as Python takes them, noting a clamp as a size rule.
  void clamp_slice(int64_t n, int64_t* start, int64_t* end);
};

}  // namespace kiln::ir
