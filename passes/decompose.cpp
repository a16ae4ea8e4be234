/// \file decompose.cpp
/// The decomposition rules, one per composite op, each a few primitive nodes.
#include "passes/decompose.h"

#include <cmath>

#include "ir/graph_editor.h"
#include "support/error.h"

namespace kiln::passes {
using namespace kiln::ir;

namespace {
/// Emits primitive nodes for one composite; `x` is already remapped into the new graph.
class Decomposer {
 public:
  Decomposer(GraphEditor& e, DType t) : e_(e), t_(t) {}
  int c(double v) { return e_.constant(v, t_); }
  int u(OpKind op, int a) { return e_.unary(op, a); }
  int b(OpKind op, int a, int bb) { return e_.binary(op, a, bb); }

  int run(const Node& n, const std::vector<int>& in) {
    int x = in[0];
    const auto& f = n.attrs.floats;
    switch (n.op) {
      case OpKind::Relu:
        return b(OpKind::Maximum, x, c(0));
      case OpKind::LeakyRelu:
        return e_.where(b(OpKind::Gt, x, c(0)), x, b(OpKind::Mul, x, c(f.at(0))));
      case OpKind::Elu: {
        // alpha * scale * expm1(x * input_scale) for x <= 0, scale * x otherwise.
        double alpha = f.at(0), scale = f.at(1), input_scale = f.at(2);
        int neg = b(OpKind::Mul, u(OpKind::Expm1, b(OpKind::Mul, x, c(input_scale))), c(alpha * scale));
        return e_.where(b(OpKind::Gt, x, c(0)), b(OpKind::Mul, x, c(scale)), neg);
      }
      case OpKind::Gelu: {
        int cdf = b(OpKind::Add, c(1), u(OpKind::Erf, b(OpKind::Mul, x, c(M_SQRT1_2))));
        return b(OpKind::Mul, b(OpKind::Mul, x, c(0.5)), cdf);
      }
      case OpKind::GeluTanh: {
        int x3 = b(OpKind::Mul, b(OpKind::Mul, x, x), x);
        int inner = b(OpKind::Mul, b(OpKind::Add, x, b(OpKind::Mul, x3, c(0.044715))), c(std::sqrt(2.0 / M_PI)));
        return b(OpKind::Mul, b(OpKind::Mul, x, c(0.5)), b(OpKind::Add, c(1), u(OpKind::Tanh, inner)));
      }
      case OpKind::Silu:
        return b(OpKind::Mul, x, u(OpKind::Sigmoid, x));
      case OpKind::Mish:
        return b(OpKind::Mul, x, u(OpKind::Tanh, softplus(x, 1.0, 20.0)));
      case OpKind::Hardsigmoid:
        return b(OpKind::Div, relu6(b(OpKind::Add, x, c(3))), c(6));
      case OpKind::Hardswish:
        return b(OpKind::Div, b(OpKind::Mul, x, relu6(b(OpKind::Add, x, c(3)))), c(6));
      case OpKind::Softplus:
        return softplus(x, f.at(0), f.at(1));
      case OpKind::Clamp: {
        int r = x;
        if (n.attrs.ints.at(0)) r = b(OpKind::Maximum, r, in[1]);
        if (n.attrs.ints.at(1)) r = b(OpKind::Minimum, r, in[2]);
        return r;
      }
      default:
        KILN_UNREACHABLE(std::string("no decomposition for ") + op_name(n.op));
    }
  }

 private:
  int relu6(int x) { return b(OpKind::Minimum, b(OpKind::Maximum, x, c(0)), c(6)); }
  // torch: x where beta*x > threshold, else log1p(exp(beta*x)) / beta.
  int softplus(int x, double beta, double threshold) {
    int bx = b(OpKind::Mul, x, c(beta));
    int soft = b(OpKind::Div, u(OpKind::Log1p, u(OpKind::Exp, bx)), c(beta));
    return e_.where(b(OpKind::Gt, bx, c(threshold)), x, soft);
  }
  GraphEditor& e_;
  DType t_;
};
}  // namespace

Graph run_decompose(const Graph& g, const PassOptions&) {
  Graph out;
  GraphEditor e(out);
  std::vector<int> remap(g.nodes.size(), -1);
  for (size_t i = 0; i < g.nodes.size(); ++i) {
    const Node& n = g.nodes[i];
    std::vector<int> in;
    for (int x : n.inputs) in.push_back(remap[x]);
    if (op_category(n.op) == OpCategory::Composite) {
      Decomposer d(e, n.dtype);
      remap[i] = d.run(n, in);
      // Keep the layout eager chose for this value.
      if (!n.strides.empty() && out.nodes[remap[i]].op != OpKind::Input) out.nodes[remap[i]].strides = n.strides;
    } else {
      Node copy = n;
      copy.inputs = in;
      remap[i] = e.append(std::move(copy));
      if (n.op == OpKind::Input) out.input_ids.push_back(remap[i]);
    }
  }
  for (int o : g.outputs) out.outputs.push_back(remap[o]);
  return out;
}

}  // namespace kiln::passes
