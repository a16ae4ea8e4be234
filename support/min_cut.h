/// \file min_cut.h
/// Minimum s-t cut of a directed graph with integer capacities (Dinic's max-flow). The training
/// partitioner (passes/partition_joint.cpp) uses it to choose which forward values to save for
/// the backward; tests in tests/cpp/min_cut_test.cpp.
#pragma once

#include <cstdint>
#include <vector>

namespace kiln {

class MinCut {
 public:
  /// Capacity that no finite cut reaches: an edge that must never be cut.
  static constexpr int64_t kInfinite = INT64_MAX / 8;

  explicit MinCut(int nodes);
  /// Adds the edge u -> v with capacity `cap` (>= 0; kInfinite for "never cut").
  void add_edge(int u, int v, int64_t cap);
  /// Computes the maximum flow from `source` to `sink` (saturating at kInfinite: a result of
  /// kInfinite means every cut crosses an infinite edge), then the source side of a minimum cut.
  int64_t solve(int source, int sink);
  /// After solve(): whether `node` is on the source side of the minimum cut closest to the sink
  /// (it cannot reach the sink in the residual graph). Of several minimum cuts, that one puts
  /// the most nodes on the source side: the training partitioner then saves later values and
  /// recomputes fewer (a ReLU's output rather than its input, for the same bytes).
  bool source_side(int node) const { return !reaches_sink_[node]; }

 private:
  struct Edge {
    int to;
    int64_t cap;  // residual capacity
  };
  bool levels(int source, int sink);
  int64_t push(int u, int sink, int64_t limit);

  std::vector<Edge> edges_;             // edge 2k is forward, 2k+1 its reverse
  std::vector<std::vector<int>> out_;   // per node: its edge indices
  std::vector<int> level_, next_;
  std::vector<bool> reaches_sink_;
};

}  // namespace kiln
