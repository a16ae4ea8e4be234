/// \file min_cut_test.cpp
/// support/min_cut: flows and source sides on small graphs whose minimum cuts are known.
#include <gtest/gtest.h>

#include "support/min_cut.h"

using kiln::MinCut;

TEST(MinCut, PicksTheCheaperOfTwoEdgesInSeries) {
  // s -> a (5) -> t (3): the cut is a -> t.
  MinCut mc(3);
  mc.add_edge(0, 1, 5);
  mc.add_edge(1, 2, 3);
  EXPECT_EQ(mc.solve(0, 2), 3);
  EXPECT_TRUE(mc.source_side(0));
  EXPECT_TRUE(mc.source_side(1));
  EXPECT_FALSE(mc.source_side(2));
}

TEST(MinCut, SumsParallelPathsAndNeverCutsInfiniteEdges) {
  // s -inf-> a -2-> t, s -inf-> b -4-> c -1-> t, b -inf-> a
  MinCut mc(5);
  int s = 0, a = 1, b = 2, c = 3, t = 4;
  mc.add_edge(s, a, MinCut::kInfinite);
  mc.add_edge(a, t, 2);
  mc.add_edge(s, b, MinCut::kInfinite);
  mc.add_edge(b, c, 4);
  mc.add_edge(c, t, 1);
  mc.add_edge(b, a, MinCut::kInfinite);
  EXPECT_EQ(mc.solve(s, t), 3);
  EXPECT_TRUE(mc.source_side(a));
  EXPECT_TRUE(mc.source_side(b));
  EXPECT_TRUE(mc.source_side(c));  // b -> c keeps capacity left: c is reachable
}

TEST(MinCut, ReportsAnAllInfinitePath) {
  MinCut mc(3);
  mc.add_edge(0, 1, MinCut::kInfinite);
  mc.add_edge(1, 2, MinCut::kInfinite);
  EXPECT_EQ(mc.solve(0, 2), MinCut::kInfinite);
}

TEST(MinCut, DiamondWithABottleneck) {
  // Classic: s->a 10, s->b 10, a->b 2, a->t 4, b->t 9: max flow 13.
  MinCut mc(4);
  mc.add_edge(0, 1, 10);
  mc.add_edge(0, 2, 10);
  mc.add_edge(1, 2, 2);
  mc.add_edge(1, 3, 4);
  mc.add_edge(2, 3, 9);
  EXPECT_EQ(mc.solve(0, 3), 13);
}
