/// \file thread_pool.cpp
/// Worker threads that wait on a generation counter for the next parallel_for.
#include "runtime/thread_pool.h"

#include "support/config.h"

namespace kiln::runtime {

ThreadPool& ThreadPool::get() {
  // Never destroyed: workers must not be joined during interpreter shutdown.
  static ThreadPool* pool = [] {
    int64_t n = knob_int("num_threads");
    if (n <= 0) n = std::max(1u, std::thread::hardware_concurrency());
    return new ThreadPool(static_cast<int>(n));
  }();
  return *pool;
}

ThreadPool::ThreadPool(int threads) { start(threads); }
ThreadPool::~ThreadPool() { stop(); }

void ThreadPool::start(int threads) {
  // The generation is read here, before any worker exists, and handed to each worker: a worker
  // that read it itself could start after the next parallel_for had already bumped it, skip that
  // job and leave parallel_for waiting for it forever. Callers hold run_mutex_ (or construct),
  // so no parallel_for runs between this read and the workers' first wait.
  uint64_t seen;
  {
    std::lock_guard<std::mutex> lock(mu_);
    quit_ = false;
    seen = generation_;
  }
  for (int i = 1; i < threads; ++i) workers_.emplace_back([this, i, seen] { worker(i, seen); });
  threads_.store(threads, std::memory_order_relaxed);
}

void ThreadPool::stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    quit_ = true;
  }
  cv_.notify_all();
  for (auto& t : workers_) t.join();
  workers_.clear();
  threads_.store(1, std::memory_order_relaxed);
}

void ThreadPool::resize(int threads) {
  std::lock_guard<std::mutex> run(run_mutex_);
  if (threads < 1) threads = 1;
  if (threads == static_cast<int>(workers_.size()) + 1) return;
  stop();
  start(threads);
}

void ThreadPool::worker(int index, uint64_t seen) {
  for (;;) {
    const std::function<void(int64_t, int64_t)>* job;
    int64_t n;
    int chunks;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return quit_ || generation_ != seen; });
      if (quit_) return;
      seen = generation_;
      job = job_;
      n = n_;
      chunks = chunks_;
    }
    if (index < chunks) {
      int64_t begin = n * index / chunks, end = n * (index + 1) / chunks;
      if (begin < end) (*job)(begin, end);
    }
    std::lock_guard<std::mutex> lock(mu_);
    if (--pending_ == 0) done_cv_.notify_one();
  }
}

void ThreadPool::parallel_for(int64_t n, int64_t work_per_item,
                              const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  int t = threads();
  if (t == 1 || n == 1 || n * std::max<int64_t>(work_per_item, 1) < kMinParallelWork) {
    fn(0, n);
    return;
  }
  std::lock_guard<std::mutex> run(run_mutex_);
  // Re-read under the lock: a resize() may have run since the unlocked read above.
  t = static_cast<int>(workers_.size()) + 1;
  if (t == 1) {
    fn(0, n);
    return;
  }
  int chunks = static_cast<int>(std::min<int64_t>(t, n));
  {
    std::lock_guard<std::mutex> lock(mu_);
    job_ = &fn;
    n_ = n;
    chunks_ = chunks;
    pending_ = static_cast<int>(workers_.size());
    ++generation_;
  }
  cv_.notify_all();
  fn(0, n / chunks);
  std::unique_lock<std::mutex> lock(mu_);
  done_cv_.wait(lock, [&] { return pending_ == 0; });
}

}  // namespace kiln::runtime
