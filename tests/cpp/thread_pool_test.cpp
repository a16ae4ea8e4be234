/// \file thread_pool_test.cpp
/// parallel_for: every index runs exactly once, for ranges smaller and larger than the team,
/// across thread-count changes, and when called from several threads at once.
#include <gtest/gtest.h>

#include <atomic>
#include <thread>
#include <vector>

#include "runtime/thread_pool.h"

using kiln::runtime::ThreadPool;

namespace {
// Runs one job big enough to be split and checks each index was visited exactly once.
void run_and_check(ThreadPool& pool, int64_t n) {
  std::vector<std::atomic<int>> hits(n);
  pool.parallel_for(n, ThreadPool::kMinParallelWork, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) hits[i].fetch_add(1);
  });
  for (int64_t i = 0; i < n; ++i) ASSERT_EQ(hits[i].load(), 1) << "index " << i << " of " << n;
}
}  // namespace

TEST(ThreadPool, EveryIndexRunsOnce) {
  ThreadPool pool(3);
  for (int64_t n : {1, 2, 3, 4, 7, 100}) run_and_check(pool, n);
}

TEST(ThreadPool, ResizeBetweenJobsNeverLosesAJob) {
  // An earlier pool of kiln's own lost a job when a worker started late after a resize and
  // parallel_for then waited forever: a hang here is the failure.
  ThreadPool pool(2);
  for (int round = 0; round < 300; ++round) {
    pool.resize(1 + round % 3);
    EXPECT_EQ(pool.threads(), 1 + round % 3);
    run_and_check(pool, 64);
  }
}

TEST(ThreadPool, ConcurrentCallersEachGetTheirWholeRange) {
  ThreadPool pool(2);
  std::vector<std::thread> callers;
  for (int c = 0; c < 3; ++c)
    callers.emplace_back([&pool] {
      for (int r = 0; r < 50; ++r) run_and_check(pool, 97);
    });
  for (auto& t : callers) t.join();
}
