/// \file lower_pointwise.h
/// Scalar semantics of graph ops in loop IR: what one element of a pointwise op computes from
/// its operands' elements (torch's rules for floor division, remainder, pow special cases,
/// sign, logical ops), and how a view maps its index to its source's index. Used by
/// lower_to_loops, which decides where these expressions are evaluated.
#pragma once

#include <vector>

#include "ir/expr.h"
#include "ir/graph.h"

namespace kiln::passes {

/// The element of pointwise node `n` given its operands' elements (already broadcast).
ir::Expr lower_pointwise(ir::Context& c, const ir::Node& n, const std::vector<ir::Expr>& operands);

/// Index into the source of view `n` (sizes `src_sizes`) for index `idx` of the view.
std::vector<ir::Expr> view_source_index(ir::Context& c, const ir::Node& n, const ir::Sizes& src_sizes,
                                        const std::vector<ir::Expr>& idx);

/// Row-major linear index of `idx` for the given element strides, simplified.
ir::Expr linear_index(ir::Context& c, const std::vector<ir::Expr>& idx, const ir::Sizes& strides);

}  // namespace kiln::passes
