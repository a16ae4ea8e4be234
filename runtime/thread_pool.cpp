/// \file thread_pool.cpp
/// parallel_for on OpenMP (see the header for why OpenMP and not threads of kiln's own).
#include "runtime/thread_pool.h"

#include <algorithm>
#ifdef _OPENMP
#include <omp.h>
#endif

#include <thread>

#include "support/config.h"

namespace kiln::runtime {

ThreadPool& ThreadPool::get() {
  static ThreadPool* pool = [] {
    int64_t n = knob_int("num_threads");
    if (n <= 0) n = std::max(1u, std::thread::hardware_concurrency());
    return new ThreadPool(static_cast<int>(n));
  }();
  return *pool;
}

void ThreadPool::parallel_for(int64_t n, int64_t work_per_item,
                              const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  int t = threads();
  if (t == 1 || n == 1 || n * std::max<int64_t>(work_per_item, 1) < kMinParallelWork) {
    fn(0, n);
    return;
  }
  int chunks = static_cast<int>(std::min<int64_t>(t, n));
  // num_threads() asks for this team size without touching the process-wide OpenMP setting
  // (torch.set_num_threads owns that). The runtime may give fewer threads (nested inside
  // another parallel region, say): chunks follow the team actually formed, so every index runs
  // exactly once whatever it gives.
#ifdef _OPENMP
#pragma omp parallel num_threads(chunks)
  {
    int parts = omp_get_num_threads();
    int i = omp_get_thread_num();
    int64_t begin = n * i / parts, end = n * (i + 1) / parts;
    if (begin < end) fn(begin, end);
  }
#else
  (void)chunks;
  fn(0, n);
#endif
}

#ifdef _OPENMP
SerialOpenMP::SerialOpenMP() : previous_(omp_get_max_threads()) { omp_set_num_threads(1); }
SerialOpenMP::~SerialOpenMP() { omp_set_num_threads(previous_); }
#else
SerialOpenMP::SerialOpenMP() = default;
SerialOpenMP::~SerialOpenMP() = default;
#endif

}  // namespace kiln::runtime
