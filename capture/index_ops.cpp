/// \file index_ops.cpp
/// Capture-level lowering of index_put with integer index tensors (`x[i, j] = v`,
/// `x.index_put_((i,), v, accumulate=True)`) through the IndexCopy scatter (Note [Scatters] in
/// passes/lower_to_loops.cpp). Tested by tests/python/test_op_coverage.py.
#include "capture/graph_builder.h"
#include "support/error.h"

namespace kiln::capture {
using namespace kiln::ir;

/// "index_put": args = x, values, index tensors (integral, indexing adjacent dims of x from
/// ints[0] on, broadcast together); ints = first indexed dim, accumulate. As eager: the
/// indexed dims of x become one dim of their product, the indices one position into it (each
/// wrapped if negative; an index out of its own dim's range makes the position invalid, so
/// the scatter flags it and eager's redo raises its IndexError), and values, broadcast to
/// x[indices]'s shape, are scattered there: replacing (of duplicate positions, one value
/// wins, as in eager, whose winner is unspecified) or, with accumulate, added in index order
/// (eager's CPU kernel accumulates serially in that order).
int GraphBuilder::index_op(const std::string& name, const std::vector<Operand>& args, const Attrs& attrs) {
  if (name != "index_put") return -1;
  KILN_UNSUPPORTED_IF(args.size() < 3 || attrs.ints.size() != 2, "index_put takes x, values, indices; first, accumulate");
  for (const Operand& a : args)
    KILN_UNSUPPORTED_IF(a.kind != Operand::Kind::Value, "index_put takes tensors");
  int x = args[0].value;
  const Sizes xs = node(x).sizes;
  DType t = node(x).dtype;
  size_t first = static_cast<size_t>(attrs.ints[0]), k = args.size() - 2;
  KILN_UNSUPPORTED_IF(first + k > xs.size(), "index_put with more indices than dims");
  Sizes bshape;
  for (size_t j = 0; j < k; ++j) {
    const Node& idx = node(args[2 + j].value);
    KILN_UNSUPPORTED_IF(!is_int(idx.dtype), "index_put index of {}", dtype_name(idx.dtype));
    bshape = broadcast_shapes(bshape, idx.sizes);
  }
  int64_t count = numel(bshape);
  KILN_UNSUPPORTED_IF(count == 0, "index_put with no index");
  int position = -1, bad = -1;
  auto i64 = [&](int64_t v) { return editor_.int_constant(v, DType::Int64); };
  int64_t flat_size = 1;
  for (size_t j = 0; j < k; ++j) {
    int64_t n = xs[first + j];
    flat_size *= n;
    int i = editor_.cast(args[2 + j].value, DType::Int64);
    i = editor_.where(editor_.binary(OpKind::Lt, i, i64(0)), editor_.binary(OpKind::Add, i, i64(n)), i);
    int out = editor_.binary(OpKind::LogicalOr, editor_.binary(OpKind::Lt, i, i64(0)),
                             editor_.binary(OpKind::Ge, i, i64(n)));
    bad = bad < 0 ? out : editor_.binary(OpKind::LogicalOr, bad, out);
    position = position < 0 ? i : editor_.binary(OpKind::Add, editor_.binary(OpKind::Mul, position, i64(n)), i);
  }
  position = editor_.where(bad, i64(-(int64_t{1} << 62)), position);
  position = editor_.reshape(editor_.expand(position, bshape), {count});
  Sizes lead(xs.begin(), xs.begin() + static_cast<int64_t>(first));
  Sizes rest(xs.begin() + static_cast<int64_t>(first + k), xs.end());
  Sizes merged = lead, target = lead, scattered = lead;
  merged.push_back(flat_size);
  target.insert(target.end(), bshape.begin(), bshape.end());
  scattered.push_back(count);
  for (Sizes* s : {&merged, &target, &scattered}) s->insert(s->end(), rest.begin(), rest.end());
  int values = editor_.cast(args[1].value, t);
  KILN_UNSUPPORTED_IF(node(values).sizes.size() > target.size(), "index_put values of a higher rank");
  values = editor_.reshape(editor_.expand(values, target), scattered);
  bool accumulate = attrs.ints[1] != 0;
  KILN_UNSUPPORTED_IF(accumulate && t == DType::Bool, "index_put accumulating bools");
  int r = editor_.index_copy(editor_.reshape(x, merged), position, values, static_cast<int64_t>(first),
                             accumulate ? ScatterCombine::Add : ScatterCombine::Replace);
  return editor_.reshape(r, xs);
}

}  // namespace kiln::capture
