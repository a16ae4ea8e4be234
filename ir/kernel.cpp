/// \file kernel.cpp
/// Printing of kernels and kernel programs.
#include "ir/kernel.h"

#include <fmt/format.h>

#include <algorithm>
#include <set>

namespace kiln::ir {

int64_t Buffer::storage_numel() const {
  int64_t n = 1;
  for (size_t i = 0; i < sizes.size(); ++i) {
    if (sizes[i] == 0) return 0;
    n += (sizes[i] - 1) * strides[i];
  }
  return n;
}

int64_t Kernel::inner_work() const {
  int64_t outer = 1;
  for (size_t i = 1; i < loops.size(); ++i) outer *= loops[i].var->ival;
  int64_t inner = 0;
  for (const auto& ph : phases) {
    int64_t w = 1;
    for (const auto& l : ph.loops) w *= l.var->ival;
    inner += w;
  }
  return outer * std::max<int64_t>(inner, 1);
}

std::vector<Expr> Kernel::exprs() const {
  std::vector<Expr> out;
  for (const auto& ph : phases) {
    for (const auto& r : ph.reductions) {
      out.push_back(r.value);
      if (r.position) out.push_back(r.position);
    }
    for (const auto& s : ph.stores) {
      out.push_back(s.index);
      out.push_back(s.value);
    }
  }
  return out;
}

std::vector<bool> read_outside_kernels(const KernelProgram& p) {
  std::vector<bool> read(p.buffers.size(), false);
  for (const GemmCall& g : p.gemms) {
    read.at(g.a.buffer) = read.at(g.b.buffer) = true;
    if (g.bias >= 0) read.at(g.bias) = true;
  }
  for (const ExternCall& e : p.externs)
    for (int b : e.inputs) read.at(b) = true;
  for (const OutputSpec& o : p.outputs)
    if (o.kind == OutputSpec::Kind::Buffer) read.at(o.index) = true;
  return read;
}

std::vector<BufferLifetime> buffer_lifetimes(const KernelProgram& p, bool epilogues_at_product) {
  std::vector<BufferLifetime> out(p.buffers.size());
  auto touch = [&](int b, int step) {
    BufferLifetime& l = out.at(b);
    if (l.first < 0 || step < l.first) l.first = step;
    l.last = std::max(l.last, step);
  };
  for (size_t s = 0; s < p.steps.size(); ++s) {
    const Step& st = p.steps[s];
    int si = static_cast<int>(s);
    if (st.kind == Step::Kind::Extern) {
      for (int b : p.externs[st.index].inputs) touch(b, si);
      for (int b : p.externs[st.index].outputs) touch(b, si);
      continue;
    }
    if (st.kind == Step::Kind::Gemm) {
      const GemmCall& g = p.gemms[st.index];
      touch(g.a.buffer, si);
      touch(g.b.buffer, si);
      touch(g.out, si);
      if (g.bias >= 0) touch(g.bias, si);
      continue;
    }
    if (epilogues_at_product && s > 0 && p.steps[s - 1].kind == Step::Kind::Gemm &&
        p.gemms[p.steps[s - 1].index].epilogue == st.index)
      --si;  // it may run inside the product's step, on each tile
    const Kernel& k = p.kernels[st.index];
    std::set<Expr> seen;
    for (Expr e : k.exprs())
      visit(e, seen, [&](Expr x) {
        if (x->op == ExprOp::Load && x->ival >= 0) touch(static_cast<int>(x->ival), si);
      });
    for (const auto& ph : k.phases)
      for (const auto& store : ph.stores) touch(store.buffer, si);
  }
  return out;
}

const char* reduce_op_name(ReduceOp r) {
  static const char* names[] = {"sum", "prod", "max", "min", "argmax", "argmin", "any", "all"};
  return names[static_cast<int>(r)];
}

namespace {
const char* loop_kind_name(LoopKind k) {
  switch (k) {
    case LoopKind::Serial: return "serial";
    case LoopKind::Parallel: return "parallel";
    case LoopKind::Vectorized: return "vectorized";
  }
  return "?";
}
}  // namespace

std::string print(const Kernel& k) {
  std::string s = fmt::format("kernel {}  // {}\n", k.name, k.provenance);
  std::string indent = "  ";
  auto loop_line = [](const Loop& l, const std::string& indent) {
    std::string n = l.extent_param >= 0 ? fmt::format("p{}", l.extent_param) : std::to_string(l.var->ival);
    return fmt::format("{}for i{} in 0..{} ({}):\n", indent, l.var->var_id, n, loop_kind_name(l.kind));
  };
  for (const auto& l : k.loops) {
    s += loop_line(l, indent);
    indent += "  ";
  }
  for (const auto& ph : k.phases) {
    std::string pi = indent;
    for (const auto& l : ph.loops) {
      s += loop_line(l, pi);
      pi += "  ";
    }
    for (const auto& r : ph.reductions) {
      std::string lets, v = print_expr(r.value, &lets, pi);
      if (r.position) v += ", at " + print_expr(r.position);
      s += lets + fmt::format("{}acc{} = {}{}<{}>(acc{}, {})\n", pi, r.slot, r.running ? "running " : "",
                              reduce_op_name(r.op), dtype_name(r.acc_dtype), r.slot, v);
    }
    for (const auto& st : ph.stores) {
      std::string lets, v = print_expr(st.value, &lets, pi);
      s += lets + fmt::format("{}buf{}[{}] = {}\n", pi, st.buffer, print_expr(st.index), v);
    }
  }
  return s;
}

std::string print(const KernelProgram& p) {
  std::string s;
  for (size_t i = 0; i < p.buffers.size(); ++i) {
    const Buffer& b = p.buffers[i];
    static const char* kinds[] = {"input", "output", "temp", "shared", "extern"};
    const char* kind = kinds[static_cast<int>(b.kind)];
    s += fmt::format("buf{}: {} {} {}[{}] strides [{}]\n", i, kind, b.index, dtype_name(b.dtype),
                     fmt::join(b.sizes, ", "), fmt::join(b.strides, ", "));
  }
  for (const auto& st : p.steps) {
    if (st.kind == Step::Kind::Kernel) {
      s += print(p.kernels[st.index]);
    } else if (st.kind == Step::Kind::Gemm) {
      const GemmCall& g = p.gemms[st.index];
      auto operand = [](const GemmOperand& o) {
        return fmt::format("buf{}.view([{}], strides [{}], offset {})", o.buffer, fmt::join(o.sizes, ", "),
                           fmt::join(o.strides, ", "), o.offset);
      };
      std::string bias = g.bias < 0 ? "" : fmt::format(" + buf{}[{} + col]", g.bias, g.bias_offset);
      s += fmt::format("gemm {}: buf{} = {} . {}{}\n", g.name, g.out, operand(g.a), operand(g.b), bias);
    } else {
      const ExternCall& e = p.externs[st.index];
      std::string ins, outs;
      for (size_t k = 0; k < e.inputs.size(); ++k) {
        ins += fmt::format("{}buf{}", ins.empty() ? "" : ", ", e.inputs[k]);
        if (k < e.views.size() && e.views[k].is_view)
          ins += fmt::format(".view([{}], strides [{}], offset {})", fmt::join(e.views[k].sizes, ", "),
                             fmt::join(e.views[k].strides, ", "), e.views[k].offset);
      }
      for (int b : e.outputs) outs += fmt::format("{}buf{}", outs.empty() ? "" : ", ", b);
      s += fmt::format("extern {} (fallback #{}): ({}) -> ({})\n", e.name, e.table_index, ins, outs);
    }
  }
  return s;
}

}  // namespace kiln::ir
