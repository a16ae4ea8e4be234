/// \file debug_dump.h
/// KILN_DEBUG_DIR: writes one compile's artifacts (graph, IR after each pass, loop IR, LLVM IR,
/// assembly, CUDA source) into its folder, remembering the first failure instead of throwing
/// (a debug folder that cannot be written must not stop a compile).
#pragma once

#include <filesystem>
#include <fstream>
#include <string>

namespace kiln::runtime {

struct DebugDump {
  std::string dir;    ///< empty: nothing is written
  std::string error;  ///< the first failure, for a warning
  void write(const std::string& name, const std::string& text) {
    if (dir.empty() || !error.empty()) return;
    std::error_code ec;
    std::filesystem::create_directories(dir, ec);
    std::ofstream f(dir + "/" + name);
    if (ec || !f) {
      error = "kiln: cannot write KILN_DEBUG_DIR artifacts to '" + dir + "'";
      return;
    }
    f << text;
  }
};

}  // namespace kiln::runtime
