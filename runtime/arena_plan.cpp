/// \file arena_plan.cpp
/// Greedy by size: the largest temporaries are placed first, each at the lowest offset where it
/// meets no placed temporary that is live at the same time (TensorFlow Lite's arena planner
/// works the same way). A few hundred temporaries at most: quadratic is fine.
#include "runtime/arena_plan.h"

#include <algorithm>

namespace kiln::runtime {

ArenaPlan plan_arena(const ir::KernelProgram& p, size_t align) {
  ArenaPlan plan;
  plan.offset.assign(p.buffers.size(), 0);
  std::vector<ir::BufferLifetime> life = ir::buffer_lifetimes(p, /*epilogues_at_product=*/true);
  struct Item {
    int buffer;
    size_t bytes;
  };
  std::vector<Item> temps;
  for (size_t i = 0; i < p.buffers.size(); ++i) {
    const ir::Buffer& b = p.buffers[i];
    if (b.kind != ir::BufferKind::Temp) continue;
    size_t bytes = static_cast<size_t>(b.storage_numel()) * ir::dtype_bytes(b.dtype);
    temps.push_back({static_cast<int>(i), (bytes + align - 1) / align * align});
  }
  std::stable_sort(temps.begin(), temps.end(), [](const Item& a, const Item& b) { return a.bytes > b.bytes; });
  std::vector<Item> placed;
  auto overlap_in_time = [&](int a, int b) {
    const ir::BufferLifetime &x = life[a], &y = life[b];
    // A buffer no step touches is live nowhere; give it memory of its own anyway (never shared).
    if (x.first < 0 || y.first < 0) return true;
    return x.first <= y.last && y.first <= x.last;
  };
  for (const Item& t : temps) {
    // Candidate offsets: 0 and the end of every placed temporary live at the same time.
    std::vector<size_t> candidates{0};
    std::vector<const Item*> conflicts;
    for (const Item& q : placed)
      if (overlap_in_time(t.buffer, q.buffer)) {
        conflicts.push_back(&q);
        candidates.push_back(plan.offset[q.buffer] + q.bytes);
      }
    std::sort(candidates.begin(), candidates.end());
    size_t at = candidates.back();
    for (size_t c : candidates) {
      bool fits = std::none_of(conflicts.begin(), conflicts.end(), [&](const Item* q) {
        size_t qo = plan.offset[q->buffer];
        return c < qo + q->bytes && qo < c + t.bytes;
      });
      if (fits) {
        at = c;
        break;
      }
    }
    plan.offset[t.buffer] = at;
    plan.bytes = std::max(plan.bytes, at + t.bytes);
    placed.push_back(t);
  }
  return plan;
}

}  // namespace kiln::runtime
