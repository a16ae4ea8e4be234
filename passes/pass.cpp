/// \file pass.cpp
/// The PassRunner: names, times, dumps (only when the graph changed) and verifies each pass.
#include "passes/pass.h"

#include <fmt/format.h>

#include <chrono>
#include <cstdio>

namespace kiln::passes {

void time_step(const char* name, const PassOptions& opts, const std::function<void()>& step) {
  auto t0 = std::chrono::steady_clock::now();
  step();
  double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  if (opts.timings) opts.timings->push_back(fmt::format("{}: {:.3f} ms", name, ms));
}

ir::Graph run_graph_pass(const char* name, ir::Graph (*pass)(const ir::Graph&, const PassOptions&),
                         const ir::Graph& g, const PassOptions& opts) {
  auto t0 = std::chrono::steady_clock::now();
  ir::Graph out = pass(g, opts);
  double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  if (opts.timings) opts.timings->push_back(fmt::format("{}: {:.3f} ms", name, ms));
  if (opts.verify) ir::verify(out);
  bool changed = ir::structural_hash(out) != ir::structural_hash(g);
  if (changed && (opts.log_ir || opts.dump)) {
    std::string text = ir::print(out);
    if (opts.log_ir) std::fprintf(stderr, "[kiln ir] after %s:\n%s", name, text.c_str());
    if (opts.dump) opts.dump(std::string("graph_after_") + name + ".txt", text);
  }
  return out;
}

}  // namespace kiln::passes
