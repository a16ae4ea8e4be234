/// \file min_cut.cpp
/// Dinic's algorithm: BFS levels, then blocking flows by DFS along level-increasing edges.
/// O(V^2 E) in theory; the joint graphs it cuts have a few thousand nodes at most.
#include "support/min_cut.h"

#include <algorithm>
#include <deque>

namespace kiln {

MinCut::MinCut(int nodes) : out_(nodes), level_(nodes), next_(nodes), reaches_sink_(nodes, false) {}

void MinCut::add_edge(int u, int v, int64_t cap) {
  out_[u].push_back(static_cast<int>(edges_.size()));
  edges_.push_back({v, std::min(cap, kInfinite)});
  out_[v].push_back(static_cast<int>(edges_.size()));
  edges_.push_back({u, 0});
}

bool MinCut::levels(int source, int sink) {
  std::fill(level_.begin(), level_.end(), -1);
  std::deque<int> queue{source};
  level_[source] = 0;
  while (!queue.empty()) {
    int u = queue.front();
    queue.pop_front();
    for (int e : out_[u]) {
      const Edge& ed = edges_[e];
      if (ed.cap > 0 && level_[ed.to] < 0) {
        level_[ed.to] = level_[u] + 1;
        queue.push_back(ed.to);
      }
    }
  }
  return level_[sink] >= 0;
}

int64_t MinCut::push(int u, int sink, int64_t limit) {
  if (u == sink) return limit;
  for (int& i = next_[u]; i < static_cast<int>(out_[u].size()); ++i) {
    int e = out_[u][i];
    Edge& ed = edges_[e];
    if (ed.cap <= 0 || level_[ed.to] != level_[u] + 1) continue;
    int64_t got = push(ed.to, sink, std::min(limit, ed.cap));
    if (got > 0) {
      // An infinite edge stays infinite: subtracting would make it finite and cuttable.
      if (ed.cap < kInfinite) ed.cap -= got;
      if (edges_[e ^ 1].cap < kInfinite) edges_[e ^ 1].cap = std::min(kInfinite, edges_[e ^ 1].cap + got);
      return got;
    }
  }
  return 0;
}

int64_t MinCut::solve(int source, int sink) {
  int64_t flow = 0;
  while (flow < kInfinite && levels(source, sink)) {
    std::fill(next_.begin(), next_.end(), 0);
    while (int64_t f = push(source, sink, kInfinite)) {
      flow = std::min(kInfinite, flow + f);
      if (flow >= kInfinite) break;
    }
  }
  // The sink side: nodes that still reach the sink through edges with residual capacity left
  // (edge e = u -> v leaves u; its residual capacity is edges_[e].cap).
  std::fill(reaches_sink_.begin(), reaches_sink_.end(), false);
  std::deque<int> queue{sink};
  reaches_sink_[sink] = true;
  while (!queue.empty()) {
    int v = queue.front();
    queue.pop_front();
    for (int e : out_[v]) {
      // e ^ 1 is an edge u -> v for each edge e = v -> u stored at v
      int u = edges_[e].to;
      if (edges_[e ^ 1].cap > 0 && !reaches_sink_[u]) {
        reaches_sink_[u] = true;
        queue.push_back(u);
      }
    }
  }
  return flow;
}

}  // namespace kiln
