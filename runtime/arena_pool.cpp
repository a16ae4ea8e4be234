/// \file arena_pool.cpp
/// Arenas for compiled programs' temporaries (see arena_pool.h).
#include "runtime/arena_pool.h"

#include <algorithm>
#include <cstdlib>
#include <new>

namespace kiln::runtime {

ArenaPool::~ArenaPool() {
  for (auto& [a, n] : free_) std::free(a);
  for (auto& [a, n] : used_) std::free(a);  // only if a program outlived its pool's users
}

char* ArenaPool::acquire(size_t bytes) {
  if (bytes == 0) return nullptr;
  std::lock_guard<std::mutex> lock(mu_);
  // The smallest free arena that fits.
  auto best = free_.end();
  for (auto it = free_.begin(); it != free_.end(); ++it)
    if (it->second >= bytes && (best == free_.end() || it->second < best->second)) best = it;
  if (best != free_.end()) {
    used_.push_back(*best);
    free_.erase(best);
    return used_.back().first;
  }
  // None fits: a new one, and the free ones too small for this size are dropped (the sizes a
  // dynamic program meets grow its one arena instead of piling up arenas).
  for (auto& [a, n] : free_) std::free(a);
  free_.clear();
  size_t rounded = (bytes + kAlign - 1) / kAlign * kAlign;
  char* a = static_cast<char*>(std::aligned_alloc(kAlign, rounded));
  if (!a) throw std::bad_alloc();
  used_.emplace_back(a, rounded);
  return a;
}

void ArenaPool::release(char* arena, size_t /*bytes*/, bool keep) {
  if (!arena) return;
  std::lock_guard<std::mutex> lock(mu_);
  auto it = std::find_if(used_.begin(), used_.end(), [&](const auto& u) { return u.first == arena; });
  if (it == used_.end()) return;
  if (keep)
    free_.push_back(*it);
  else
    std::free(arena);
  used_.erase(it);
}

}  // namespace kiln::runtime
