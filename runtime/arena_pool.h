/// \file arena_pool.h
/// Memory for the temporaries of compiled programs: arenas reused across calls (no allocation
/// and no page faults per call), shared by the instances of a dynamic program (one per size:
/// runtime/dynamic_program.h), which then hold the largest arena any of them needs instead of
/// one arena each.
#pragma once

#include <cstddef>
#include <mutex>
#include <utility>
#include <vector>

namespace kiln::runtime {

class ArenaPool {
 public:
  static constexpr size_t kAlign = 64;
  ~ArenaPool();
  /// An arena of at least `bytes` (64-byte aligned); null for 0 bytes. Throws bad_alloc.
  char* acquire(size_t bytes);
  /// Returns an arena `acquire` gave for `bytes`; `keep`: for the next call (else freed).
  void release(char* arena, size_t bytes, bool keep);

 private:
  std::mutex mu_;
  std::vector<std::pair<char*, size_t>> free_;  // arenas not in use, with their capacity
  std::vector<std::pair<char*, size_t>> used_;  // arenas in use, with their capacity
};

}  // namespace kiln::runtime
