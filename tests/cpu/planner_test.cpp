// The CPU planner (SPEC.md section 5) on hand-computed rows: topk and thresholdbound intervals,
// alignment, forced blocks, causal visibility, the similarity cap, ties, the level-map round trip
// and plan statistics.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <vector>

#include "common/test_util.h"
#include "cpu/cpu_backend.h"
#include "psa/psa.h"

namespace psa {
namespace {

using Levels = std::vector<int>;

// Scores (B, H, Mq, Nk) fp32 from hand-written rows of one batch and one head.
HostTensor make_scores(const std::vector<std::vector<float>>& rows) {
  const int64_t mq = static_cast<int64_t>(rows.size());
  const int64_t nk = static_cast<int64_t>(rows[0].size());
  HostTensor t(DType::kFloat32, {1, 1, mq, nk});
  for (int64_t i = 0; i < mq; ++i) {
    for (int64_t j = 0; j < nk; ++j) t.set(i * nk + j, rows[i][j]);
  }
  return t;
}

// Runs plan_from_scores into a poisoned plan of the scores' shape.
HostPlan plan_scores(const HostTensor& scores, int64_t seq_q, int64_t seq_k, const Config& config,
                     const TensorView& k = TensorView()) {
  const std::vector<int64_t>& s = scores.shape();
  HostPlan plan = make_host_plan(s[0], s[1], seq_q, seq_k, config);
  test::poison(plan.counts);
  test::poison(plan.blocks);
  const Status status = psa::plan_from_scores(plan.view(), scores.view(), k, config);
  EXPECT_TRUE(status.ok()) << status.to_string();
  return plan;
}

// Decodes row (b, h, i) from counts and blocks directly (not through plan_to_levels), checking
// the layout: indices in range, ascending within a level, no block twice, -1 past the total.
Levels row_levels(const HostPlan& plan, int64_t b, int64_t h, int64_t i) {
  const int64_t heads = plan.counts.shape()[1], mq = plan.counts.shape()[2];
  const int64_t nk = plan.blocks.shape()[3];
  const int64_t row = (b * heads + h) * mq + i;
  const int32_t* counts = plan.counts.data<int32_t>() + row * kNumLevels;
  const int32_t* blocks = plan.blocks.data<int32_t>() + row * nk;
  Levels levels(static_cast<size_t>(nk), 0);
  int64_t n = 0;
  for (int l = 0; l < kNumLevels; ++l) {
    EXPECT_GE(counts[l], 0);
    for (int32_t c = 0; c < counts[l]; ++c, ++n) {
      EXPECT_LT(n, nk) << "counts of row " << row << " exceed Nk";
      if (n >= nk) return levels;
      const int32_t j = blocks[n];
      EXPECT_TRUE(j >= 0 && j < nk) << "block index " << j;
      if (j < 0 || j >= nk) continue;
      if (c > 0) {
        EXPECT_LT(blocks[n - 1], j) << "level " << kLevelFactors[l] << " not ascending";
      }
      EXPECT_EQ(levels[j], 0) << "block " << j << " listed twice";
      levels[j] = kLevelFactors[l];
    }
  }
  for (; n < nk; ++n) EXPECT_EQ(blocks[n], -1) << "padding past the row's total";
  return levels;
}

// Expected levels of a row: visible blocks sorted by score descending (ties to the lower J),
// sorted positions [ends[l-1], ends[l]) at factor 1 << l, the rest 0.
Levels levels_from_intervals(const std::vector<float>& row, const std::vector<bool>& visible,
                             const std::array<int64_t, kNumLevels>& ends) {
  std::vector<int64_t> order;
  for (int64_t j = 0; j < static_cast<int64_t>(row.size()); ++j) {
    if (visible[j]) order.push_back(j);
  }
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return row[a] > row[b]; });
  Levels levels(row.size(), 0);
  int64_t start = 0;
  for (int l = 0; l < kNumLevels; ++l) {
    for (int64_t p = start; p < ends[l]; ++p) levels[order[p]] = kLevelFactors[l];
    start = std::max(start, ends[l]);
  }
  return levels;
}

// A random row of Nk distinct positive scores summing to 1.
std::vector<float> random_row(int64_t nk, uint64_t seed) {
  HostTensor t(DType::kFloat32, {nk});
  test::fill_uniform(t, seed, 0.05, 1.0);
  double sum = 0.0;
  for (int64_t j = 0; j < nk; ++j) sum += t.get(j);
  std::vector<float> row(static_cast<size_t>(nk));
  for (int64_t j = 0; j < nk; ++j) row[j] = static_cast<float>(t.get(j) / sum);
  return row;
}

Config topk_config(int block_n, int tile_n, std::array<double, kNumLevels> ends) {
  Config c;
  c.block_m = 128;
  c.block_n = block_n;
  c.tile_n = tile_n;
  c.mode = PlanMode::kTopK;
  c.ends = ends;
  return c;
}

struct TopkCase {
  const char* name;
  int block_n, tile_n;
  int64_t nk;
  std::array<double, kNumLevels> ends;
  std::array<int64_t, kNumLevels> expected_ends;  // worked out by hand, see each comment
};

TEST(PlannerTopk, IntervalsAlignmentAndClamping) {
  const TopkCase cases[] = {
      // a = 1, 2, 4, 8. floor(20 * .1/.15/.15/.35) = 2, 3, 3, 7: level 2 [2, 3) rounds up to
      // [2, 4); level 4 is empty; level 8 [4, 7) rounds up to [4, 12).
      {"block32_tile32", 32, 32, 20, {0.10, 0.15, 0.15, 0.35}, {2, 4, 4, 12}},
      // a = 1, 1, 2, 4. floor(16 * e) = 4, 6, 7, 11: level 4 [6, 7) -> [6, 8); level 8 [8, 11)
      // -> [8, 12).
      {"block64_tile32", 64, 32, 16, {0.25, 0.375, 0.4375, 0.6875}, {4, 6, 8, 12}},
      // a = 1, 1, 1, 2 (4 tiles per block): floor(10 * .1/.25/.35/.55) = 1, 2, 3, 5 (rounded
      // down); level 8 [3, 5) already holds a multiple of 2.
      {"block128_tile32", 128, 32, 10, {0.10, 0.25, 0.35, 0.55}, {1, 2, 3, 5}},
      // a = 1, 2, 4, 8 on Nk = 10: level 2 [1, 2) -> [1, 3); level 4 [3, 9) rounds up to 8 blocks,
      // passes 10, so it is clamped and rounded down to 4: [3, 7); level 8 [7, 9) -> 8 blocks ->
      // past 10 -> rounded down to 0: empty.
      {"clamp_at_nk", 32, 32, 10, {0.10, 0.20, 0.90, 0.90}, {1, 3, 7, 7}},
      // Everything requested: level 1 covers the row.
      {"all_full", 32, 32, 10, {1.0, 1.0, 1.0, 1.0}, {10, 10, 10, 10}},
      // e1 = 0 still keeps the best block at level 1; level 8 [1, 5) (a_8 = 2).
      {"e1_zero", 128, 32, 10, {0.0, 0.0, 0.0, 0.5}, {1, 1, 1, 5}},
      // Nothing requested at all: only the best block.
      {"all_zero", 64, 32, 16, {0.0, 0.0, 0.0, 0.0}, {1, 1, 1, 1}},
  };
  const uint64_t seed = test::test_seed(11);
  for (const TopkCase& tc : cases) {
    SCOPED_TRACE(tc.name);
    const Config config = topk_config(tc.block_n, tc.tile_n, tc.ends);
    const std::vector<float> row = random_row(tc.nk, seed);
    const HostPlan plan =
        plan_scores(make_scores({row}), config.block_m, tc.nk * tc.block_n, config);
    const Levels expected =
        levels_from_intervals(row, std::vector<bool>(row.size(), true), tc.expected_ends);
    EXPECT_EQ(row_levels(plan, 0, 0, 0), expected) << test::replay_hint(seed);
  }
}

TEST(PlannerTopk, DensityMatchesTopkRowDensity) {
  // The plan of a non-causal topk row has exactly the density that topk_row_density quotes.
  const uint64_t seed = test::test_seed(12);
  for (int block_n : {32, 64, 128}) {
    for (int64_t nk : {7, 16, 33}) {
      const Config config = topk_config(block_n, 32, {0.1, 0.15, 0.15, 0.35});
      const HostPlan plan = plan_scores(make_scores({random_row(nk, seed + nk)}), config.block_m,
                                        nk * block_n, config);
      PlanStats stats;
      ASSERT_TRUE(psa::plan_statistics(&stats, plan.view()).ok());
      double quoted = 0.0;
      ASSERT_TRUE(topk_row_density(&quoted, config, nk).ok());
      EXPECT_DOUBLE_EQ(stats.density, quoted)
          << "block_n " << block_n << " nk " << nk << " " << test::replay_hint(seed);
    }
  }
}

TEST(PlannerTopk, TiesGoToTheLowerBlock) {
  // Block 2 is best; blocks 1, 4, 6, 8 tie for second place; levels: 1 block at level 1, 2 at
  // level 2, 2 at level 8 (a = 1, 1, 1, 2).
  const Config config = topk_config(128, 32, {0.1, 0.3, 0.3, 0.5});
  const std::vector<float> row = {0.05f, 0.1f, 0.3f, 0.05f, 0.1f, 0.05f, 0.1f, 0.05f, 0.1f, 0.1f};
  const HostPlan plan = plan_scores(make_scores({row}), 128, 10 * 128, config);
  EXPECT_EQ(row_levels(plan, 0, 0, 0), (Levels{0, 2, 1, 0, 2, 0, 8, 0, 8, 0}));

  // A row of equal scores: the lowest indices win.
  const std::vector<float> flat(10, 0.1f);
  const HostPlan flat_plan = plan_scores(make_scores({flat}), 128, 10 * 128, config);
  EXPECT_EQ(row_levels(flat_plan, 0, 0, 0), (Levels{1, 2, 2, 8, 8, 0, 0, 0, 0, 0}));
}

TEST(PlannerTopk, NanScoreRanksLast) {
  // A NaN score sorts as -inf (a strict weak ordering whatever the input). Quotas .25/.75 on
  // Nk = 4, a = 1, 1, 1, 2: level 1 {1}, level 8 the next two {2, 3}; the NaN block is skipped.
  const Config config = topk_config(128, 32, {0.25, 0.25, 0.25, 0.75});
  const HostPlan plan =
      plan_scores(make_scores({{std::nanf(""), 0.5f, 0.3f, 0.2f}}), 128, 4 * 128, config);
  EXPECT_EQ(row_levels(plan, 0, 0, 0), (Levels{0, 1, 8, 8}));
}

Config threshold_config(int block_n, int tile_n, std::array<double, kNumLevels> ends,
                        double min_full_ratio) {
  Config c = topk_config(block_n, tile_n, ends);
  c.mode = PlanMode::kThresholdBound;
  c.min_full_ratio = min_full_ratio;
  return c;
}

// Sorted scores .3 .2 .15 .1 .08 .07 .05 .03 .01 .01 placed on blocks in a shuffled order; the
// cumulative sums E_k are .3 .5 .65 .75 .83 .90 .95 .98 .99 1.
const std::vector<float> kSortedTen = {0.3f,  0.2f,  0.15f, 0.1f,  0.08f,
                                       0.07f, 0.05f, 0.03f, 0.01f, 0.01f};
const std::vector<int64_t> kShuffle = {6, 2, 9, 0, 4, 7, 1, 8, 3, 5};  // sorted position -> J

std::vector<float> shuffled_ten() {
  std::vector<float> row(10);
  for (size_t p = 0; p < 10; ++p) row[kShuffle[p]] = kSortedTen[p];
  return row;
}
// Levels by sorted position -> levels by block.
Levels unshuffle(const Levels& by_position) {
  Levels levels(10);
  for (size_t p = 0; p < 10; ++p) levels[kShuffle[p]] = by_position[p];
  return levels;
}

TEST(PlannerThresholdBound, CumulativeSumsIncludeTheCrossingBlock) {
  // Ends .5/.7/.8/.95: #{E_k <= e} = 2, 3, 4, 7 -> interval ends 3, 4, 5, 8 (the crossing block
  // included); the floor min(10, floor(10 * .06) + 1) = 1 does not bind. block_n = 128 with
  // tile_n = 32 gives a_8 = 2: level 8 [5, 8) is rounded up to [5, 9).
  const Config config = threshold_config(128, 32, {0.5, 0.7, 0.8, 0.95}, 0.06);
  const HostPlan plan = plan_scores(make_scores({shuffled_ten()}), 128, 10 * 128, config);
  EXPECT_EQ(row_levels(plan, 0, 0, 0), unshuffle({1, 1, 1, 2, 4, 8, 8, 8, 8, 0}));
}

TEST(PlannerThresholdBound, LevelOneFloorFromMinFullRatio) {
  // min_full_ratio .45: level 1 ends at least at floor(4.5) + 1 = 5; levels 2 and 4 (ends 4 and 5)
  // are then empty; level 8 ends at 8, rounded up to 9 (a_8 = 2).
  const Config config = threshold_config(128, 32, {0.5, 0.7, 0.8, 0.95}, 0.45);
  const HostPlan plan = plan_scores(make_scores({shuffled_ten()}), 128, 10 * 128, config);
  EXPECT_EQ(row_levels(plan, 0, 0, 0), unshuffle({1, 1, 1, 1, 1, 8, 8, 8, 8, 0}));
}

TEST(PlannerThresholdBound, AlignmentRoundsUpAndClampsDown) {
  // block_n = tile_n = 32 (a = 1, 2, 4, 8): level 1 [0, 3); level 2 [3, 4) -> [3, 5); level 4 ends
  // at 5 (empty); level 8 [5, 8) -> 8 blocks, past 10 -> rounded down to 0: empty.
  const Config config = threshold_config(32, 32, {0.5, 0.7, 0.8, 0.95}, 0.06);
  const HostPlan plan = plan_scores(make_scores({shuffled_ten()}), 128, 10 * 32, config);
  EXPECT_EQ(row_levels(plan, 0, 0, 0), unshuffle({1, 1, 1, 2, 2, 0, 0, 0, 0, 0}));
}

TEST(PlannerThresholdBound, NoCrossingKeepsThePreviousEnd) {
  // Sorted .6 .2 .1 .1, E = .6 .8 .9 1. e1 = .5: no k, so level 1 ends at the previous end 0 and
  // then at the floor 1; e2 = .7: 1 -> end 2; e4 = .9: 3 -> end 4; e8 = 1: 4 -> 5, clamped to 4.
  const Config config = threshold_config(128, 32, {0.5, 0.7, 0.9, 1.0}, 0.06);
  const HostPlan plan = plan_scores(make_scores({{0.1f, 0.6f, 0.1f, 0.2f}}), 128, 4 * 128, config);
  EXPECT_EQ(row_levels(plan, 0, 0, 0), (Levels{4, 1, 4, 2}));

  // At least one full block even when every end and the floor ratio are 0.
  const Config zero = threshold_config(128, 32, {0.0, 0.0, 0.0, 0.0}, 0.0);
  const HostPlan zero_plan =
      plan_scores(make_scores({{0.1f, 0.6f, 0.1f, 0.2f}}), 128, 4 * 128, zero);
  EXPECT_EQ(row_levels(zero_plan, 0, 0, 0), (Levels{0, 1, 0, 0}));
}

TEST(PlannerThresholdBound, ZeroRowIsTreatedAsUniform) {
  // Decision: a row with total 0 carries no ranking and is planned as uniform, E_k = k / 10:
  // crossings 5, 7, 8, 9 -> ends 6, 8, 9, 10, blocks in index order (ties). Level 8 [9, 10) needs
  // a multiple of a_8 = 2, passes 10 and is rounded down to empty.
  const Config config = threshold_config(128, 32, {0.5, 0.7, 0.8, 0.95}, 0.06);
  const HostPlan plan =
      plan_scores(make_scores({std::vector<float>(10, 0.0f)}), 128, 10 * 128, config);
  EXPECT_EQ(row_levels(plan, 0, 0, 0), (Levels{1, 1, 1, 1, 1, 1, 2, 2, 4, 0}));
}

TEST(PlannerForced, TextBlocksAtStartAndEnd) {
  // Lk = 1230 (ragged last block), block_n = 128, Nk = 10; Lq = 512, block_m = 128, Mq = 4;
  // text_len = 200 (not a multiple of 128).
  // Start: key tokens [0, 200) -> key blocks 0, 1; query rows [0, 200) -> query blocks 0, 1.
  // End: key tokens [1030, 1230) -> key blocks 8, 9; query rows [312, 512) -> query blocks 2, 3.
  // Quotas: level 1 = the best block, level 8 = the next two (a = 1). A row without text keeps its
  // quotas plus the text columns at level 1; a row with text has every block at level 1.
  Config config = topk_config(128, 32, {0.1, 0.1, 0.1, 0.3});
  config.text_len = 200;
  // Ranking 5, 1, 7, 8, ... : block 1 or 8 would be level 8 without the text rule.
  const std::vector<float> row = {0.02f, 0.2f,  0.03f, 0.04f, 0.05f,
                                  0.3f,  0.06f, 0.15f, 0.1f,  0.05f};
  const std::vector<std::vector<float>> rows(4, row);
  const Levels all_full(10, 1);
  config.text_position = TextPosition::kStart;
  const HostPlan start = plan_scores(make_scores(rows), 512, 1230, config);
  const Levels start_rows[4] = {all_full, all_full, {1, 1, 0, 0, 0, 1, 0, 8, 0, 0},
                                {1, 1, 0, 0, 0, 1, 0, 8, 0, 0}};
  for (int64_t i = 0; i < 4; ++i) {
    EXPECT_EQ(row_levels(start, 0, 0, i), start_rows[i]) << "row " << i;
  }
  config.text_position = TextPosition::kEnd;
  const HostPlan end = plan_scores(make_scores(rows), 512, 1230, config);
  const Levels end_rows[4] = {{0, 8, 0, 0, 0, 1, 0, 8, 1, 1}, {0, 8, 0, 0, 0, 1, 0, 8, 1, 1},
                              all_full, all_full};
  for (int64_t i = 0; i < 4; ++i) {
    EXPECT_EQ(row_levels(end, 0, 0, i), end_rows[i]) << "row " << i;
  }
}

// Causal, text at the end (the transformers integration's question): text key blocks are visible
// only to the text rows, so without the row rule text_len would change nothing. Lq = Lk = 700,
// block_m = 128, block_n = 64, text_len = 32: query block 5 (rows 640..699) holds text and sees
// all 11 key blocks; every other row keeps its quotas.
TEST(PlannerForced, CausalTextRowsSeeEveryVisibleBlockAtLevelOne) {
  Config config = topk_config(64, 32, {0.1, 0.15, 0.15, 0.35});
  config.causal = true;
  config.keep_first_block = true;
  std::vector<std::vector<float>> rows(6);
  for (int64_t i = 0; i < 6; ++i) rows[i] = random_row(11, test::test_seed(17) + i);
  const HostPlan without = plan_scores(make_scores(rows), 700, 700, config);
  config.text_len = 32;
  const HostPlan with = plan_scores(make_scores(rows), 700, 700, config);
  for (int64_t i = 0; i < 5; ++i) {
    EXPECT_EQ(row_levels(with, 0, 0, i), row_levels(without, 0, 0, i)) << "row " << i;
  }
  EXPECT_NE(row_levels(without, 0, 0, 5), Levels(11, 1));
  EXPECT_EQ(row_levels(with, 0, 0, 5), Levels(11, 1));
}

TEST(PlannerForced, KeepFirstBlock) {
  Config config = topk_config(128, 32, {0.1, 0.1, 0.1, 0.3});
  std::vector<float> row = random_row(10, test::test_seed(13));
  row[0] = 0.0f;  // the worst block, skipped by the quotas
  const HostPlan without = plan_scores(make_scores({row}), 128, 1280, config);
  EXPECT_EQ(row_levels(without, 0, 0, 0)[0], 0);
  config.keep_first_block = true;
  const HostPlan with = plan_scores(make_scores({row}), 128, 1280, config);
  Levels expected = row_levels(without, 0, 0, 0);
  expected[0] = 1;
  EXPECT_EQ(row_levels(with, 0, 0, 0), expected);
}

TEST(PlannerCausal, QuotasOverVisibleBlocksAndDiagonalForced) {
  // Lq = Lk = 1280, block_m = 256, block_n = 128: Mq = 5, Nk = 10. Row I sees J <= 2I + 1, so
  // V = 2, 4, 6, 8, 10; its diagonal blocks are 2I and 2I + 1. Visible scores fall with J,
  // invisible ones are huge (they must not count). Quotas .2/.4/.4/.6 with a = 1, 1, 1, 2:
  //   I=0 V=2 : ends 1, 1, 1, 1              -> {0}, diagonal 0, 1
  //   I=1 V=4 : ends 1, 1, 1, 2 -> 3         -> {0} L1, {1, 2} L8, diagonal 2, 3
  //   I=2 V=6 : ends 1, 2, 2, 3 -> 4         -> {0} L1, {1} L2, {2, 3} L8, diagonal 4, 5
  //   I=3 V=8 : ends 1, 3, 3, 4 -> 5         -> {0} L1, {1, 2} L2, {3, 4} L8, diagonal 6, 7
  //   I=4 V=10: ends 2, 4, 4, 6              -> {0, 1} L1, {2, 3} L2, {4, 5} L8, diagonal 8, 9
  Config config = topk_config(128, 32, {0.2, 0.4, 0.4, 0.6});
  config.block_m = 256;
  config.causal = true;
  std::vector<std::vector<float>> rows(5, std::vector<float>(10));
  for (int64_t i = 0; i < 5; ++i) {
    for (int64_t j = 0; j < 10; ++j) rows[i][j] = j <= 2 * i + 1 ? 0.1f * (10 - j) : 1000.0f;
  }
  const HostPlan plan = plan_scores(make_scores(rows), 1280, 1280, config);
  const Levels expected[5] = {{1, 1, 0, 0, 0, 0, 0, 0, 0, 0},
                              {1, 8, 1, 1, 0, 0, 0, 0, 0, 0},
                              {1, 2, 8, 8, 1, 1, 0, 0, 0, 0},
                              {1, 2, 2, 8, 8, 0, 1, 1, 0, 0},
                              {1, 1, 2, 2, 8, 8, 0, 0, 1, 1}};
  for (int64_t i = 0; i < 5; ++i) EXPECT_EQ(row_levels(plan, 0, 0, i), expected[i]) << "row " << i;

  // Text at the end (key block 9, query block 4): the text column is visible only to row 4, which
  // holds text and so has every block at level 1; keep_first_block forces block 0, which is the
  // best block here anyway.
  config.text_len = 100;
  config.text_position = TextPosition::kEnd;
  config.keep_first_block = true;
  const HostPlan text_plan = plan_scores(make_scores(rows), 1280, 1280, config);
  for (int64_t i = 0; i < 4; ++i) {
    EXPECT_EQ(row_levels(text_plan, 0, 0, i), expected[i]) << "row " << i;
  }
  EXPECT_EQ(row_levels(text_plan, 0, 0, 4), Levels(10, 1));
}

TEST(PlannerCausal, RowsWithNoVisibleBlockAreEmpty) {
  // Lq = 512 > Lk = 128 with block_m = block_n = 128: shift -384, only query block 3 sees key
  // block 0; rows 0 to 2 see nothing and stay empty, even with text and keep_first_block.
  Config config = topk_config(128, 32, {0.1, 0.15, 0.15, 0.35});
  config.causal = true;
  config.keep_first_block = true;
  config.text_len = 16;
  const HostPlan plan =
      plan_scores(make_scores({{0.0f}, {0.0f}, {0.0f}, {1.0f}}), 512, 128, config);
  for (int64_t i = 0; i < 3; ++i) {
    EXPECT_EQ(row_levels(plan, 0, 0, i), (Levels{0})) << "row " << i;
    for (int l = 0; l < kNumLevels; ++l) EXPECT_EQ(plan.counts.data<int32_t>()[i * 4 + l], 0);
  }
  EXPECT_EQ(row_levels(plan, 0, 0, 3), (Levels{1}));
}

// Keys (1, 1, Lk, 8) with block_n = 32 whose blocks have known similarity caps:
//   block 0: every group of 8 tokens identical            -> sim 1, 1, 1     -> cap 8
//   block 1: consecutive tokens opposite                  -> sim -1, -1, -1  -> cap 1
//   block 2: pairs identical, consecutive pairs opposite  -> sim 1, -1, -1   -> cap 2
//   block 3: quads identical, consecutive quads opposite  -> sim 1, 1, -1    -> cap 4
//   block 4: a single (ragged) token                      -> one-token groups, cosine 1 -> cap 8
// Base vectors are seeded random normals.
HostTensor make_cap_keys(uint64_t seed) {
  constexpr int64_t kDim = 8, kLen = 4 * 32 + 1;
  HostTensor base(DType::kFloat32, {kLen, kDim});
  test::fill_normal(base, seed);
  HostTensor k(DType::kFloat32, {1, 1, kLen, kDim});
  for (int64_t t = 0; t < kLen; ++t) {
    const int64_t block = t / 32, local = t % 32;
    int64_t source = t;
    double sign = 1.0;
    if (block == 0) source = t - local % 8;
    if (block == 1) {
      source = 32;
      sign = local % 2 ? -1.0 : 1.0;
    }
    if (block == 2) {
      source = 64;
      sign = (local / 2) % 2 ? -1.0 : 1.0;
    }
    if (block == 3) {
      source = 96;
      sign = (local / 4) % 2 ? -1.0 : 1.0;
    }
    for (int64_t d = 0; d < kDim; ++d) k.set(t * kDim + d, sign * base.get(source * kDim + d));
  }
  return k;
}

TEST(PlannerSimilarityCap, ConstructedKeys) {
  const uint64_t seed = test::test_seed(14);
  const HostTensor k = make_cap_keys(seed);
  Config config = topk_config(32, 32, {0.1, 0.15, 0.15, 0.35});
  config.sim_cap = true;
  HostTensor cap(DType::kUInt8, {1, 1, 5});
  test::poison(cap);
  ASSERT_TRUE(cpu::similarity_cap(cap.view(), k.view(), config).ok());
  const int expected[5] = {8, 1, 2, 4, 8};
  for (int64_t j = 0; j < 5; ++j)
    EXPECT_EQ(cap.get(j), expected[j]) << "block " << j << " " << test::replay_hint(seed);

  // A zero key block: every cosine is 0 (decision), below every threshold -> cap 1.
  HostTensor zero(DType::kFloat32, {1, 1, 32, 8});
  HostTensor zero_cap(DType::kUInt8, {1, 1, 1});
  test::poison(zero_cap);
  ASSERT_TRUE(cpu::similarity_cap(zero_cap.view(), zero.view(), config).ok());
  EXPECT_EQ(zero_cap.get(0), 1);
}

TEST(PlannerSimilarityCap, CapsKeptLevelsInEveryHeadOfTheGroup) {
  // Hq = 2 query heads on one kv head. tile_n = 4 makes a = 1 for every level. Quotas: best block
  // at level 1, the other four at level 8, then min(8, cap) -> caps 1, 2, 4, 8 of blocks 1 to 4.
  const uint64_t seed = test::test_seed(15);
  const HostTensor k = make_cap_keys(seed);
  Config config = topk_config(32, 4, {0.2, 0.2, 0.2, 1.0});
  config.sim_cap = true;
  HostTensor scores(DType::kFloat32, {1, 2, 1, 5});
  const float row[5] = {0.4f, 0.1f, 0.2f, 0.15f, 0.15f};
  for (int64_t h = 0; h < 2; ++h) {
    for (int64_t j = 0; j < 5; ++j) scores.set(h * 5 + j, row[j]);
  }
  const HostPlan plan = plan_scores(scores, 128, k.shape()[2], config, k.view());
  for (int64_t h = 0; h < 2; ++h) {
    EXPECT_EQ(row_levels(plan, 0, h, 0), (Levels{1, 1, 2, 4, 8}))
        << "head " << h << " " << test::replay_hint(seed);
  }

  // The same cap through a caller's level map (all 8 but block 3 skipped).
  HostTensor levels(DType::kUInt8, {1, 2, 1, 5});
  const int map[5] = {8, 8, 8, 0, 8};
  for (int64_t h = 0; h < 2; ++h) {
    for (int64_t j = 0; j < 5; ++j) levels.set(h * 5 + j, map[j]);
  }
  HostPlan from_levels = make_host_plan(1, 2, 128, k.shape()[2], config);
  test::poison(from_levels.counts);
  test::poison(from_levels.blocks);
  ASSERT_TRUE(psa::plan_from_levels(from_levels.view(), levels.view(), k.view(), config).ok());
  for (int64_t h = 0; h < 2; ++h) {
    EXPECT_EQ(row_levels(from_levels, 0, h, 0), (Levels{8, 1, 2, 0, 8})) << "head " << h;
  }
}

// A caller's level map may have any strides, like q, k and v: a transposed view and a broadcast
// (stride 0) view give the plans of their contiguous copies. The map written by plan_to_levels
// must be contiguous.
TEST(PlannerLevels, StridedLevelMapsAreRead) {
  Config config = topk_config(32, 32, {0.1, 0.15, 0.15, 0.35});
  config.block_m = 32;
  const int64_t seq_q = 96, seq_k = 160;  // Mq = 3, Nk = 5
  const int values[5] = {1, 2, 4, 8, 0};
  HostTensor levels(DType::kUInt8, {1, 2, 3, 5});
  HostTensor swapped(DType::kUInt8, {1, 2, 5, 3});
  for (int64_t h = 0; h < 2; ++h) {
    for (int64_t i = 0; i < 3; ++i) {
      for (int64_t j = 0; j < 5; ++j) {
        const int level = values[(h + 2 * i + 3 * j) % 5];
        levels.set((h * 3 + i) * 5 + j, level);
        swapped.set((h * 5 + j) * 3 + i, level);
      }
    }
  }
  auto plan_of = [&](const TensorView& map) {
    HostPlan plan = make_host_plan(1, 2, seq_q, seq_k, config);
    test::poison(plan.counts);
    test::poison(plan.blocks);
    const Status s = psa::plan_from_levels(plan.view(), map, TensorView(), config);
    EXPECT_TRUE(s.ok()) << s.to_string();
    return plan;
  };
  const HostPlan want = plan_of(levels.view());
  const HostPlan got = plan_of(transpose_view(swapped.view(), 2, 3));
  EXPECT_EQ(test::max_abs_diff(got.counts, want.counts), 0.0);
  EXPECT_EQ(test::max_abs_diff(got.blocks, want.blocks), 0.0);

  // One row (head 0, query block 0) broadcast to every row.
  TensorView broadcast = levels.view();
  broadcast.stride[1] = broadcast.stride[2] = 0;
  const HostPlan repeated = plan_of(broadcast);
  for (int64_t h = 0; h < 2; ++h) {
    for (int64_t i = 0; i < 3; ++i) {
      EXPECT_EQ(row_levels(repeated, 0, h, i), row_levels(want, 0, 0, 0)) << h << ", " << i;
    }
  }

  const Status written = psa::plan_to_levels(transpose_view(swapped.view(), 2, 3), want.view());
  EXPECT_EQ(written.code(), StatusCode::kInvalidArgument) << written.to_string();
  EXPECT_NE(written.message().find("levels must be contiguous"), std::string::npos)
      << written.message();
}

TEST(PlannerLevels, RoundTripIsExact) {
  // Random scores, several configs: plan -> levels -> plan gives the same counts and blocks.
  const uint64_t seed = test::test_seed(16);
  constexpr int64_t kBatch = 2, kHeads = 3;
  for (int causal = 0; causal < 2; ++causal) {
    for (PlanMode mode : {PlanMode::kTopK, PlanMode::kThresholdBound}) {
      Config config = topk_config(64, 32, {0.1, 0.3, 0.4, 0.7});
      config.block_m = 64;
      config.mode = mode;
      config.causal = causal != 0;
      const int64_t seq_q = 250, seq_k = 1000;  // Mq = 4, Nk = 16, both ragged
      HostTensor scores(DType::kFloat32, {kBatch, kHeads, 4, 16});
      test::fill_uniform(scores, seed, 0.01, 1.0);
      const HostPlan plan = plan_scores(scores, seq_q, seq_k, config);

      HostTensor levels(DType::kUInt8, {kBatch, kHeads, 4, 16});
      test::poison(levels);
      ASSERT_TRUE(psa::plan_to_levels(levels.view(), plan.view()).ok());
      HostPlan again = make_host_plan(kBatch, kHeads, seq_q, seq_k, config);
      test::poison(again.counts);
      test::poison(again.blocks);
      ASSERT_TRUE(psa::plan_from_levels(again.view(), levels.view(), TensorView(), config).ok());
      EXPECT_EQ(test::max_abs_diff(again.counts, plan.counts), 0.0) << test::replay_hint(seed);
      EXPECT_EQ(test::max_abs_diff(again.blocks, plan.blocks), 0.0) << test::replay_hint(seed);
      for (int64_t b = 0; b < kBatch; ++b) {
        for (int64_t h = 0; h < kHeads; ++h) {
          for (int64_t i = 0; i < 4; ++i) {
            const Levels row = row_levels(plan, b, h, i);
            for (int64_t j = 0; j < 16; ++j) {
              ASSERT_EQ(levels.get(((b * kHeads + h) * 4 + i) * 16 + j), row[j])
                  << "at " << b << "," << h << "," << i << "," << j << " "
                  << test::replay_hint(seed);
            }
          }
        }
      }
    }
  }
}

TEST(PlannerLevels, RejectsAnInvalidLevelNamingItsPosition) {
  const Config config = topk_config(64, 32, {0.1, 0.15, 0.15, 0.35});
  HostTensor levels(DType::kUInt8, {1, 2, 3, 4});
  levels.fill(2);
  levels.set(((0 * 2 + 1) * 3 + 2) * 4 + 3, 3);
  HostPlan plan = make_host_plan(1, 2, 3 * 128, 4 * 64, config);
  const Status status = psa::plan_from_levels(plan.view(), levels.view(), TensorView(), config);
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("levels[0, 1, 2, 3]"), std::string::npos) << status.message();
  EXPECT_NE(status.message().find("got 3"), std::string::npos) << status.message();
}

TEST(PlannerStatistics, HandMadePlan) {
  // Hq = 2, Mq = 2, Nk = 4. Row densities: (1 + 1/2 + 1/8)/4 = .40625, 1/4, (1/4 + 1/4 + 2)/4 =
  // .625, 1. Heads: .328125 and .8125; overall .5703125. Of 16 pairs: 4 skipped, 8 at level 1,
  // 1 at level 2, 2 at level 4, 1 at level 8.
  const Config config = topk_config(64, 32, {0.1, 0.15, 0.15, 0.35});
  const int map[2][2][4] = {{{1, 2, 0, 8}, {1, 0, 0, 0}}, {{4, 4, 1, 1}, {1, 1, 1, 1}}};
  HostTensor levels(DType::kUInt8, {1, 2, 2, 4});
  for (int64_t h = 0; h < 2; ++h) {
    for (int64_t i = 0; i < 2; ++i) {
      for (int64_t j = 0; j < 4; ++j) levels.set((h * 2 + i) * 4 + j, map[h][i][j]);
    }
  }
  HostPlan plan = make_host_plan(1, 2, 2 * 128, 4 * 64, config);
  ASSERT_TRUE(psa::plan_from_levels(plan.view(), levels.view(), TensorView(), config).ok());
  PlanStats stats;
  stats.density = -1.0;
  ASSERT_TRUE(psa::plan_statistics(&stats, plan.view()).ok());
  // Sums of a few binary fractions: exact in double.
  EXPECT_EQ(stats.density, 0.5703125);
  ASSERT_EQ(stats.density_per_head.size(), 2u);
  EXPECT_EQ(stats.density_per_head[0], 0.328125);
  EXPECT_EQ(stats.density_per_head[1], 0.8125);
  const std::array<double, 5> fractions = {4 / 16.0, 8 / 16.0, 1 / 16.0, 2 / 16.0, 1 / 16.0};
  EXPECT_EQ(stats.level_fraction, fractions);
}

}  // namespace
}  // namespace psa
