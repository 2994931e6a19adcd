// The CPU estimator (SPEC.md section 4): sampled offsets, normalised rows, a dominant key block,
// causal zeros, strided inputs, and a brute-force recomputation of the formula.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <set>
#include <vector>

#include "common/index_math.h"
#include "common/planner_rules.h"
#include "common/test_util.h"
#include "psa/psa.h"

namespace psa {
namespace {

Config estimator_config(int block_m, int block_n, uint64_t seed) {
  Config c;
  c.block_m = block_m;
  c.block_n = block_n;
  c.seed = seed;
  return c;
}

HostTensor run_estimator(const TensorView& q, const TensorView& k, const Config& config) {
  const int64_t mq = detail::ceil_div(q.shape[2], config.block_m);
  const int64_t nk = detail::ceil_div(k.shape[2], config.block_n);
  HostTensor scores(DType::kFloat32, {q.shape[0], q.shape[1], mq, nk});
  test::poison(scores);
  const Status status = psa::estimate_importance(scores.view(), q, k, config);
  EXPECT_TRUE(status.ok()) << status.to_string();
  return scores;
}

TEST(EstimatorOffsets, DistinctInRangeAndReproducible) {
  const uint64_t seed = test::test_seed(21);
  for (int block : {16, 32, 64, 128, 256}) {
    for (int count : {1, block / 4, block}) {
      for (int64_t head : {int64_t{0}, int64_t{3}, detail::key_offset_stream(1)}) {
        std::vector<int32_t> a(static_cast<size_t>(count), -1), b(a), c(a);
        ASSERT_TRUE(sample_block_offsets(a.data(), seed, 1, head, block, count).ok());
        ASSERT_TRUE(sample_block_offsets(b.data(), seed, 1, head, block, count).ok());
        ASSERT_TRUE(sample_block_offsets(c.data(), seed + 1, 1, head, block, count).ok());
        const std::set<int32_t> distinct(a.begin(), a.end());
        EXPECT_EQ(distinct.size(), a.size()) << "block " << block << " " << test::replay_hint(seed);
        EXPECT_GE(*distinct.begin(), 0);
        EXPECT_LT(*distinct.rbegin(), block);
        EXPECT_EQ(a, b) << "same seed, same offsets";
        // Another seed gives another draw (a full draw is a permutation, compare the order).
        if (count > 1) {
          EXPECT_NE(a, c) << "block " << block << " " << test::replay_hint(seed);
        }
      }
    }
  }
  // Queries and keys of the same head index draw on different counter streams.
  std::vector<int32_t> q_offsets(16), k_offsets(16);
  ASSERT_TRUE(sample_block_offsets(q_offsets.data(), seed, 0, 0, 64, 16).ok());
  ASSERT_TRUE(sample_block_offsets(k_offsets.data(), seed, 0, detail::key_offset_stream(0), 64, 16).ok());
  EXPECT_NE(q_offsets, k_offsets) << test::replay_hint(seed);
}

// Brute force in double: the formula of SPEC 4 written directly, with the offsets drawn here.
std::vector<double> brute_force_scores(const HostTensor& q, const HostTensor& k,
                                       const Config& config, bool causal) {
  const int64_t batch = q.shape()[0], hq = q.shape()[1], lq = q.shape()[2], dim = q.shape()[3];
  const int64_t hkv = k.shape()[1], lk = k.shape()[2];
  const int64_t bm = config.block_m, bn = config.block_n;
  const int64_t mq = detail::ceil_div(lq, bm), nk = detail::ceil_div(lk, bn);
  const int sm = config.effective_samples_m(), sn = config.effective_samples_n();
  const double scale = 1.0 / std::sqrt(static_cast<double>(dim));
  std::vector<double> out(static_cast<size_t>(batch * hq * mq * nk), 0.0);
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t h = 0; h < hq; ++h) {
      const int64_t g = h / (hq / hkv);
      std::vector<int32_t> qo(sm), ko(sn);
      EXPECT_TRUE(sample_block_offsets(qo.data(), config.seed, b, h, static_cast<int>(bm), sm).ok());
      EXPECT_TRUE(sample_block_offsets(ko.data(), config.seed, b, (int64_t{1} << 20) + g, static_cast<int>(bn),
                           sn).ok());
      for (int64_t i = 0; i < mq; ++i) {
        std::vector<std::vector<double>> r(sm, std::vector<double>(nk, -INFINITY));
        std::vector<double> m(sm, -INFINITY);
        auto visible = [&](int64_t j) {
          const int64_t last_q = std::min((i + 1) * bm, lq) - 1;
          return !causal || j * bn <= last_q + (lk - lq);
        };
        for (int s = 0; s < sm; ++s) {
          const int64_t qt = i * bm + qo[s] % std::min(bm, lq - i * bm);
          for (int64_t j = 0; j < nk; ++j) {
            if (!visible(j)) continue;
            for (int t = 0; t < sn; ++t) {
              const int64_t kt = j * bn + ko[t] % std::min(bn, lk - j * bn);
              double dot = 0.0;
              for (int64_t d = 0; d < dim; ++d) {
                dot += q.get(((b * hq + h) * lq + qt) * dim + d) *
                       k.get(((b * hkv + g) * lk + kt) * dim + d);
              }
              r[s][j] = std::max(r[s][j], scale * dot);
            }
            m[s] = std::max(m[s], r[s][j]);
          }
        }
        double* row = out.data() + ((b * hq + h) * mq + i) * nk;
        double sum = 0.0;
        for (int64_t j = 0; j < nk; ++j) {
          if (!visible(j)) continue;
          for (int s = 0; s < sm; ++s) row[j] = std::max(row[j], std::exp(r[s][j] - m[s]));
          sum += row[j];
        }
        for (int64_t j = 0; j < nk && sum > 0.0; ++j) row[j] /= sum;
      }
    }
  }
  return out;
}

TEST(EstimatorScores, MatchesBruteForce) {
  // GQA (4 query heads on 2 kv heads), ragged last blocks, causal and not, Lq != Lk.
  const uint64_t seed = test::test_seed(22);
  for (int causal = 0; causal < 2; ++causal) {
    const test::Qkv qkv = test::random_qkv(2, 4, 2, 200, 300, 32, DType::kFloat32, seed);
    Config config = estimator_config(64, 32, seed);
    config.causal = causal != 0;
    const HostTensor scores = run_estimator(qkv.q.view(), qkv.k.view(), config);
    const std::vector<double> expected = brute_force_scores(qkv.q, qkv.k, config, config.causal);
    double max_err = 0.0, max_ref = 0.0;
    for (int64_t n = 0; n < scores.numel(); ++n) {
      max_err = std::max(max_err, std::fabs(scores.get(n) - expected[n]));
      max_ref = std::max(max_ref, std::fabs(expected[n]));
    }
    ASSERT_GT(max_ref, 0.0);
    // fp32 dots of 32 terms and an fp32 exp against double: errors of a few 1e-7 on values <= 1.
    EXPECT_LT(max_err, 1e-6) << "causal " << causal << " " << test::replay_hint(seed);
  }
}

TEST(EstimatorScores, RowsSumToOne) {
  const uint64_t seed = test::test_seed(23);
  const test::Qkv qkv = test::random_qkv(2, 4, 1, 300, 200, 16, DType::kBFloat16, seed);
  for (int causal = 0; causal < 2; ++causal) {
    Config config = estimator_config(64, 32, seed);
    config.causal = causal != 0;
    config.samples_m = 8;
    config.samples_n = 5;
    const HostTensor scores = run_estimator(qkv.q.view(), qkv.k.view(), config);
    const int64_t mq = scores.shape()[2], nk = scores.shape()[3];
    for (int64_t row = 0; row < scores.numel() / nk; ++row) {
      const int64_t i = row % mq;
      double sum = 0.0;
      bool any_visible = false;
      for (int64_t j = 0; j < nk; ++j) {
        const double p = scores.get(row * nk + j);
        ASSERT_GE(p, 0.0) << test::replay_hint(seed);
        ASSERT_LE(p, 1.0);
        const bool visible = !config.causal || detail::block_visible(300, 200, 64, 32, i, j);
        any_visible = any_visible || visible;
        if (!visible) {
          EXPECT_EQ(p, 0.0) << "invisible block " << j << " of row " << row;
        }
        sum += p;
      }
      // An fp32 division by an fp32 sum of <= 7 terms: within a few ulp of 1.
      if (any_visible) {
        EXPECT_NEAR(sum, 1.0, 1e-6) << "row " << row << " " << test::replay_hint(seed);
      } else {
        EXPECT_EQ(sum, 0.0) << "row " << row << " sees no block";
      }
    }
  }
}

TEST(EstimatorScores, CausalRowWithoutVisibleBlocksIsZero) {
  // Lq = 256 > Lk = 64, block_m = 64, block_n = 32: shift -192. Query blocks 0 to 2 (last query
  // at most 191) see nothing; query block 3 (last query 255 -> key 63) sees both key blocks.
  const uint64_t seed = test::test_seed(24);
  const test::Qkv qkv = test::random_qkv(1, 2, 2, 256, 64, 16, DType::kFloat32, seed);
  Config config = estimator_config(64, 32, seed);
  config.causal = true;
  const HostTensor scores = run_estimator(qkv.q.view(), qkv.k.view(), config);
  for (int64_t h = 0; h < 2; ++h) {
    for (int64_t i = 0; i < 4; ++i) {
      const double p0 = scores.get((h * 4 + i) * 2), p1 = scores.get((h * 4 + i) * 2 + 1);
      if (i < 3) {
        EXPECT_EQ(p0, 0.0) << "row " << i;
        EXPECT_EQ(p1, 0.0) << "row " << i;
      } else {
        EXPECT_GT(p0, 0.0) << test::replay_hint(seed);
        EXPECT_GT(p1, 0.0) << test::replay_hint(seed);
        // Two fp32 terms divided by their fp32 sum.
        EXPECT_NEAR(p0 + p1, 1.0, 1e-6);
      }
    }
  }
}

TEST(EstimatorScores, AlignedKeyBlockScoresHighestInEveryRow) {
  // Every query is u plus small noise; key block 3 is 3u plus small noise, the others are noise.
  // q . k is then about 3|u|^2 on block 3 and about 0 elsewhere.
  const uint64_t seed = test::test_seed(25);
  constexpr int64_t kB = 1, kH = 2, kL = 512, kD = 32, kHot = 3;
  HostTensor u(DType::kFloat32, {kD});
  test::fill_normal(u, seed);
  test::Qkv qkv = test::random_qkv(kB, kH, 1, kL, kL, kD, DType::kFloat32, seed + 1, 0.1);
  for (int64_t h = 0; h < kH; ++h) {
    for (int64_t t = 0; t < kL; ++t) {
      for (int64_t d = 0; d < kD; ++d) {
        const int64_t n = (h * kL + t) * kD + d;
        qkv.q.set(n, qkv.q.get(n) + u.get(d));
      }
    }
  }
  for (int64_t t = kHot * 64; t < (kHot + 1) * 64; ++t) {
    for (int64_t d = 0; d < kD; ++d) qkv.k.set(t * kD + d, qkv.k.get(t * kD + d) + 3.0 * u.get(d));
  }
  const Config config = estimator_config(128, 64, seed);
  const HostTensor scores = run_estimator(qkv.q.view(), qkv.k.view(), config);
  const int64_t nk = scores.shape()[3];
  for (int64_t row = 0; row < scores.numel() / nk; ++row) {
    int64_t best = 0;
    for (int64_t j = 1; j < nk; ++j) {
      if (scores.get(row * nk + j) > scores.get(row * nk + best)) best = j;
    }
    EXPECT_EQ(best, kHot) << "row " << row << " " << test::replay_hint(seed);
  }
}

TEST(EstimatorScores, StridedInputsGiveTheSameScores) {
  // q and k stored as (B, L, H, D) and viewed as (B, H, L, D) without a copy.
  const uint64_t seed = test::test_seed(26);
  const test::Qkv qkv = test::random_qkv(1, 4, 2, 130, 100, 16, DType::kFloat16, seed);
  HostTensor q_blhd(DType::kFloat16, {1, 130, 4, 16}), k_blhd(DType::kFloat16, {1, 100, 2, 16});
  for (int64_t h = 0; h < 4; ++h) {
    for (int64_t t = 0; t < 130; ++t) {
      for (int64_t d = 0; d < 16; ++d) {
        q_blhd.set((t * 4 + h) * 16 + d, qkv.q.get((h * 130 + t) * 16 + d));
        if (h < 2 && t < 100) k_blhd.set((t * 2 + h) * 16 + d, qkv.k.get((h * 100 + t) * 16 + d));
      }
    }
  }
  const Config config = estimator_config(64, 32, seed);
  const HostTensor contiguous = run_estimator(qkv.q.view(), qkv.k.view(), config);
  const HostTensor strided = run_estimator(transpose_view(q_blhd.view(), 1, 2),
                                           transpose_view(k_blhd.view(), 1, 2), config);
  ASSERT_GT(test::l2_norm(contiguous), 0.0);
  // Same values, same arithmetic order: bitwise equal.
  EXPECT_EQ(test::max_abs_diff(strided, contiguous), 0.0) << test::replay_hint(seed);
}

TEST(EstimatorScores, HeadSliceWithOffsetMatchesTheFullCall) {
  // Sequence parallelism: a call over query heads [2, 4) and their kv head, with head_offset 2,
  // draws what the call over all 4 heads draws for those heads, so its scores are the same.
  const uint64_t seed = test::test_seed(27);
  const test::Qkv qkv = test::random_qkv(1, 4, 2, 200, 200, 32, DType::kFloat32, seed);
  Config config = estimator_config(64, 32, seed);
  const HostTensor full = run_estimator(qkv.q.view(), qkv.k.view(), config);
  TensorView q_slice = qkv.q.view(), k_slice = qkv.k.view();
  q_slice.shape[1] = 2;
  q_slice.data = static_cast<float*>(q_slice.data) + 2 * q_slice.stride[1];
  k_slice.shape[1] = 1;
  k_slice.data = static_cast<float*>(k_slice.data) + k_slice.stride[1];
  config.head_offset = 2;
  const HostTensor slice = run_estimator(q_slice, k_slice, config);
  const int64_t per_head = slice.numel() / 2;
  ASSERT_GT(test::l2_norm(slice), 0.0);
  for (int64_t n = 0; n < slice.numel(); ++n) {
    ASSERT_EQ(slice.get(n), full.get(2 * per_head + n)) << "element " << n << " "
                                                        << test::replay_hint(seed);
  }
  config.head_offset = 0;
  const HostTensor unshifted = run_estimator(q_slice, k_slice, config);
  EXPECT_GT(test::max_abs_diff(unshifted, slice), 0.0) << "the offset changes the draws";
  config.head_offset = -1;
  EXPECT_FALSE(validate_config(config).ok());
}

}  // namespace
}  // namespace psa
