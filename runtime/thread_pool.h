/// \file thread_pool.h
/// A fixed pool of worker threads for compiled CPU kernels. `parallel_for` splits [0, n) into
/// one contiguous chunk per thread (the caller runs the first), which keeps each thread on its
/// own rows and its own cache lines; small ranges run on the caller alone.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace kiln::runtime {

class ThreadPool {
 public:
  /// The process-wide pool, sized by KILN_NUM_THREADS (0: all cores) on first use.
  static ThreadPool& get();
  explicit ThreadPool(int threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int threads() const { return threads_.load(std::memory_order_relaxed); }
  /// Changes the thread count (joins and restarts the workers).
  void resize(int threads);
  /// Runs fn(begin, end) over chunks of [0, n); uses one thread when n * work_per_item is
  /// below `min_parallel_work`. Calls from several threads at once are serialised.
  void parallel_for(int64_t n, int64_t work_per_item, const std::function<void(int64_t, int64_t)>& fn);

  static constexpr int64_t kMinParallelWork = 32768;

 private:
  void start(int threads);
  void stop();
  void worker(int index, uint64_t seen);

  std::vector<std::thread> workers_;
  std::mutex run_mutex_;  // one parallel_for at a time
  std::mutex mu_;
  std::condition_variable cv_, done_cv_;
  const std::function<void(int64_t, int64_t)>* job_ = nullptr;
  int64_t n_ = 0;
  int chunks_ = 0;
  uint64_t generation_ = 0;
  int pending_ = 0;
  bool quit_ = false;
  std::atomic<int> threads_{1};  // read without locks by parallel_for's one-thread path
};

}  // namespace kiln::runtime
