/// \file disk_cache.h
/// Compiled code kept on disk between processes: the CPU's object files (codegen_cpu/llvm_jit)
/// and NVRTC's PTX/cubins (codegen_cuda/nvrtc_compiler) share this store.
///
/// Note [Disk cache]: an entry is one file named by a 64-bit hash of its key, holding a header
/// (magic, format version, checksum of the rest), the whole key text and the payload. A lookup
/// compares the stored key with the caller's byte for byte, so a hash collision, a truncated or
/// corrupt file, or a file of another format is a miss, never someone else's code. Writes go
/// through a temporary file and a rename, so a reader never sees half an entry and two writers
/// of one entry leave one whole file. Every I/O failure (an unreadable, read-only or full
/// directory) is a miss or a skipped write: the caller compiles as if there were no cache. A
/// hit refreshes the file's modification time; when the store grows past its limit, the least
/// recently used entries go, down to three quarters of the limit.
///
/// Knobs (support/config.h, read each time a store is made, so kiln.config.set applies to the
/// next compile): KILN_CACHE=0 turns it off; KILN_CACHE_DIR (default $XDG_CACHE_HOME/kiln, else
/// ~/.cache/kiln); KILN_CACHE_SIZE_MB (default 1024) bounds each kind's directory.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace kiln {

class DiskCache {
 public:
  /// The store for one kind of code ("cpu", "cuda"): a directory under the cache root, or
  /// none (every get misses, every put is skipped) when KILN_CACHE=0 or no root is known.
  explicit DiskCache(const std::string& kind);
  /// A store in `dir` with a size limit in bytes (tests).
  DiskCache(std::string dir, uint64_t limit_bytes);

  bool enabled() const { return !dir_.empty(); }
  const std::string& dir() const { return dir_; }

  /// The payload stored under exactly `key`, if a whole, intact entry exists.
  std::optional<std::string> get(const std::string& key) const;
  /// Stores `payload` under `key` (best effort). A store past its limit is trimmed on a
  /// thread of its own (wait_for_maintenance waits for it).
  void put(const std::string& key, const std::string& payload) const;
  /// Waits until no store of this process is being scanned or trimmed (tests).
  static void wait_for_maintenance();

  /// This process's lookups that found an entry / found none, and entries written, per kind.
  struct Stats {
    uint64_t hits = 0, misses = 0, writes = 0;
  };
  static Stats stats(const std::string& kind);

  /// Removes every entry; returns how many files went.
  int clear() const;
  /// Number of entries and their total bytes.
  std::pair<int, uint64_t> usage() const;

 private:
  std::string path_for(const std::string& key) const;
  std::optional<std::string> lookup(const std::string& key) const;
  /// Counts a write of `bytes` into `dir`; scans (once per process) and trims it beside the
  /// caller when it may be past `limit`.
  static void keep_within_limit(const std::string& dir, uint64_t bytes, uint64_t limit);
  std::string kind_;
  std::string dir_;
  uint64_t limit_bytes_ = 0;
};

/// The cache root chosen by the knobs ("" when disabled).
std::string disk_cache_root();

/// Payloads of several parts: each part is appended as its length and its bytes, and read back
/// in order (false once the payload ends early or a length overruns it).
void append_field(std::string& out, std::string_view part);
bool read_field(const std::string& in, size_t& pos, std::string* part);

}  // namespace kiln
