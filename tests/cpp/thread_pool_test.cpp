/// \file thread_pool_test.cpp
/// The worker pool: every index runs exactly once, and resizing between jobs never loses a job
/// (a worker that starts late must still take the first job after the resize, or parallel_for
/// waits forever).
#include <gtest/gtest.h>

#include <atomic>
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
  // Before the fix, a freshly started worker read the generation counter itself and could read
  // it after the next job had bumped it: that job then waited forever. Hundreds of resizes make
  // the window likely; a hang here is the failure.
  ThreadPool pool(2);
  for (int round = 0; round < 300; ++round) {
    pool.resize(1 + round % 3);
    EXPECT_EQ(pool.threads(), 1 + round % 3);
    run_and_check(pool, 64);
  }
}
