/// \file graph_editor.cpp
/// Node constructors with dtype and shape inference.
#include "ir/graph_editor.h"

#include <algorithm>
#include <cmath>

#include "support/error.h"

namespace kiln::ir {

Sizes broadcast_shapes(const Sizes& a, const Sizes& b) {
  size_t n = std::max(a.size(), b.size());
  Sizes out(n);
  for (size_t i = 0; i < n; ++i) {
    int64_t x = i < n - a.size() ? 1 : a[i - (n - a.size())];
    int64_t y = i < n - b.size() ? 1 : b[i - (n - b.size())];
    KILN_UNSUPPORTED_IF(x != y && x != 1 && y != 1, "shapes do not broadcast ({} vs {})", x, y);
    out[i] = x == 1 ? y : x;
  }
  return out;
}

int GraphEditor::append(Node n) {
  for (int in : n.inputs)
    KILN_CHECK(in >= 0 && static_cast<size_t>(in) < g_.nodes.size(), "input %{} does not exist", in);
  g_.nodes.push_back(std::move(n));
  return static_cast<int>(g_.nodes.size()) - 1;
}

int GraphEditor::input(DType dtype, const Sizes& sizes, const Sizes& strides, int arg_index) {
  Node n{OpKind::Input, {}, {}, dtype, sizes, strides};
  n.attrs.int_value = arg_index;
  int id = append(std::move(n));
  g_.input_ids.push_back(id);
  return id;
}

int GraphEditor::float_constant(double v, DType dtype) {
  Node n{OpKind::Constant, {}, {}, dtype, {}, {}};
  n.attrs.dtype = dtype;
  n.attrs.float_value = v;
  return append(std::move(n));
}

int GraphEditor::int_constant(int64_t v, DType dtype) {
  Node n{OpKind::Constant, {}, {}, dtype, {}, {}};
  n.attrs.dtype = dtype;
  n.attrs.int_value = dtype == DType::Bool ? (v != 0) : v;
  return append(std::move(n));
}

int GraphEditor::constant(double v, DType dtype) {
  if (is_float(dtype)) return float_constant(v, dtype);
  if (dtype == DType::Bool) return int_constant(v != 0, dtype);
  return int_constant(static_cast<int64_t>(std::trunc(v)), dtype);
}

int GraphEditor::unary(OpKind op, int x) {
  KILN_CHECK(op_category(op) == OpCategory::Unary, "{} is not unary", op_name(op));
  DType t = (op == OpKind::IsNan || op == OpKind::LogicalNot) ? DType::Bool : node(x).dtype;
  return append(Node{op, {x}, {}, t, node(x).sizes, {}});
}

int GraphEditor::binary(OpKind op, int a, int b) {
  KILN_CHECK(op_category(op) == OpCategory::Binary, "{} is not binary", op_name(op));
  KILN_CHECK(node(a).dtype == node(b).dtype, "{} operands {} and {}", op_name(op),
             dtype_name(node(a).dtype), dtype_name(node(b).dtype));
  bool to_bool = op == OpKind::Eq || op == OpKind::Ne || op == OpKind::Lt || op == OpKind::Le ||
                 op == OpKind::Gt || op == OpKind::Ge || op == OpKind::LogicalAnd ||
                 op == OpKind::LogicalOr || op == OpKind::LogicalXor;
  Sizes s = broadcast_shapes(node(a).sizes, node(b).sizes);
  return append(Node{op, {a, b}, {}, to_bool ? DType::Bool : node(a).dtype, s, {}});
}

int GraphEditor::where(int cond, int a, int b) {
  KILN_CHECK(node(cond).dtype == DType::Bool, "where condition must be bool");
  KILN_CHECK(node(a).dtype == node(b).dtype, "where branches differ in dtype");
  Sizes s = broadcast_shapes(broadcast_shapes(node(cond).sizes, node(a).sizes), node(b).sizes);
  return append(Node{OpKind::Where, {cond, a, b}, {}, node(a).dtype, s, {}});
}

int GraphEditor::fma(int a, int b, int c) {
  KILN_CHECK(is_float(node(a).dtype) && node(a).dtype == node(b).dtype && node(a).dtype == node(c).dtype,
             "fma operands must share one float dtype");
  Sizes s = broadcast_shapes(broadcast_shapes(node(a).sizes, node(b).sizes), node(c).sizes);
  return append(Node{OpKind::Fma, {a, b, c}, {}, node(a).dtype, s, {}});
}

int GraphEditor::cast(int x, DType dtype) {
  if (node(x).dtype == dtype) return x;
  Node n{OpKind::Cast, {x}, {}, dtype, node(x).sizes, {}};
  n.attrs.dtype = dtype;
  return append(std::move(n));
}

int GraphEditor::composite(OpKind op, const std::vector<int>& xs, const Attrs& attrs) {
  KILN_CHECK(op_category(op) == OpCategory::Composite, "{} is not composite", op_name(op));
  Sizes s = node(xs[0]).sizes;
  for (size_t i = 1; i < xs.size(); ++i) s = broadcast_shapes(s, node(xs[i]).sizes);
  return append(Node{op, xs, attrs, node(xs[0]).dtype, s, {}});
}

int GraphEditor::reshape(int x, const Sizes& sizes) {
  KILN_UNSUPPORTED_IF(numel(sizes) != node(x).numel(), "reshape of {} elements to {}",
                      node(x).numel(), numel(sizes));
  if (sizes == node(x).sizes) return x;
  Node n{OpKind::Reshape, {x}, {}, node(x).dtype, sizes, {}};
  n.attrs.ints = sizes;
  return append(std::move(n));
}

int GraphEditor::permute(int x, const std::vector<int64_t>& perm_in) {
  const Sizes& in = node(x).sizes;
  int64_t r = static_cast<int64_t>(in.size());
  KILN_UNSUPPORTED_IF(static_cast<int64_t>(perm_in.size()) != r, "permute rank mismatch");
  std::vector<int64_t> perm(perm_in);
  std::vector<bool> seen(r, false);
  Sizes out(r);
  bool identity = true;
  for (int64_t i = 0; i < r; ++i) {
    if (perm[i] < 0) perm[i] += r;
    KILN_UNSUPPORTED_IF(perm[i] < 0 || perm[i] >= r || seen[perm[i]], "bad permutation");
    seen[perm[i]] = true;
    out[i] = in[perm[i]];
    identity &= perm[i] == i;
  }
  if (identity) return x;
  Node n{OpKind::Permute, {x}, {}, node(x).dtype, out, {}};
  n.attrs.ints = perm;
  return append(std::move(n));
}

int GraphEditor::expand(int x, const Sizes& sizes) {
  const Sizes& in = node(x).sizes;
  KILN_UNSUPPORTED_IF(sizes.size() < in.size(), "expand to a lower rank");
  size_t off = sizes.size() - in.size();
  for (size_t i = 0; i < in.size(); ++i)
    KILN_UNSUPPORTED_IF(in[i] != 1 && in[i] != sizes[i + off], "expand of size {} to {}", in[i], sizes[i + off]);
  if (sizes == in) return x;
  Node n{OpKind::Expand, {x}, {}, node(x).dtype, sizes, {}};
  n.attrs.ints = sizes;
  return append(std::move(n));
}

void GraphEditor::clamp_slice(int64_t n, int64_t* start, int64_t* end) {
  // Python's bounds: negative ones count from the end, and both clamp to [0, n] (end to
  // [start, n]). Counting from the end (s - 3) and "to the end" (INT64_MAX) are affine in n;
  // a clamp is not (x[:3] is all of x at 2 and 3 rows, three rows at 4), so it is noted.
  int64_t s0 = *start < 0 ? *start + n : *start, e0 = *end < 0 ? *end + n : *end;
  *start = std::clamp<int64_t>(s0, 0, n);
  *end = std::clamp<int64_t>(e0, *start, n);
  bool to_the_end = *end == n && e0 >= INT64_MAX / 2;
  if (*start != s0 || (*end != e0 && !to_the_end)) note_size_rule(n, *end - *start);
}

int GraphEditor::slice(int x, int64_t dim, int64_t start, int64_t end, int64_t step) {
  const Sizes& in = node(x).sizes;
  int64_t r = static_cast<int64_t>(in.size());
  if (dim < 0) dim += r;
  KILN_UNSUPPORTED_IF(dim < 0 || dim >= r, "slice dim out of range");
  KILN_UNSUPPORTED_IF(step <= 0, "slice step must be positive");
  int64_t n = in[dim];
  clamp_slice(n, &start, &end);
  if (start == 0 && end == n && step == 1) return x;
  Sizes out = in;
  out[dim] = (end - start + step - 1) / step;
  Node node_{OpKind::Slice, {x}, {}, node(x).dtype, out, {}};
  node_.attrs.ints = {dim, start, end, step};
  return append(std::move(node_));
}

int GraphEditor::concat(const std::vector<int>& xs, int64_t dim) {
  KILN_UNSUPPORTED_IF(xs.empty(), "concat of nothing");
  Sizes out = node(xs[0]).sizes;
  int64_t r = static_cast<int64_t>(out.size());
  if (dim < 0) dim += r;
  KILN_UNSUPPORTED_IF(dim < 0 || dim >= r, "concat dim out of range");
  out[dim] = 0;
  for (int x : xs) {
    const Node& n = node(x);
    KILN_UNSUPPORTED_IF(n.sizes.size() != static_cast<size_t>(r) || n.dtype != node(xs[0]).dtype,
                        "concat operands differ in rank or dtype");
    for (int64_t d = 0; d < r; ++d)
      KILN_UNSUPPORTED_IF(d != dim && n.sizes[d] != node(xs[0]).sizes[d], "concat operands differ in size");
    out[dim] += n.sizes[dim];
  }
  if (xs.size() == 1) return xs[0];
  Node n{OpKind::Concat, xs, {}, node(xs[0]).dtype, out, {}};
  n.attrs.ints = {dim};
  return append(std::move(n));
}

int GraphEditor::gather(int x, int index, int64_t dim, bool wrap, bool in_range) {
  const Node& xn = node(x);
  const Node& in = node(index);
  int64_t r = static_cast<int64_t>(xn.sizes.size());
  if (dim < 0) dim += r;
  KILN_UNSUPPORTED_IF(dim < 0 || dim >= std::max<int64_t>(r, 1) || in.sizes.size() != xn.sizes.size(),
                      "gather: index rank or dim");
  KILN_UNSUPPORTED_IF(!is_int(in.dtype), "gather: index of dtype {}", dtype_name(in.dtype));
  Node n{OpKind::Gather, {x, index}, {}, xn.dtype, in.sizes, {}};
  n.attrs.ints = {dim, wrap ? 1 : 0, in_range ? 1 : 0};
  return append(std::move(n));
}

int GraphEditor::matmul(int a, int b, bool zero_start) {
  const Node& an = node(a);
  const Node& bn = node(b);
  size_t r = an.sizes.size();
  KILN_UNSUPPORTED_IF(r < 2 || bn.sizes.size() != r, "matmul of ranks {} and {}", r, bn.sizes.size());
  // Half products: cuBLASLt's (the CPU pipeline refuses half values at lowering).
  KILN_UNSUPPORTED_IF(an.dtype != bn.dtype || (an.dtype != DType::Float32 && an.dtype != DType::Float64 &&
                                               !is_half(an.dtype)),
                      "matmul of {} and {}", dtype_name(an.dtype), dtype_name(bn.dtype));
  KILN_UNSUPPORTED_IF(!std::equal(an.sizes.begin(), an.sizes.end() - 2, bn.sizes.begin()) ||
                          an.sizes[r - 1] != bn.sizes[r - 2],
                      "matmul of mismatched shapes");
  Sizes out(an.sizes.begin(), an.sizes.end() - 1);
  out.push_back(bn.sizes[r - 1]);
  Node n{OpKind::Matmul, {a, b}, {}, an.dtype, out, {}};
  n.attrs.int_value = zero_start ? 1 : 0;
  return append(std::move(n));
}

int GraphEditor::pad(int x, const std::vector<int64_t>& pad, double value) {
  Sizes out = node(x).sizes;
  KILN_UNSUPPORTED_IF(pad.size() != 2 * out.size(), "pad needs (low, high) per dim");
  for (size_t d = 0; d < out.size(); ++d) {
    KILN_UNSUPPORTED_IF(pad[2 * d] < 0 || pad[2 * d + 1] < 0, "negative padding");
    out[d] += pad[2 * d] + pad[2 * d + 1];
  }
  Node n{OpKind::Pad, {x}, {}, node(x).dtype, out, {}};
  n.attrs.ints = pad;
  n.attrs.floats = {value};
  return append(std::move(n));
}

int GraphEditor::slice_scatter(int base, int src, int64_t dim, int64_t start, int64_t end, int64_t step) {
  const Sizes& in = node(base).sizes;
  int64_t r = static_cast<int64_t>(in.size());
  if (dim < 0) dim += r;
  KILN_UNSUPPORTED_IF(dim < 0 || dim >= r || step <= 0, "slice_scatter dim or step");
  int64_t n = in[dim];
  clamp_slice(n, &start, &end);
  Sizes sliced = in;
  sliced[dim] = (end - start + step - 1) / step;
  KILN_UNSUPPORTED_IF(node(src).sizes != sliced || node(src).dtype != node(base).dtype,
                      "slice_scatter source does not fit the slice");
  Node nd{OpKind::SliceScatter, {base, src}, {}, node(base).dtype, in, {}};
  nd.attrs.ints = {dim, start, end, step};
  return append(std::move(nd));
}

int GraphEditor::index_copy(int base, int index, int src, int64_t dim, ScatterCombine combine) {
  const Sizes& in = node(base).sizes;
  int64_t r = static_cast<int64_t>(in.size());
  if (dim < 0) dim += r;
  KILN_UNSUPPORTED_IF(dim < 0 || dim >= r, "index_copy dim");
  KILN_UNSUPPORTED_IF(node(index).dtype != DType::Int64 || node(index).sizes.size() != 1, "index_copy index");
  Sizes want = in;
  want[dim] = node(index).sizes[0];
  KILN_UNSUPPORTED_IF(node(src).sizes != want || node(src).dtype != node(base).dtype,
                      "index_copy source does not fit");
  Node nd{OpKind::IndexCopy, {base, index, src}, {}, node(base).dtype, in, {}};
  nd.attrs.ints = {dim, static_cast<int64_t>(combine)};
  return append(std::move(nd));
}

int GraphEditor::scatter(int base, int index, int src, int64_t dim, ScatterCombine combine) {
  Sizes in = node(base).sizes, ix = node(index).sizes;  // copies: expand below appends nodes
  int64_t r = static_cast<int64_t>(in.size());
  if (dim < 0) dim += r;
  KILN_UNSUPPORTED_IF(dim < 0 || dim >= r, "scatter dim");
  KILN_UNSUPPORTED_IF(node(index).dtype != DType::Int64 || static_cast<int64_t>(ix.size()) != r, "scatter index");
  KILN_UNSUPPORTED_IF(node(src).dtype != node(base).dtype, "scatter source dtype");
  if (node(src).sizes.empty() && r > 0) src = expand(reshape(src, Sizes(r, 1)), ix);
  const Sizes& sz = node(src).sizes;  // no node is appended while it is read
  KILN_UNSUPPORTED_IF(static_cast<int64_t>(sz.size()) != r, "scatter source rank");
  for (int64_t d = 0; d < r; ++d)
    KILN_UNSUPPORTED_IF(ix[d] > sz[d] || (d != dim && ix[d] > in[d]), "scatter index larger than its operands");
  Node nd{OpKind::Scatter, {base, index, src}, {}, node(base).dtype, in, {}};
  nd.attrs.ints = {dim, static_cast<int64_t>(combine)};
  return append(std::move(nd));
}

int GraphEditor::scan(int x, int64_t dim, ScatterCombine combine, DType dtype) {
  Sizes in = node(x).sizes;
  int64_t r = static_cast<int64_t>(in.size());
  if (dim < 0) dim += r;
  KILN_UNSUPPORTED_IF(dim < 0 || dim >= r, "scan dim");
  KILN_UNSUPPORTED_IF(combine != ScatterCombine::Add && combine != ScatterCombine::Multiply, "scan combine");
  KILN_UNSUPPORTED_IF(dtype == DType::Bool, "scan to bool");
  Node nd{OpKind::Scan, {cast(x, dtype)}, {}, dtype, in, {}};
  nd.attrs.ints = {dim, static_cast<int64_t>(combine)};
  return append(std::move(nd));
}

int GraphEditor::flip(int x, std::vector<int64_t> dims) {
  int64_t r = static_cast<int64_t>(node(x).sizes.size());
  for (auto& d : dims) {
    if (d < 0) d += r;
    KILN_UNSUPPORTED_IF(d < 0 || d >= r, "flip dim out of range");
  }
  Node n{OpKind::Flip, {x}, {}, node(x).dtype, node(x).sizes, {}};
  n.attrs.ints = dims;
  return append(std::move(n));
}

int GraphEditor::iota(const Sizes& sizes, int64_t dim, DType dtype) {
  KILN_UNSUPPORTED_IF(dim < 0 || dim >= static_cast<int64_t>(sizes.size()), "iota dim out of range");
  Node n{OpKind::Iota, {}, {}, dtype, sizes, {}};
  n.attrs.ints = sizes;
  n.attrs.ints.push_back(dim);
  n.attrs.dtype = dtype;
  return append(std::move(n));
}

namespace {
/// Normalises reduction dims (negative, duplicates, empty = all) and returns the output sizes.
Sizes reduced_sizes(const Sizes& in, std::vector<int64_t>& dims, bool keepdim) {
  int64_t r = static_cast<int64_t>(in.size());
  if (dims.empty())
    for (int64_t i = 0; i < r; ++i) dims.push_back(i);
  for (auto& d : dims) {
    if (d < 0) d += std::max<int64_t>(r, 1);
    KILN_UNSUPPORTED_IF(d < 0 || d >= std::max<int64_t>(r, 1), "reduction dim out of range");
  }
  std::sort(dims.begin(), dims.end());
  dims.erase(std::unique(dims.begin(), dims.end()), dims.end());
  if (r == 0) dims.clear();
  Sizes out;
  for (int64_t i = 0; i < r; ++i) {
    bool red = std::find(dims.begin(), dims.end(), i) != dims.end();
    if (!red) out.push_back(in[i]);
    else if (keepdim) out.push_back(1);
  }
  return out;
}
}  // namespace

int GraphEditor::composite_reduce(OpKind op, const std::vector<int>& xs, Attrs attrs) {
  KILN_CHECK(op_category(op) == OpCategory::CompositeReduce, "{} is not a composite reduction", op_name(op));
  const Node& x = node(xs[0]);
  KILN_UNSUPPORTED_IF(!is_float(x.dtype), "{} of {}", op_name(op), dtype_name(x.dtype));
  Sizes out = x.sizes;
  switch (op) {
    case OpKind::Mean: case OpKind::Var: case OpKind::Std: case OpKind::LogSumExp: case OpKind::Norm:
      out = reduced_sizes(x.sizes, attrs.ints, attrs.int_value != 0);
      break;
    case OpKind::Softmax: case OpKind::LogSoftmax: {
      int64_t r = static_cast<int64_t>(x.sizes.size());
      int64_t d = attrs.ints.at(0);
      if (d < 0) d += std::max<int64_t>(r, 1);
      KILN_UNSUPPORTED_IF(d < 0 || d >= std::max<int64_t>(r, 1), "softmax dim out of range");
      attrs.ints = {d};
      break;
    }
    case OpKind::LayerNorm: case OpKind::RmsNorm: case OpKind::LayerNormMean: case OpKind::LayerNormRstd:
      KILN_UNSUPPORTED_IF(attrs.ints.at(0) < 1 || attrs.ints.at(0) > static_cast<int64_t>(x.sizes.size()),
                          "{} over {} trailing dims of a rank-{} tensor", op_name(op), attrs.ints.at(0), x.sizes.size());
      if (op == OpKind::LayerNormMean || op == OpKind::LayerNormRstd)
        for (size_t i = x.sizes.size() - static_cast<size_t>(attrs.ints[0]); i < x.sizes.size(); ++i) out[i] = 1;
      break;
    case OpKind::GroupNorm:
      KILN_UNSUPPORTED_IF(x.sizes.size() < 2 || attrs.ints.at(0) <= 0 || x.sizes[1] % attrs.ints.at(0) != 0,
                          "group_norm groups do not divide the channels");
      break;
    case OpKind::BatchNormEval:
      KILN_UNSUPPORTED_IF(x.sizes.size() < 2, "batch_norm needs a channel dim");
      break;
    default:
      break;
  }
  return append(Node{op, xs, attrs, x.dtype, out, {}});
}

int GraphEditor::reduce(OpKind op, int x, std::vector<int64_t> dims, bool keepdim) {
  KILN_CHECK(op_category(op) == OpCategory::Reduction, "{} is not a reduction", op_name(op));
  Sizes out = reduced_sizes(node(x).sizes, dims, keepdim);
  DType t = node(x).dtype;
  if (op == OpKind::ArgMax || op == OpKind::ArgMin) t = DType::Int64;
  if (op == OpKind::Any || op == OpKind::All) t = DType::Bool;
  if ((op == OpKind::Sum || op == OpKind::Prod) && !is_float(t)) t = DType::Int64;
  Node n{op, {x}, {}, t, out, {}};
  n.attrs.ints = dims;
  n.attrs.int_value = keepdim;
  return append(std::move(n));
}

}  // namespace kiln::ir
