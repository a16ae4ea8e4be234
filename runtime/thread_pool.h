/// \file thread_pool.h
/// Parallel loops for compiled CPU kernels. `parallel_for` splits [0, n) into one contiguous
/// chunk per thread, which keeps each thread on its own rows and its own cache lines; small
/// ranges run on the caller alone.
///
/// The threads are OpenMP's. PyTorch runs its CPU ops on libgomp, and inside a Python process
/// kiln's libgomp is the very library torch loaded (same soname), so kiln's kernels and the
/// eager ops of the same program (fallback nodes) run on one team of threads. A pool of kiln's
/// own would compete with torch's OpenMP workers, which spin for a while after every op: on a
/// 2-core machine that halved the speed of the kernels that followed a matmul.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>

namespace kiln::runtime {

class ThreadPool {
 public:
  /// The process-wide pool, sized by KILN_NUM_THREADS (0: all cores) on first use.
  static ThreadPool& get();
  explicit ThreadPool(int threads) { resize(threads); }
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int threads() const { return threads_.load(std::memory_order_relaxed); }
  /// Changes the thread count used by later parallel_for calls (calls in flight keep theirs).
  void resize(int threads) { threads_.store(threads < 1 ? 1 : threads, std::memory_order_relaxed); }
  /// Runs fn(begin, end) over chunks of [0, n); uses one thread when n * work_per_item is
  /// below `kMinParallelWork`. Safe to call from several threads at once.
  void parallel_for(int64_t n, int64_t work_per_item, const std::function<void(int64_t, int64_t)>& fn);

  static constexpr int64_t kMinParallelWork = 32768;

 private:
  std::atomic<int> threads_{1};
};

/// Makes libraries that thread with OpenMP (oneDNN's GEMM) run single-threaded while in scope:
/// they size their teams from the calling task's OpenMP thread count, which this sets to 1 and
/// restores. kiln already runs such calls on each of its threads; a team inside each would
/// oversubscribe the cores, and a call made outside a parallel region would take every core
/// whatever KILN_NUM_THREADS says.
class SerialOpenMP {
 public:
  SerialOpenMP();
  ~SerialOpenMP();
  SerialOpenMP(const SerialOpenMP&) = delete;
  SerialOpenMP& operator=(const SerialOpenMP&) = delete;

 private:
  int previous_ = 1;
};

}  // namespace kiln::runtime
