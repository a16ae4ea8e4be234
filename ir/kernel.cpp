/// \file kernel.cpp
/// Printing of kernels and kernel programs.
#include "ir/kernel.h"

#include <fmt/format.h>

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
  int64_t w = 1;
  for (size_t i = 1; i < loops.size(); ++i) w *= loops[i].var->ival;
  for (const auto& l : reduce_loops) w *= l.var->ival;
  return w;
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
const char* reduce_name(ReduceOp r) {
  static const char* names[] = {"sum", "prod", "max", "min", "argmax", "argmin", "any", "all"};
  return names[static_cast<int>(r)];
}
}  // namespace

std::string print(const Kernel& k) {
  std::string s = fmt::format("kernel {}  // {}\n", k.name, k.provenance);
  std::string indent = "  ";
  for (const auto& l : k.loops) {
    s += fmt::format("{}for i{} in 0..{} ({}):\n", indent, l.var->var_id, l.var->ival, loop_kind_name(l.kind));
    indent += "  ";
  }
  if (!k.reductions.empty()) {
    std::string ri = indent;
    for (const auto& l : k.reduce_loops) {
      s += fmt::format("{}reduce i{} in 0..{}:\n", ri, l.var->var_id, l.var->ival);
      ri += "  ";
    }
    for (const auto& r : k.reductions) {
      std::string lets, v = print_expr(r.value, &lets, ri);
      s += lets + fmt::format("{}acc{} = {}({})\n", ri, r.slot, reduce_name(r.op), v);
    }
  }
  for (const auto& st : k.stores) {
    std::string lets, v = print_expr(st.value, &lets, indent);
    s += lets + fmt::format("{}buf{}[{}] = {}\n", indent, st.buffer, print_expr(st.index), v);
  }
  return s;
}

std::string print(const KernelProgram& p) {
  std::string s;
  for (size_t i = 0; i < p.buffers.size(); ++i) {
    const Buffer& b = p.buffers[i];
    const char* kind = b.kind == BufferKind::Input ? "input" : b.kind == BufferKind::Output ? "output" : "temp";
    s += fmt::format("buf{}: {} {} {}[{}] strides [{}]\n", i, kind, b.index, dtype_name(b.dtype),
                     fmt::join(b.sizes, ", "), fmt::join(b.strides, ", "));
  }
  for (const auto& k : p.kernels) s += print(k);
  return s;
}

}  // namespace kiln::ir
