/// \file arena_plan_test.cpp
/// runtime/arena_plan: temporaries live at the same time never share memory; others do.
#include <gtest/gtest.h>

#include "ir/graph_editor.h"
#include "passes/pipeline.h"
#include "runtime/arena_plan.h"
#include "runtime/arena_pool.h"

using namespace kiln;
using namespace kiln::ir;

TEST(ArenaPlan, ChainOfProductsReusesMemoryAndNeverOverlapsLiveTemporaries) {
  Graph g;
  GraphEditor e(g);
  int x = e.input(DType::Float32, {64, 64}, {64, 1}, 0);
  int h = x;
  for (int k = 0; k < 5; ++k) {
    int w = e.input(DType::Float32, {64, 64}, {64, 1}, k + 1);
    h = e.unary(OpKind::Tanh, e.matmul(h, w));
  }
  g.outputs = {h};
  KernelProgram p = passes::run_pipeline(g, {});
  runtime::ArenaPlan plan = runtime::plan_arena(p);
  std::vector<BufferLifetime> life = buffer_lifetimes(p, true);
  size_t sum = 0;
  std::vector<int> temps;
  for (size_t i = 0; i < p.buffers.size(); ++i)
    if (p.buffers[i].kind == BufferKind::Temp) {
      temps.push_back(static_cast<int>(i));
      sum += static_cast<size_t>(p.buffers[i].storage_numel()) * dtype_bytes(p.buffers[i].dtype);
    }
  ASSERT_GE(temps.size(), 4u);
  EXPECT_LT(plan.bytes, sum);  // a chain needs two or three live temporaries at a time, not all
  for (int a : temps)
    for (int b : temps) {
      if (a >= b) continue;
      bool live_together = life[a].first <= life[b].last && life[b].first <= life[a].last;
      size_t ea = plan.offset[a] + static_cast<size_t>(p.buffers[a].storage_numel()) * dtype_bytes(p.buffers[a].dtype);
      size_t eb = plan.offset[b] + static_cast<size_t>(p.buffers[b].storage_numel()) * dtype_bytes(p.buffers[b].dtype);
      bool share = plan.offset[a] < eb && plan.offset[b] < ea;
      EXPECT_FALSE(live_together && share) << "buffers " << a << " and " << b;
      EXPECT_LE(ea, plan.bytes);
    }
}

TEST(ArenaPool, ReusesGrowsAndSharesOneArena) {
  runtime::ArenaPool pool;
  EXPECT_EQ(pool.acquire(0), nullptr);
  char* a = pool.acquire(100);
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(a) % runtime::ArenaPool::kAlign, 0u);
  pool.release(a, 100, true);
  EXPECT_EQ(pool.acquire(64), a);  // reused: it fits
  char* b = pool.acquire(64);      // the first is in use: another
  EXPECT_NE(b, a);
  pool.release(a, 64, true);
  pool.release(b, 64, true);
  char* big = pool.acquire(1 << 20);  // none fits: a new one, the small free ones dropped
  pool.release(big, 1 << 20, true);
  EXPECT_EQ(pool.acquire(100), big);  // the large one serves small sizes too
  pool.release(big, 100, false);      // not kept: freed
}
