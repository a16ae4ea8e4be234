/// \file graph.cpp
/// Op table queries, printer, verifier and structural hash of the graph IR.
#include "ir/graph.h"

#include <fmt/format.h>

#include <cstring>

#include "support/error.h"
#include "support/hash.h"

namespace kiln::ir {
namespace {
struct OpInfo {
  const char* name;
  OpCategory category;
  int arity;
};
constexpr OpInfo kOps[] = {
#define KILN_OP(e, n, c, a) {n, OpCategory::c, a},
#include "ir/ops.def"
#undef KILN_OP
};
const OpInfo& info(OpKind k) { return kOps[static_cast<int>(k)]; }

std::string join(const std::vector<int64_t>& v) {
  std::string s;
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
  return s;
}
}  // namespace

const char* op_name(OpKind k) { return info(k).name; }
OpCategory op_category(OpKind k) { return info(k).category; }
int op_arity(OpKind k) { return info(k).arity; }

bool op_from_name(const std::string& name, OpKind* out) {
  for (size_t i = 0; i < sizeof kOps / sizeof kOps[0]; ++i)
    if (name == kOps[i].name) {
      *out = static_cast<OpKind>(i);
      return true;
    }
  return false;
}

bool is_pointwise(OpKind k) {
  switch (op_category(k)) {
    case OpCategory::Unary:
    case OpCategory::Binary:
    case OpCategory::Ternary:
    case OpCategory::Cast:
    case OpCategory::Composite:
      return true;
    default:
      return false;
  }
}

bool Attrs::operator==(const Attrs& o) const {
  return ints == o.ints && floats == o.floats && dtype == o.dtype && int_value == o.int_value &&
         std::memcmp(&float_value, &o.float_value, sizeof(double)) == 0;
}

int64_t numel(const Sizes& sizes) {
  int64_t n = 1;
  for (int64_t s : sizes) n *= s;
  return n;
}
int64_t Node::numel() const { return ir::numel(sizes); }

Sizes contiguous_strides(const Sizes& sizes) {
  Sizes st(sizes.size());
  int64_t acc = 1;
  for (int i = static_cast<int>(sizes.size()) - 1; i >= 0; --i) {
    st[i] = acc;
    acc *= std::max<int64_t>(sizes[i], 1);
  }
  return st;
}

bool may_raise(const Graph& g, const Node& n) {
  // A gather of a user's index (x[i], index_select, embedding, gather): eager raises when any
  // index is out of range, also one whose element nothing reads.
  if (n.op == OpKind::Gather) return n.attrs.ints.size() < 3 || n.attrs.ints[2] == 0;
  if (n.op == OpKind::IndexCopy || n.op == OpKind::Scatter) return true;  // the same for a scatter's index
  bool int_div = n.op == OpKind::FloorDiv || n.op == OpKind::TruncDiv || n.op == OpKind::Fmod || n.op == OpKind::Remainder;
  if (!int_div || !is_int(n.dtype) || n.inputs.size() < 2) return false;
  const Node& d = g.nodes[n.inputs[1]];
  return !(d.op == OpKind::Constant && d.attrs.int_value != 0);
}

std::string print(const Graph& g) {
  std::string out;
  for (size_t i = 0; i < g.nodes.size(); ++i) {
    const Node& n = g.nodes[i];
    std::string args;
    for (size_t j = 0; j < n.inputs.size(); ++j) args += fmt::format("{}%{}", j ? ", " : "", n.inputs[j]);
    std::string attrs;
    if (n.op == OpKind::Constant) {
      attrs = is_float(n.dtype) ? fmt::format("{}", n.attrs.float_value) : std::to_string(n.attrs.int_value);
    } else if (n.op == OpKind::Fallback) {
      attrs = fmt::format("#{}", n.attrs.int_value);
    } else if (n.op == OpKind::Input) {
      attrs = fmt::format("arg{}, strides=[{}]", n.attrs.int_value, join(n.strides));
    } else {
      if (!n.attrs.ints.empty()) attrs += "[" + join(n.attrs.ints) + "]";
      for (double f : n.attrs.floats) attrs += fmt::format("{}{}", attrs.empty() ? "" : ", ", f);
      if (n.op == OpKind::Cast) attrs += dtype_name(n.attrs.dtype);
    }
    if (!attrs.empty()) args += (args.empty() ? "" : ", ") + attrs;
    out += fmt::format("%{} = {}({}) : {}[{}]\n", i, op_name(n.op), args, dtype_name(n.dtype), join(n.sizes));
  }
  std::string outs;
  for (size_t j = 0; j < g.outputs.size(); ++j) outs += fmt::format("{}%{}", j ? ", " : "", g.outputs[j]);
  out += "return (" + outs + ")\n";
  return out;
}

void verify(const Graph& g) {
  auto fail = [&](size_t i, const std::string& why) {
    throw InternalError(fmt::format("kiln graph verifier: node %{} ({}): {}\n{}", i,
                                    op_name(g.nodes[i].op), why, print(g)));
  };
  for (size_t i = 0; i < g.nodes.size(); ++i) {
    const Node& n = g.nodes[i];
    int arity = op_arity(n.op);
    if (arity >= 0 && static_cast<int>(n.inputs.size()) != arity)
      fail(i, fmt::format("expects {} inputs, has {}", arity, n.inputs.size()));
    for (int in : n.inputs)
      if (in < 0 || static_cast<size_t>(in) >= i) fail(i, fmt::format("input %{} is not earlier", in));
    for (int64_t s : n.sizes)
      if (s < 0) fail(i, "negative size");
    if (n.op == OpKind::Input && n.strides.size() != n.sizes.size()) fail(i, "input without strides");
    switch (op_category(n.op)) {
      case OpCategory::Binary: {
        const Node& a = g.nodes[n.inputs[0]];
        const Node& b = g.nodes[n.inputs[1]];
        if (a.dtype != b.dtype) fail(i, "operands of different dtypes (promotion not explicit)");
        break;
      }
      case OpCategory::Ternary:
        if (n.op == OpKind::Fma) {
          for (int k = 0; k < 3; ++k)
            if (g.nodes[n.inputs[k]].dtype != n.dtype || !is_float(n.dtype)) fail(i, "fma operands differ in dtype");
          break;
        }
        if (g.nodes[n.inputs[0]].dtype != DType::Bool) fail(i, "condition is not bool");
        if (g.nodes[n.inputs[1]].dtype != g.nodes[n.inputs[2]].dtype || g.nodes[n.inputs[1]].dtype != n.dtype)
          fail(i, "branches and result differ in dtype");
        break;
      case OpCategory::Movement:
        if (n.dtype != g.nodes[n.inputs[0]].dtype) fail(i, "a view changes the dtype");
        if (n.op == OpKind::Reshape && numel(n.sizes) != g.nodes[n.inputs[0]].numel())
          fail(i, "reshape changes the element count");
        break;
      default:
        break;
    }
  }
  for (int o : g.outputs)
    if (o < 0 || static_cast<size_t>(o) >= g.nodes.size()) throw InternalError("graph output out of range");
}

uint64_t structural_hash(const Graph& g) {
  uint64_t h = 0x6b696c6eULL;
  for (const Node& n : g.nodes) {
    h = hash_combine(h, static_cast<uint64_t>(n.op));
    h = hash_combine(h, static_cast<uint64_t>(n.dtype));
    for (int in : n.inputs) h = hash_combine(h, static_cast<uint64_t>(in));
    for (int64_t s : n.sizes) h = hash_combine(h, static_cast<uint64_t>(s));
    for (int64_t s : n.strides) h = hash_combine(h, static_cast<uint64_t>(s) ^ 0x5bd1e995ULL);
    for (int64_t v : n.attrs.ints) h = hash_combine(h, static_cast<uint64_t>(v));
    for (double f : n.attrs.floats) h = hash_combine(h, hash_double(f));
    h = hash_combine(h, static_cast<uint64_t>(n.attrs.dtype));
    h = hash_combine(h, static_cast<uint64_t>(n.attrs.int_value));
    h = hash_combine(h, hash_double(n.attrs.float_value));
  }
  for (int o : g.outputs) h = hash_combine(h, static_cast<uint64_t>(o) + 0x1000);
  return h;
}

}  // namespace kiln::ir
