/// \file hash.h
/// A stable 64-bit hash combiner (no pointer values), used for structural hashing and cache keys.
#pragma once

#include <cstdint>
#include <cstring>
#include <string_view>

namespace kiln {

/// Mixes `v` into `seed` (splitmix64 finaliser; stable across runs and platforms).
inline uint64_t hash_combine(uint64_t seed, uint64_t v) {
  uint64_t x = seed ^ (v + 0x9e3779b97f4a7c15ULL + (seed << 6) + (seed >> 2));
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  x ^= x >> 31;
  return x;
}

inline uint64_t hash_double(double d) {
  uint64_t bits;
  std::memcpy(&bits, &d, sizeof bits);
  return bits;
}

/// Whether two doubles are one value for a trace: the same bits (0.0 and -0.0 differ: 1 / x
/// tells them apart), except that every NaN is one value.
inline bool same_double(double a, double b) { return hash_double(a) == hash_double(b) || (a != a && b != b); }

/// FNV-1a over a string.
inline uint64_t hash_string(std::string_view s) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (unsigned char c : s) h = (h ^ c) * 0x100000001b3ULL;
  return h;
}

}  // namespace kiln
