/// \file drop_unread_stores.cpp
/// Drops stores into temporaries nothing reads (see drop_unread_stores.h).
#include "passes/drop_unread_stores.h"

#include <fmt/format.h>

#include <set>

namespace kiln::passes {
using namespace kiln::ir;

namespace {
/// Whether computing `e` can fail the call: an integer division or remainder by a value that
/// may be zero, or an index check. Such a store stays: its check is what makes eager's error.
bool may_fail(Expr e) {
  std::set<Expr> seen;
  bool fails = false;
  visit(e, seen, [&](Expr x) {
    bool divides = x->op == ExprOp::Div || x->op == ExprOp::Mod || x->op == ExprOp::TruncDiv || x->op == ExprOp::Fmod;
    if (divides && !is_float(x->dtype) && !(is_const(x->b) && x->b->ival != 0)) fails = true;
    if (x->op == ExprOp::IndexCheck) fails = true;
  });
  return fails;
}
}  // namespace

void run_drop_unread_stores(KernelProgram& p, const PassOptions&) {
  std::vector<bool> read = read_outside_kernels(p);
  for (const Kernel& k : p.kernels)
    for (Expr e : k.exprs())
      for (Expr l : buffer_loads(e)) read.at(static_cast<size_t>(l->ival)) = true;
  auto dead = [&](const Store& s) {
    bool unread = p.buffers.at(s.buffer).kind == BufferKind::Temp && !read[s.buffer];
    return unread && !may_fail(s.value) && !may_fail(s.index);
  };
  std::set<int> dropped;
  for (Kernel& k : p.kernels)
    for (Phase& ph : k.phases)
      for (auto it = ph.stores.begin(); it != ph.stores.end();) {
        if (dead(*it)) {
          dropped.insert(it->buffer);
          it = ph.stores.erase(it);
        } else {
          ++it;
        }
      }
  for (int b : dropped)
    p.fusion_log.push_back(fmt::format("buf{} is read by nothing: its stores are dropped", b));
}

}  // namespace kiln::passes
