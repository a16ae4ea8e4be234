/// \file disk_cache.cpp
/// See Note [Disk cache] in disk_cache.h.
#include "support/disk_cache.h"

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <set>
#include <sstream>
#include <thread>
#include <vector>

#include <unistd.h>

#include "support/config.h"
#include "support/hash.h"

namespace kiln {
namespace fs = std::filesystem;
namespace {

constexpr char kMagic[8] = {'K', 'I', 'L', 'N', 'C', 'A', 'C', 'H'};
constexpr uint32_t kFormat = 1;
constexpr const char* kSuffix = ".kc";

void append_u64(std::string& s, uint64_t v) { s.append(reinterpret_cast<const char*>(&v), sizeof v); }

bool read_u64(const std::string& s, size_t& pos, uint64_t* v) {
  if (pos + sizeof *v > s.size()) return false;
  std::memcpy(v, s.data() + pos, sizeof *v);
  pos += sizeof *v;
  return true;
}

/// Checksum of the body (with its length): a torn or bit-flipped entry reads as a miss.
uint64_t checksum(std::string_view body) {
  return hash_combine(hash_string(body), body.size());
}

bool read_whole(const std::string& path, std::string* out) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return false;
  std::ostringstream ss;
  ss << f.rdbuf();
  if (!f && !f.eof()) return false;
  *out = ss.str();
  return true;
}

}  // namespace

void append_field(std::string& out, std::string_view part) {
  append_u64(out, part.size());
  out += part;
}

bool read_field(const std::string& in, size_t& pos, std::string* part) {
  uint64_t n = 0;
  if (!read_u64(in, pos, &n) || n > in.size() - pos) return false;
  *part = in.substr(pos, n);
  pos += n;
  return true;
}

std::string disk_cache_root() {
  if (!knob_bool("cache")) return "";
  if (const std::string& d = knob("cache_dir"); !d.empty()) return d;
  if (const char* x = std::getenv("XDG_CACHE_HOME"); x && *x) return std::string(x) + "/kiln";
  if (const char* h = std::getenv("HOME"); h && *h) return std::string(h) + "/.cache/kiln";
  return "";
}

std::mutex g_stats_mu;
std::map<std::string, DiskCache::Stats>& all_stats() {
  static auto* m = new std::map<std::string, DiskCache::Stats>();
  return *m;
}

void count(const std::string& kind, uint64_t DiskCache::Stats::*field) {
  std::lock_guard<std::mutex> lock(g_stats_mu);
  ++(all_stats()[kind].*field);
}

DiskCache::Stats DiskCache::stats(const std::string& kind) {
  std::lock_guard<std::mutex> lock(g_stats_mu);
  auto it = all_stats().find(kind);
  return it == all_stats().end() ? Stats{} : it->second;
}

DiskCache::DiskCache(const std::string& kind) : kind_(kind) {
  std::string root = disk_cache_root();
  if (root.empty()) return;
  dir_ = root + "/" + kind;
  limit_bytes_ = static_cast<uint64_t>(std::max<int64_t>(0, knob_int("cache_size_mb"))) << 20;
}

DiskCache::DiskCache(std::string dir, uint64_t limit_bytes)
    : kind_("test"), dir_(std::move(dir)), limit_bytes_(limit_bytes) {}

std::string DiskCache::path_for(const std::string& key) const {
  return fmt::format("{}/{:016x}{}", dir_, hash_string(key), kSuffix);
}

std::optional<std::string> DiskCache::get(const std::string& key) const {
  if (!enabled()) return std::nullopt;
  auto hit = lookup(key);
  count(kind_, hit ? &Stats::hits : &Stats::misses);
  return hit;
}

std::optional<std::string> DiskCache::lookup(const std::string& key) const {
  std::string path = path_for(key), data;
  if (!read_whole(path, &data)) return std::nullopt;
  // magic | format | checksum of the body | body = key size | key | payload
  size_t pos = sizeof kMagic;
  uint64_t format = 0, sum = 0, key_size = 0;
  if (data.size() < pos || std::memcmp(data.data(), kMagic, sizeof kMagic) != 0) return std::nullopt;
  if (!read_u64(data, pos, &format) || format != kFormat || !read_u64(data, pos, &sum)) return std::nullopt;
  std::string_view body(data.data() + pos, data.size() - pos);
  if (checksum(body) != sum) return std::nullopt;
  if (!read_u64(data, pos, &key_size) || key_size > data.size() - pos) return std::nullopt;
  if (data.compare(pos, key_size, key) != 0 || key_size != key.size()) return std::nullopt;
  pos += key_size;
  std::error_code ec;
  fs::last_write_time(path, fs::file_time_type::clock::now(), ec);  // recently used
  return data.substr(pos);
}

void DiskCache::put(const std::string& key, const std::string& payload) const {
  if (!enabled()) return;
  std::error_code ec;
  fs::create_directories(dir_, ec);
  if (ec) return;
  std::string body;
  append_u64(body, key.size());
  body += key;
  body += payload;
  std::string data(kMagic, sizeof kMagic);
  append_u64(data, kFormat);
  append_u64(data, checksum(body));
  data += body;
  std::string path = path_for(key);
  // Unique per process, thread and moment: several processes and threads may write one entry.
  static std::atomic<uint64_t> serial{0};
  std::string tmp = fmt::format("{}.tmp{}.{}.{}", path, static_cast<long>(::getpid()),
                                std::hash<std::thread::id>()(std::this_thread::get_id()), serial++);
  {
    std::ofstream f(tmp, std::ios::binary);
    if (f) f.write(data.data(), static_cast<std::streamsize>(data.size()));
    if (!f) {
      f.close();
      fs::remove(tmp, ec);
      return;  // a full disk or a read-only directory: no entry, compile again next time
    }
  }
  fs::rename(tmp, path, ec);
  if (ec) {
    fs::remove(tmp, ec);
    return;
  }
  count(kind_, &Stats::writes);
  keep_within_limit(dir_, data.size(), limit_bytes_);
}

namespace {
/// Per store directory: its bytes as this process knows them (scanned once, then counted), and
/// whether a scan or trim of it is under way.
struct KnownUsage {
  std::mutex mu;
  std::condition_variable idle;
  std::map<std::string, uint64_t> bytes;
  std::set<std::string> busy;
  std::set<std::string> dirty;  // written while being scanned: scanned again
};
KnownUsage& known_usage() {
  static auto* u = new KnownUsage();  // never destroyed: a maintenance thread may outlive main()
  return *u;
}

/// Scans `dir`; when it holds more than `limit` bytes, removes the least recently used entries
/// down to three quarters of the limit, so that a full store is trimmed (and scanned) once per
/// quarter of its size written, not at every write. Returns the bytes left.
uint64_t scan_and_trim(const std::string& dir, uint64_t limit) {
  std::error_code ec;
  struct Entry {
    fs::path path;
    fs::file_time_type used;
    uint64_t bytes;
  };
  std::vector<Entry> entries;
  uint64_t total = 0;
  for (auto it = fs::directory_iterator(dir, ec); !ec && it != fs::directory_iterator(); it.increment(ec)) {
    if (it->path().extension() != kSuffix) continue;
    std::error_code e1, e2;
    uint64_t bytes = it->file_size(e1);
    auto used = it->last_write_time(e2);
    if (e1 || e2) continue;
    entries.push_back({it->path(), used, bytes});
    total += bytes;
  }
  if (total <= limit) return total;
  const uint64_t target = limit / 4 * 3;
  std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) { return a.used < b.used; });
  for (const Entry& e : entries) {
    if (total <= target) break;
    if (fs::remove(e.path, ec)) total -= e.bytes;
  }
  return total;
}
}  // namespace

void DiskCache::keep_within_limit(const std::string& dir, uint64_t bytes, uint64_t limit) {
  KnownUsage& u = known_usage();
  {
    std::lock_guard<std::mutex> lock(u.mu);
    auto it = u.bytes.find(dir);
    if (it != u.bytes.end()) {
      it->second += bytes;  // an overwritten entry counts twice: at worst an early trim
      if (it->second <= limit) return;
    }
    if (!u.busy.insert(dir).second) {  // a scan of this store is under way: it runs once more
      u.dirty.insert(dir);
      return;
    }
  }
  // The first write of a process scans the store, and a full one is trimmed: tens of
  // milliseconds for a store of 20,000 entries (more to remove thousands), so both run beside
  // the compile that wrote, not in it.
  std::thread([dir, limit] {
    KnownUsage& k = known_usage();
    for (;;) {
      uint64_t total = scan_and_trim(dir, limit);
      std::lock_guard<std::mutex> lock(k.mu);
      if (k.dirty.erase(dir)) continue;
      k.bytes[dir] = total;
      k.busy.erase(dir);
      k.idle.notify_all();
      return;
    }
  }).detach();
}

void DiskCache::wait_for_maintenance() {
  KnownUsage& u = known_usage();
  std::unique_lock<std::mutex> lock(u.mu);
  u.idle.wait(lock, [&] { return u.busy.empty(); });
}

int DiskCache::clear() const {
  if (!enabled()) return 0;
  int n = 0;
  std::error_code ec;
  for (auto it = fs::directory_iterator(dir_, ec); !ec && it != fs::directory_iterator(); it.increment(ec)) {
    std::error_code e;
    if (fs::remove(it->path(), e)) ++n;
  }
  return n;
}

std::pair<int, uint64_t> DiskCache::usage() const {
  int n = 0;
  uint64_t bytes = 0;
  std::error_code ec;
  if (!enabled()) return {0, 0};
  for (auto it = fs::directory_iterator(dir_, ec); !ec && it != fs::directory_iterator(); it.increment(ec)) {
    if (it->path().extension() != kSuffix) continue;
    std::error_code e;
    uint64_t b = it->file_size(e);
    if (e) continue;
    ++n;
    bytes += b;
  }
  return {n, bytes};
}

}  // namespace kiln
