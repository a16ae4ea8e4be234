/// \file simplify.h
/// Graph clean-up: common-subexpression elimination, algebraic identities and dead-node
/// elimination.
///   before: %2 = add(%0, %1)   %3 = add(%0, %1)   %4 = mul(%2, %3)   %5 = mul(%0, 1.0)
///   after:  %2 = add(%0, %1)   %3 = mul(%2, %2)                      (%5 unused: gone)
/// Identities applied: x*1, x/1, x+0, x-0 (only where the dtype and shape are unchanged, and
/// never where they would alter -0.0 or NaN semantics), cast to the same dtype.
/// Tested by tests/cpp/passes_test.cpp.
#pragma once

#include "passes/pass.h"

namespace kiln::passes {
ir::Graph run_simplify(const ir::Graph& g, const PassOptions& opts);
}
