/// \file graph_builder.cpp
/// ATen-level semantics of traced ops: promotion, int-to-float ops, division modes, views.
///
/// Besides the names of ops.def, `call` accepts: "full" (a scalar broadcast to attrs.ints
/// sizes in attrs.dtype), "identity" (returns its operand), "copy" (a new value equal to its
/// operand), the pointwise and creation ops of capture/pointwise_ops.cpp, index_put of
/// capture/index_ops.cpp, the pooling and upsampling ops of window_op below, the derivatives and losses of
/// capture/backward_ops.h, and the training ops of capture/training_ops.cpp (attention, batch
/// norm training, pooling backward).
#include "capture/graph_builder.h"

#include <fmt/format.h>

#include "capture/backward_ops.h"
#include "capture/training_ops.h"
#include "capture/window_ops.h"
#include "support/error.h"

namespace kiln::capture {
using namespace kiln::ir;

namespace {
/// Unary ops that compute in floating point: integral inputs become the default float dtype.
bool float_only(OpKind op) {
  switch (op) {
    case OpKind::Exp: case OpKind::Exp2: case OpKind::Expm1: case OpKind::Log: case OpKind::Log2:
    case OpKind::Log1p: case OpKind::Sqrt: case OpKind::Rsqrt: case OpKind::Reciprocal:
    case OpKind::Sin: case OpKind::Cos: case OpKind::Tan: case OpKind::Tanh: case OpKind::Erf:
    case OpKind::Sigmoid:
      return true;
    default:
      return false;
  }
}
bool rounding(OpKind op) {
  return op == OpKind::Floor || op == OpKind::Ceil || op == OpKind::Round || op == OpKind::Trunc;
}
}  // namespace

int GraphBuilder::add_input(DType dtype, const Sizes& sizes, const Sizes& strides, int arg_index) {
  KILN_UNSUPPORTED_IF(sizes.size() != strides.size(), "input sizes and strides differ in rank");
  return editor_.input(dtype, sizes, strides, arg_index);
}

PromotionOperand GraphBuilder::promotion(const Operand& o) const {
  switch (o.kind) {
    case Operand::Kind::Value: {
      const Node& n = graph_.nodes.at(o.value);
      return {n.dtype, n.sizes.empty() ? OperandKind::ZeroDim : OperandKind::Tensor};
    }
    case Operand::Kind::Float: return {DType::Float64, OperandKind::Scalar};
    case Operand::Kind::Int: return {DType::Int64, OperandKind::Scalar};
    case Operand::Kind::Bool: return {DType::Bool, OperandKind::Scalar};
  }
  KILN_UNREACHABLE("operand kind");
}

DType GraphBuilder::promoted(const std::vector<Operand>& args) const {
  std::vector<PromotionOperand> ops;
  for (const auto& a : args) ops.push_back(promotion(a));
  return result_type(ops, default_float_);
}

int GraphBuilder::value_of(const Operand& o, DType t) {
  switch (o.kind) {
    case Operand::Kind::Value: return editor_.cast(o.value, t);
    case Operand::Kind::Float: return editor_.constant(o.f, t);
    case Operand::Kind::Int:
      return is_float(t) ? editor_.float_constant(static_cast<double>(o.i), t) : editor_.int_constant(o.i, t);
    case Operand::Kind::Bool: return editor_.constant(o.i != 0 ? 1.0 : 0.0, t);
  }
  KILN_UNREACHABLE("operand kind");
}

int GraphBuilder::window_op(const std::string& name, const std::vector<Operand>& args, const Attrs& attrs) {
  bool pool = name == "max_pool" || name == "max_pool_indices" || name == "avg_pool";
  bool backward = name.size() > 9 && name.compare(name.size() - 9, 9, "_backward") == 0;
  std::string base = backward ? name.substr(0, name.size() - 9) : name;
  bool resample = base == "upsample_nearest" || base == "upsample_nearest_exact" || base == "upsample_linear";
  if (backward && !resample) return -1;
  bool adaptive = name == "adaptive_avg_pool" || name == "adaptive_max_pool" || name == "adaptive_max_pool_indices";
  if (!pool && !resample && !adaptive) return -1;
  KILN_UNSUPPORTED_IF(args.size() != 1 || args[0].kind != Operand::Kind::Value, "{} takes one tensor", name);
  int x = args[0].value;
  const std::vector<int64_t>& a = attrs.ints;
  if (pool) {
    // ints = n, kernel[n], stride[n], padding[n], dilation[n], ceil_mode, count_include_pad,
    // divisor_override (0: none)
    KILN_UNSUPPORTED_IF(a.empty() || a.size() != 4 * static_cast<size_t>(a[0]) + 4, "{} attributes", name);
    size_t n = static_cast<size_t>(a[0]);
    auto part = [&](size_t k) { return std::vector<int64_t>(a.begin() + 1 + k * n, a.begin() + 1 + (k + 1) * n); };
    PoolWindow w{part(0), part(1), part(2), part(3), a[4 * n + 1] != 0};
    if (name == "max_pool") return max_pool(editor_, x, w);
    if (name == "max_pool_indices") return max_pool_indices(editor_, x, w);
    return avg_pool(editor_, x, w, a[4 * n + 2] != 0, a[4 * n + 3]);
  }
  // ints = the output sizes of the pooled trailing dims
  if (name == "adaptive_avg_pool") return adaptive_avg_pool(editor_, x, a);
  if (adaptive) return adaptive_max_pool(editor_, x, a, name == "adaptive_max_pool_indices");
  // ints = output sizes of the trailing dims; floats = their scales (<= 0: none);
  // int_value = align_corners
  Upsample mode = base == "upsample_nearest" ? Upsample::Nearest
                  : base == "upsample_nearest_exact" ? Upsample::NearestExact
                                                     : Upsample::Linear;
  // backward: ints = the input's trailing sizes (the gradient is the operand)
  if (backward) return upsample_backward(editor_, x, mode, a, attrs.floats, attrs.int_value != 0);
  return upsample(editor_, x, mode, a, attrs.floats, attrs.int_value != 0);
}

int GraphBuilder::call(const std::string& name, const std::vector<Operand>& args, const Attrs& attrs) {
  if (name == "identity") {
    KILN_UNSUPPORTED_IF(args.size() != 1 || args[0].kind != Operand::Kind::Value, "identity of a non-tensor");
    return args[0].value;
  }
  if (name == "copy") {
    // A new value equal to its tensor operand, as a same-dtype Cast node appended directly (the
    // editor's cast() would return the operand itself). The tracer uses it for a graph output
    // that would otherwise be a graph input (clone(x), floor/round of an integer tensor, a
    // full slice): eager returns a new tensor there, and lowering materialises outputs only from
    // computed values (an Input output used to fail with "input %0 without a buffer").
    KILN_UNSUPPORTED_IF(args.size() != 1 || args[0].kind != Operand::Kind::Value, "copy of a non-tensor");
    const Node& src = node(args[0].value);
    Node n{OpKind::Cast, {args[0].value}, {}, src.dtype, src.sizes, {}};
    n.attrs.dtype = src.dtype;
    return editor_.append(std::move(n));
  }
  if (int v = window_op(name, args, attrs); v >= 0) return v;
  if (int v = pointwise_op(name, args, attrs); v >= 0) return v;
  if (int v = index_op(name, args, attrs); v >= 0) return v;
  if (int v = training_op(editor_, name, args, attrs); v >= 0) return v;
  if (is_backward_op(name)) {
    std::vector<int> xs;
    for (const auto& a : args) {
      KILN_UNSUPPORTED_IF(a.kind != Operand::Kind::Value, "{} takes tensors only", name);
      xs.push_back(a.value);
    }
    return backward_op(editor_, name, xs, attrs);
  }
  if (name == "full") {
    KILN_UNSUPPORTED_IF(args.size() != 1, "full takes one scalar");
    int c = value_of(args[0], attrs.dtype);
    return editor_.expand(c, attrs.ints);
  }
  OpKind op;
  KILN_UNSUPPORTED_IF(!op_from_name(name, &op), "kiln has no op '{}'", name);
  int arity = op_arity(op);
  KILN_UNSUPPORTED_IF(arity >= 0 && static_cast<int>(args.size()) != arity, "{} takes {} operands, got {}",
                      name, arity, args.size());
  auto tensor_arg = [&](size_t i) {
    KILN_UNSUPPORTED_IF(args[i].kind != Operand::Kind::Value, "{} operand {} must be a tensor", name, i);
    return args[i].value;
  };
  switch (op_category(op)) {
    case OpCategory::Leaf:
      if (op == OpKind::Iota) {
        KILN_UNSUPPORTED_IF(attrs.ints.empty(), "iota needs sizes and a dim");
        Sizes sizes(attrs.ints.begin(), attrs.ints.end() - 1);
        return editor_.iota(sizes, attrs.ints.back(), attrs.dtype);
      }
      throw Unsupported(fmt::format("{} cannot be called", name));
    case OpCategory::Extern:
      throw Unsupported(fmt::format("{} cannot be called", name));
    case OpCategory::Contraction:
      return editor_.matmul(tensor_arg(0), tensor_arg(1), attrs.int_value != 0);
    case OpCategory::Assemble: {
      KILN_UNSUPPORTED_IF(attrs.ints.empty(), "{} needs its dims", name);
      if (op == OpKind::Concat) {
        DType t = promoted(args);
        std::vector<int> xs;
        for (size_t i = 0; i < args.size(); ++i) xs.push_back(value_of(tensor_arg(i) >= 0 ? args[i] : args[i], t));
        return editor_.concat(xs, attrs.ints[0]);
      }
      if (op == OpKind::Gather) return editor_.gather(tensor_arg(0), tensor_arg(1), attrs.ints[0], attrs.ints.at(1) != 0);
      if (op == OpKind::Pad) return editor_.pad(tensor_arg(0), attrs.ints, attrs.floats.at(0));
      if (op == OpKind::IndexCopy || op == OpKind::Scatter) {
        int base = tensor_arg(0);
        int64_t combine = attrs.ints.size() > 1 ? attrs.ints[1] : 0;
        KILN_UNSUPPORTED_IF(combine < 0 || combine > static_cast<int64_t>(ScatterCombine::Min), "{} combine {}", name,
                            combine);
        int src = value_of(args[2], node(base).dtype);
        auto how = static_cast<ScatterCombine>(combine);
        return op == OpKind::IndexCopy ? editor_.index_copy(base, tensor_arg(1), src, attrs.ints[0], how)
                                       : editor_.scatter(base, tensor_arg(1), src, attrs.ints[0], how);
      }
      if (op == OpKind::Scan) {
        KILN_UNSUPPORTED_IF(attrs.ints.size() != 2, "scan takes dim, combine");
        return editor_.scan(tensor_arg(0), attrs.ints[0], static_cast<ScatterCombine>(attrs.ints[1]), attrs.dtype);
      }
      if (op == OpKind::SliceScatter) {
        KILN_UNSUPPORTED_IF(attrs.ints.size() != 4, "slice_scatter takes dim, start, end, step");
        int base = tensor_arg(0);
        int src = value_of(args[1], node(base).dtype);
        return editor_.slice_scatter(base, src, attrs.ints[0], attrs.ints[1], attrs.ints[2], attrs.ints[3]);
      }
      break;
    }
    case OpCategory::Unary: {
      int x = tensor_arg(0);
      DType t = node(x).dtype;
      if (float_only(op) && !is_float(t)) x = editor_.cast(x, default_float_);
      if (rounding(op) && !is_float(t)) return x;  // torch: identity on integers
      if (op == OpKind::LogicalNot) x = editor_.cast(x, node(x).dtype);
      return editor_.unary(op, x);
    }
    case OpCategory::Binary: {
      DType t = promoted(args);
      bool logical = op == OpKind::LogicalAnd || op == OpKind::LogicalOr || op == OpKind::LogicalXor;
      if (logical) t = DType::Bool;
      if (op == OpKind::Div && !is_float(t)) t = default_float_;
      KILN_UNSUPPORTED_IF((op == OpKind::BitwiseAnd || op == OpKind::BitwiseOr || op == OpKind::BitwiseXor) &&
                              is_float(t), "bitwise op on floating point");
      // torch: add on bools is a logical or (True + True == True); a 1-bit add would wrap.
      if (op == OpKind::Add && t == DType::Bool) op = OpKind::LogicalOr;
      int a = value_of(args[0], t);
      int b = value_of(args[1], t);
      return editor_.binary(op, a, b);
    }
    case OpCategory::Ternary: {
      KILN_UNSUPPORTED_IF(op != OpKind::Where, "{} is recorded by its ATen ops", name);
      int c = value_of(args[0], DType::Bool);
      DType t = promoted({args[1], args[2]});
      return editor_.where(c, value_of(args[1], t), value_of(args[2], t));
    }
    case OpCategory::Cast:
      return editor_.cast(tensor_arg(0), attrs.dtype);
    case OpCategory::Composite: {
      if (op == OpKind::Clamp) {
        // attrs.ints = {has_lo, has_hi}; an absent bound is passed as any number and ignored.
        std::vector<Operand> present = {args[0]};
        for (int k = 0; k < 2; ++k)
          if (attrs.ints.at(k)) present.push_back(args[1 + k]);
        DType t = promoted(present);
        std::vector<int> xs = {value_of(args[0], t), value_of(args[1], t), value_of(args[2], t)};
        return editor_.composite(op, xs, attrs);
      }
      int x = tensor_arg(0);
      KILN_UNSUPPORTED_IF(!is_float(node(x).dtype) && op != OpKind::Relu, "{} of {}", name, dtype_name(node(x).dtype));
      return editor_.composite(op, {x}, attrs);
    }
    case OpCategory::CompositeReduce: {
      int x = tensor_arg(0);
      DType t = node(x).dtype;
      if (!attrs.floats.empty() && op != OpKind::Var && op != OpKind::Std && op != OpKind::Norm &&
          op != OpKind::LayerNorm && op != OpKind::LayerNormRstd && op != OpKind::RmsNorm &&
          op != OpKind::GroupNorm && op != OpKind::BatchNormEval) {
        // mean(x, dtype=...) / softmax(x, dtype=...): compute in the requested dtype.
        x = editor_.cast(x, attrs.dtype);
        t = attrs.dtype;
      }
      std::vector<int> xs = {x};
      // Optional operands (weight, bias, running stats) arrive as numbers when absent.
      for (size_t i = 1; i < args.size(); ++i) xs.push_back(value_of(args[i], t));
      return editor_.composite_reduce(op, xs, attrs);
    }
    case OpCategory::Movement: {
      int x = tensor_arg(0);
      switch (op) {
        case OpKind::Reshape: return editor_.reshape(x, attrs.ints);
        case OpKind::Permute: return editor_.permute(x, attrs.ints);
        case OpKind::Expand: return editor_.expand(x, attrs.ints);
        case OpKind::Slice:
          KILN_UNSUPPORTED_IF(attrs.ints.size() != 4, "slice takes dim, start, end, step");
          return editor_.slice(x, attrs.ints[0], attrs.ints[1], attrs.ints[2], attrs.ints[3]);
        case OpKind::Flip:
          return editor_.flip(x, attrs.ints);
        default: break;
      }
      break;
    }
    case OpCategory::Reduction: {
      int x = tensor_arg(0);
      // attrs.dtype (when attrs.floats is non-empty, as a flag) asks for an accumulation dtype.
      if (!attrs.floats.empty()) x = editor_.cast(x, attrs.dtype);
      return editor_.reduce(op, x, attrs.ints, attrs.int_value != 0);
    }
  }
  throw Unsupported(fmt::format("kiln cannot record {}", name));
}

std::vector<int> GraphBuilder::add_fallback(int table_index, const std::vector<int>& inputs,
                                            const std::vector<DType>& dtypes, const std::vector<Sizes>& sizes,
                                            const std::vector<Sizes>& strides, const std::string& aten_name,
                                            int64_t traits) {
  KILN_CHECK(!dtypes.empty() && dtypes.size() == sizes.size() && sizes.size() == strides.size(),
             "fallback result descriptions");
  std::vector<int> out;
  Node n{OpKind::Fallback, inputs, {}, dtypes[0], sizes[0], strides[0]};
  n.attrs.int_value = table_index;
  KILN_UNSUPPORTED_IF(traits & ~kFallbackConvolution, "fallback traits {}", traits);
  bool conv = aten_name == "aten.convolution.default";
  KILN_UNSUPPORTED_IF((traits & kFallbackConvolution) && (!conv || inputs.size() < 2 || dtypes.size() != 1),
                      "only a convolution with one result is marked as one");
  if (conv && sizes[0].size() == 4) traits |= kFallbackPrefersChannelsLast;
  if (aten_name == "aten.convolution_backward.default" && sizes[0].size() == 4 && inputs.size() >= 3)
    traits |= kFallbackPrefersChannelsLast | kFallbackConvolutionBackward;
  n.attrs.ints = {traits};
  out.push_back(editor_.append(std::move(n)));
  for (size_t k = 1; k < dtypes.size(); ++k) {
    Node o{OpKind::FallbackOutput, {out[0]}, {}, dtypes[k], sizes[k], strides[k]};
    o.attrs.ints = {static_cast<int64_t>(k)};
    out.push_back(editor_.append(std::move(o)));
  }
  return out;
}

void GraphBuilder::check(int id, DType dtype, const Sizes& sizes) const {
  const Node& n = node(id);
  KILN_UNSUPPORTED_IF(n.dtype != dtype || n.sizes != sizes,
                      "kiln inferred {}{} for {} but eager produced {}{}", dtype_name(n.dtype),
                      fmt::format("[{}]", fmt::join(n.sizes, ", ")), op_name(n.op), dtype_name(dtype),
                      fmt::format("[{}]", fmt::join(sizes, ", ")));
}

void GraphBuilder::set_layout(int id, const Sizes& strides) {
  Node& n = graph_.nodes.at(id);
  if (n.op != OpKind::Input) n.strides = strides;
}

void GraphBuilder::set_input_index(int id, int index) {
  Node& n = graph_.nodes.at(id);
  KILN_CHECK(n.op == OpKind::Input, "set_input_index on %{} ({})", id, op_name(n.op));
  n.attrs.int_value = index;
}

void GraphBuilder::set_outputs(const std::vector<int>& ids) {
  for (int id : ids) KILN_CHECK(id >= 0 && static_cast<size_t>(id) < graph_.nodes.size(), "output id");
  graph_.outputs = ids;
}

}  // namespace kiln::capture
