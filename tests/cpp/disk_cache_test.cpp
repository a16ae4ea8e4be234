/// \file disk_cache_test.cpp
/// support/disk_cache (Note [Disk cache]): every fault is a miss or a skipped write, never
/// another key's payload, a crash or a half-read entry; the store stays within its limit.
#include <gtest/gtest.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <thread>
#include <vector>

#include <unistd.h>

#include "support/disk_cache.h"

using namespace kiln;
namespace fs = std::filesystem;

namespace {

std::string fresh_dir(const std::string& name) {
  fs::path d = fs::temp_directory_path() / ("kiln_disk_cache_test_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(d);
  return d.string();
}

std::vector<fs::path> entries(const std::string& dir) {
  std::vector<fs::path> out;
  std::error_code ec;
  for (auto& e : fs::directory_iterator(dir, ec)) out.push_back(e.path());
  return out;
}

std::string read(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

void write(const fs::path& p, const std::string& s) {
  std::ofstream f(p, std::ios::binary | std::ios::trunc);
  f << s;
}

}  // namespace

TEST(DiskCache, StoresAndFindsExactlyItsKey) {
  DiskCache c(fresh_dir("roundtrip"), 1 << 20);
  std::string payload("object\0code", 11);
  EXPECT_FALSE(c.get("key one").has_value());
  c.put("key one", payload);
  ASSERT_TRUE(c.get("key one").has_value());
  EXPECT_EQ(*c.get("key one"), payload);
  EXPECT_FALSE(c.get("key two").has_value());
  EXPECT_EQ(c.usage().first, 1);
  fs::remove_all(c.dir());
}

TEST(DiskCache, AnotherKeysEntryUnderTheSameFileNameIsAMiss) {
  // A hash collision: the file named for key B holds key A's entry.
  DiskCache c(fresh_dir("collision"), 1 << 20);
  c.put("key A", "payload A");
  fs::path a = entries(c.dir()).at(0);
  c.put("key B", "payload B");
  fs::path b;
  for (auto& p : entries(c.dir()))
    if (p != a) b = p;
  fs::copy_file(a, b, fs::copy_options::overwrite_existing);
  EXPECT_FALSE(c.get("key B").has_value());
  EXPECT_EQ(*c.get("key A"), "payload A");
  fs::remove_all(c.dir());
}

TEST(DiskCache, TruncatedCorruptAndForeignFilesAreMisses) {
  DiskCache c(fresh_dir("faults"), 1 << 20);
  std::string key = "the key", payload(5000, 'x');
  c.put(key, payload);
  fs::path p = entries(c.dir()).at(0);
  std::string whole = read(p);
  for (size_t cut : {size_t{0}, size_t{3}, size_t{20}, whole.size() / 2, whole.size() - 1}) {
    write(p, whole.substr(0, cut));
    EXPECT_FALSE(c.get(key).has_value()) << "truncated at " << cut;
  }
  for (size_t at : {size_t{2}, size_t{9}, size_t{17}, size_t{30}, whole.size() - 1}) {
    std::string bad = whole;
    bad[at] ^= 0x20;
    write(p, bad);
    EXPECT_FALSE(c.get(key).has_value()) << "byte " << at << " flipped";
  }
  write(p, "not a kiln cache file at all");
  EXPECT_FALSE(c.get(key).has_value());
  // A later write repairs the entry.
  c.put(key, payload);
  EXPECT_EQ(*c.get(key), payload);
  fs::remove_all(c.dir());
}

TEST(DiskCache, UnusableDirectoryOnlyCostsTheCache) {
  std::string base = fresh_dir("unusable");
  fs::create_directories(base);
  write(fs::path(base) / "file", "x");
  DiskCache c((fs::path(base) / "file" / "sub").string(), 1 << 20);  // below a file: cannot exist
  c.put("k", "v");
  EXPECT_FALSE(c.get("k").has_value());
  EXPECT_EQ(c.usage().first, 0);
  fs::remove_all(base);
}

TEST(DiskCache, StaysWithinItsLimitDroppingTheLeastRecentlyUsed) {
  DiskCache c(fresh_dir("lru"), 3 * 1100);
  std::string payload(1000, 'p');
  c.put("first", payload);
  c.put("second", payload);
  c.put("third", payload);
  // Make "first" the most recently used, then add a fourth: "second" goes.
  auto now = fs::file_time_type::clock::now();
  for (auto& p : entries(c.dir())) fs::last_write_time(p, now - std::chrono::seconds(60));
  ASSERT_TRUE(c.get("first").has_value());
  c.put("fourth", payload);
  DiskCache::wait_for_maintenance();  // the trim runs on a thread of its own
  EXPECT_LE(c.usage().second, 3u * 1100u);
  EXPECT_TRUE(c.get("first").has_value());
  EXPECT_TRUE(c.get("fourth").has_value());
  EXPECT_FALSE(c.get("second").has_value() && c.get("third").has_value());
  // Trimmed to three quarters of the limit: the next write fits without another trim.
  EXPECT_LE(c.usage().second, 3u * 1100u / 4 * 3);
  fs::remove_all(c.dir());
}

TEST(DiskCache, ConcurrentWritersAndReadersSeeWholeEntriesOnly) {
  DiskCache c(fresh_dir("concurrent"), 1 << 24);
  std::string payload(200000, 'q');
  std::atomic<int> torn{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      for (int i = 0; i < 25; ++i) {
        if (t % 2 == 0) c.put("shared", payload);
        auto got = c.get("shared");
        if (got && *got != payload) ++torn;
      }
    });
  for (auto& th : threads) th.join();
  EXPECT_EQ(torn.load(), 0);
  EXPECT_EQ(*c.get("shared"), payload);
  for (auto& p : entries(c.dir())) EXPECT_EQ(p.extension(), ".kc") << p;  // no temporaries left
  fs::remove_all(c.dir());
}

TEST(DiskCache, PartsRoundTripAndShortPayloadsFail) {
  std::string s;
  append_field(s, "abc");
  append_field(s, std::string("\0z", 2));
  size_t pos = 0;
  std::string a, b, c;
  ASSERT_TRUE(read_field(s, pos, &a) && read_field(s, pos, &b));
  EXPECT_EQ(a, "abc");
  EXPECT_EQ(b, std::string("\0z", 2));
  EXPECT_FALSE(read_field(s, pos, &c));
  std::string cut = s.substr(0, s.size() - 1);
  pos = 0;
  EXPECT_TRUE(read_field(cut, pos, &a));
  EXPECT_FALSE(read_field(cut, pos, &b));
}
