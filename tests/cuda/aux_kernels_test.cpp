// The CUDA kernels around attention, each against the CPU reference: the pyramid, the estimator,
// the planner (scores and level maps, similarity cap) and the token permutation. Plans must match
// the CPU plan exactly; numbers carry a tolerance with its reason.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <ostream>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "common/test_util.h"
#include "cuda/cuda_test_util.h"
#include "psa/psa.h"

namespace psa {
namespace {

using test::DevicePlan;
using test::DeviceTensor;
using test::replay_hint;
using test::test_seed;

#define PSA_EXPECT_OK(expr)                              \
  do {                                                   \
    const ::psa::Status status_ = (expr);                \
    ASSERT_TRUE(status_.ok()) << status_.to_string();    \
  } while (0)

// A random tensor stored as (B, L, H, D) and viewed as (B, H, L, D) (no copy), the layout a model
// hands over; `contiguous` stores it as (B, H, L, D) instead.
struct LayoutTensor {
  HostTensor host;  // storage
  bool transposed = false;
  TensorView host_view() const {
    const TensorView v = host.view();
    return transposed ? transpose_view(v, 1, 2) : v;
  }
  TensorView device_view(const DeviceTensor& d) const {
    const TensorView v = d.view();
    return transposed ? transpose_view(v, 1, 2) : v;
  }
};

LayoutTensor random_tensor(DType dtype, int64_t b, int64_t h, int64_t l, int64_t d, bool strided,
                           uint64_t seed) {
  LayoutTensor t;
  t.transposed = strided;
  t.host = strided ? HostTensor(dtype, {b, l, h, d}) : HostTensor(dtype, {b, h, l, d});
  test::fill_normal(t.host, seed);
  return t;
}

// Half a unit in the last place of a 16-bit float holding |v|, doubled: the largest difference
// between two correct roundings of nearby reals (7 stored mantissa bits for bf16, 10 for fp16).
double one_ulp(double v, DType dtype) {
  const int mantissa_bits = dtype == DType::kBFloat16 ? 7 : 10;
  const double min_normal = dtype == DType::kBFloat16 ? std::ldexp(1.0, -126) : std::ldexp(1.0, -14);
  const double a = std::max(std::fabs(v), min_normal);
  int e = 0;
  std::frexp(a, &e);  // a = m * 2^e, m in [0.5, 1)
  return std::ldexp(1.0, e - 1 - mantissa_bits);
}

// ---- Pyramid ----------------------------------------------------------------------------------

struct PyramidCase {
  DType dtype;
  int64_t batch, heads, seq, dim;
  bool strided;
};

void PrintTo(const PyramidCase& c, std::ostream* os) {
  *os << dtype_name(c.dtype) << " " << c.batch << "x" << c.heads << "x" << c.seq << "x" << c.dim
      << (c.strided ? " strided" : "");
}

class AuxPyramid : public ::testing::TestWithParam<PyramidCase> {};

TEST_P(AuxPyramid, MatchesCpu) {
  PSA_SKIP_WITHOUT_GPU();
  const PyramidCase c = GetParam();
  const uint64_t seed = test_seed(101 + c.seq + c.dim);
  const LayoutTensor k = random_tensor(c.dtype, c.batch, c.heads, c.seq, c.dim, c.strided, seed);
  const LayoutTensor v = random_tensor(c.dtype, c.batch, c.heads, c.seq, c.dim, c.strided, seed + 7);
  HostPyramid ref = make_host_pyramid(c.batch, c.heads, c.seq, c.dim, c.dtype);
  PSA_EXPECT_OK(build_pyramid(ref.view(), k.host_view(), v.host_view()));

  const DeviceTensor dk(k.host), dv(v.host);
  test::DevicePyramid out = test::make_device_pyramid(c.batch, c.heads, c.seq, c.dim, c.dtype);
  for (int l = 0; l < kNumPooledLevels; ++l) {
    out.k[l].poison();
    out.v[l].poison();
  }
  PSA_EXPECT_OK(build_pyramid(out.view(), k.device_view(dk), v.device_view(dv)));

  for (int l = 0; l < kNumPooledLevels; ++l) {
    for (int t = 0; t < 2; ++t) {
      const HostTensor got = (t == 0 ? out.k[l] : out.v[l]).download();
      const HostTensor& want = t == 0 ? ref.k[l] : ref.v[l];
      ASSERT_GT(test::l2_norm(want), 0.0) << replay_hint(seed);
      int64_t differing = 0;
      for (int64_t i = 0; i < want.numel(); ++i) {
        const double a = got.get(i), b = want.get(i);
        // The CPU sums in double, the GPU in fp32: the rounded means may differ by one ulp.
        ASSERT_LE(std::fabs(a - b), one_ulp(b, c.dtype))
            << (t == 0 ? "k" : "v") << " level " << (2 << l) << " element " << i << ": got " << a
            << ", want " << b << " " << replay_hint(seed);
        differing += a != b;
      }
      EXPECT_LE(differing, want.numel() / 100 + 1) << "more than 1% off by one ulp " << replay_hint(seed);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Cases, AuxPyramid,
    ::testing::Values(PyramidCase{DType::kBFloat16, 2, 3, 1000, 128, false},
                      PyramidCase{DType::kFloat16, 1, 2, 61, 64, false},
                      PyramidCase{DType::kBFloat16, 1, 2, 61, 64, true},
                      PyramidCase{DType::kFloat16, 2, 2, 1000, 128, true},
                      PyramidCase{DType::kBFloat16, 1, 3, 77, 20, false},    // scalar path (D % 8)
                      PyramidCase{DType::kFloat16, 1, 1, 8, 64, false}));

// ---- Estimator --------------------------------------------------------------------------------

struct EstimatorCase {
  const char* name;
  DType dtype;
  int64_t batch, heads_q, heads_kv, seq_q, seq_k, dim;
  int block_m, block_n;
  bool causal, strided;
  int samples_m = 0, samples_n = 0;
  int64_t head_offset = 0;
};

void PrintTo(const EstimatorCase& c, std::ostream* os) { *os << c.name; }

class AuxEstimator : public ::testing::TestWithParam<EstimatorCase> {};

TEST_P(AuxEstimator, MatchesCpu) {
  PSA_SKIP_WITHOUT_GPU();
  const EstimatorCase c = GetParam();
  const uint64_t seed = test_seed(202 + c.seq_k);
  const LayoutTensor q =
      random_tensor(c.dtype, c.batch, c.heads_q, c.seq_q, c.dim, c.strided, seed);
  const LayoutTensor k =
      random_tensor(c.dtype, c.batch, c.heads_kv, c.seq_k, c.dim, c.strided, seed + 1);
  Config config;
  config.block_m = c.block_m;
  config.block_n = c.block_n;
  config.tile_n = std::min(32, c.block_n);
  config.causal = c.causal;
  config.seed = seed;
  config.samples_m = c.samples_m;
  config.samples_n = c.samples_n;
  config.head_offset = c.head_offset;
  const int64_t mq = (c.seq_q + c.block_m - 1) / c.block_m;
  const int64_t nk = (c.seq_k + c.block_n - 1) / c.block_n;

  HostTensor want(DType::kFloat32, {c.batch, c.heads_q, mq, nk});
  test::poison(want);
  PSA_EXPECT_OK(estimate_importance(want.view(), q.host_view(), k.host_view(), config));
  ASSERT_GT(test::l2_norm(want), 0.0) << replay_hint(seed);

  const DeviceTensor dq(q.host), dk(k.host);
  DeviceTensor scores(DType::kFloat32, {c.batch, c.heads_q, mq, nk});
  scores.poison();
  PSA_EXPECT_OK(estimate_importance(scores.view(), q.device_view(dq), k.device_view(dk), config));
  const HostTensor got = scores.download();
  for (int64_t i = 0; i < want.numel(); ++i) {
    const double a = got.get(i), b = want.get(i);
    // fp32 dot products summed in another order (tensor-core tree vs sequential): logits agree to
    // ~1e-6 relative, so exp() and the row sums to ~1e-5; 1e-4 leaves a margin.
    ASSERT_LE(std::fabs(a - b), 1e-4 * std::fabs(b) + 1e-7)
        << "score " << i << ": got " << a << ", want " << b << " " << replay_hint(seed);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Cases, AuxEstimator,
    ::testing::Values(
        EstimatorCase{"default_bf16", DType::kBFloat16, 1, 2, 2, 1024, 1024, 128, 128, 64, false, false},
        EstimatorCase{"ragged_fp16_gqa", DType::kFloat16, 2, 4, 2, 1000, 700, 64, 128, 32, false, false},
        // A head slice of a sequence-parallel call: draws keyed by the global head.
        EstimatorCase{"gqa_head_offset", DType::kBFloat16, 1, 4, 2, 1000, 700, 64, 128, 64, false, false, 0, 0, 6},
        EstimatorCase{"causal_lq_lt_lk", DType::kBFloat16, 1, 2, 1, 300, 900, 128, 64, 64, true, true},
        EstimatorCase{"causal_lq_gt_lk", DType::kFloat16, 1, 2, 2, 700, 400, 64, 64, 32, true, false},
        EstimatorCase{"block128_strided", DType::kBFloat16, 1, 3, 3, 640, 1280, 128, 128, 128, false, true},
        EstimatorCase{"odd_samples", DType::kFloat16, 1, 2, 1, 500, 600, 64, 64, 64, false, false, 5, 3},
        EstimatorCase{"padded_dim40", DType::kBFloat16, 1, 2, 2, 256, 512, 40, 64, 32, true, false},
        EstimatorCase{"scalar_dim36", DType::kFloat16, 1, 2, 1, 300, 300, 36, 64, 64, false, true},
        // The (128 rows x key blocks) fp32 table per CTA picks the mode (H200: 113 KiB per CTA at
        // two CTAs per SM, 227 KiB at one). Nk = 120 at D 64: one CTA holds it, two per SM.
        EstimatorCase{"stored_one_cta", DType::kBFloat16, 1, 2, 1, 300, 3840, 64, 128, 32, false, false},
        // Nk = 240, 469, 938: clusters of 2, 4 and 8 CTAs, two per SM; causal, GQA, ragged.
        EstimatorCase{"cluster2", DType::kBFloat16, 1, 2, 1, 300, 7650, 64, 128, 32, false, false},
        EstimatorCase{"cluster4_causal", DType::kFloat16, 1, 2, 2, 640, 15000, 64, 128, 32, true, false},
        EstimatorCase{"cluster8_gqa", DType::kBFloat16, 1, 4, 2, 500, 30000, 64, 128, 32, false, true},
        // Nk = 2048: a cluster of 8 at one CTA per SM; with s_m = 24 a warp's 16 rows straddle
        // query blocks.
        EstimatorCase{"cluster8_one_per_sm", DType::kBFloat16, 1, 1, 1, 256, 65536, 64, 128, 32, false, false},
        EstimatorCase{"cluster8_rows_straddle", DType::kBFloat16, 1, 1, 1, 512, 65536, 64, 128, 32, false, false, 24, 0},
        // D 128, Nk = 516, causal: a cluster of 4 at one CTA per SM.
        EstimatorCase{"cluster4_d128_causal", DType::kBFloat16, 1, 2, 1, 1000, 33000, 128, 128, 64, true, false},
        // Nk = 4096: not even 8 slices fit, the two-pass mode.
        EstimatorCase{"two_pass", DType::kBFloat16, 1, 1, 1, 256, 131072, 64, 128, 32, false, false},
        // block_n 256, s_n = 64: eight n8 column groups per key block.
        EstimatorCase{"block256_causal", DType::kBFloat16, 1, 2, 2, 512, 4096, 128, 128, 256, true, false},
        // s_m = 200 > 128 rows per CTA: one query block in two row chunks.
        EstimatorCase{"row_chunks", DType::kBFloat16, 1, 1, 1, 1024, 2048, 64, 256, 64, false, false, 200, 0},
        // s_n = 12 (not a multiple of 8): the element-wise fold, in a cluster of 4 (Nk = 1024)
        // and in the two-pass mode (Nk = 4096), causal.
        EstimatorCase{"cluster_causal_s12", DType::kFloat16, 1, 2, 1, 1024, 65536, 64, 128, 64, true, false, 0, 12},
        EstimatorCase{"two_pass_causal_s12", DType::kFloat16, 1, 1, 1, 512, 262144, 64, 128, 64, true, false, 0, 12}),
    [](const ::testing::TestParamInfo<EstimatorCase>& info) { return std::string(info.param.name); });

// ---- Planner ----------------------------------------------------------------------------------

// Random row-normalised scores (B, H, Mq, Nk): u^4 for a peaked distribution; `ties` rounds to
// multiples of 1/16 before normalising so that many scores tie; row 0 of every head is all zero
// (the planner's uniform rule).
HostTensor random_scores(int64_t batch, int64_t heads, int64_t mq, int64_t nk, bool ties,
                         uint64_t seed) {
  HostTensor s(DType::kFloat32, {batch, heads, mq, nk});
  test::fill_uniform(s, seed, 0.0, 1.0);
  for (int64_t row = 0; row < batch * heads * mq; ++row) {
    double sum = 0.0;
    std::vector<double> v(static_cast<size_t>(nk));
    for (int64_t j = 0; j < nk; ++j) {
      double x = std::pow(s.get(row * nk + j), 4.0);
      if (ties) x = std::floor(x * 16.0) / 16.0;
      if (row % mq == 0 && mq > 1) x = 0.0;
      v[j] = x;
      sum += x;
    }
    for (int64_t j = 0; j < nk; ++j) s.set(row * nk + j, sum > 0.0 ? v[j] / sum : 0.0);
  }
  return s;
}

// Keys whose blocks range from nearly constant to noisy, so that the similarity cap takes every
// value: token t of block J is base_J + sigma_J * noise_t, sigma_J in [0.05, 2.05], which gives
// cosines from about 0.2 to 0.998 around the thresholds 0.7 / 0.65 / 0.6.
HostTensor smooth_keys(DType dtype, int64_t batch, int64_t heads, int64_t seq, int64_t dim,
                       int block_n, uint64_t seed) {
  HostTensor k(dtype, {batch, heads, seq, dim});
  HostTensor noise(DType::kFloat32, {batch, heads, seq, dim});
  test::fill_normal(noise, seed);
  const int64_t nk = (seq + block_n - 1) / block_n;
  HostTensor base(DType::kFloat32, {batch, heads, nk, dim});
  test::fill_normal(base, seed + 1);
  HostTensor sigma(DType::kFloat32, {batch, heads, nk});
  test::fill_uniform(sigma, seed + 2, 0.05, 2.05);
  for (int64_t bh = 0; bh < batch * heads; ++bh) {
    for (int64_t t = 0; t < seq; ++t) {
      const int64_t j = t / block_n;
      for (int64_t d = 0; d < dim; ++d) {
        const int64_t i = (bh * seq + t) * dim + d;
        k.set(i, base.get((bh * nk + j) * dim + d) + sigma.get(bh * nk + j) * noise.get(i));
      }
    }
  }
  return k;
}

struct PlannerCase {
  const char* name;
  PlanMode mode;
  int block_n;
  int64_t seq_q, seq_k;
  bool causal = false;
  int64_t text_len = 0;
  TextPosition text_position = TextPosition::kEnd;
  bool keep_first_block = false;
  bool sim_cap = false;
  bool ties = false;
  int64_t heads_q = 2, heads_kv = 2;
};

void PrintTo(const PlannerCase& c, std::ostream* os) { *os << c.name; }

Config planner_config(const PlannerCase& c) {
  Config config;
  config.block_m = 128;
  config.block_n = c.block_n;
  config.tile_n = 32;
  config.mode = c.mode;
  config.ends = c.mode == PlanMode::kTopK ? std::array<double, kNumLevels>{0.1, 0.15, 0.15, 0.35}
                                          : std::array<double, kNumLevels>{0.5, 0.6, 0.7, 0.8};
  config.causal = c.causal;
  config.text_len = c.text_len;
  config.text_position = c.text_position;
  config.keep_first_block = c.keep_first_block;
  config.sim_cap = c.sim_cap;
  return config;
}

// Downloads a device plan and compares counts and blocks (padding -1 included) with the CPU plan.
void expect_same_plan(const DevicePlan& got_plan, const HostPlan& want, uint64_t seed) {
  const HostTensor counts = got_plan.counts.download();
  const HostTensor blocks = got_plan.blocks.download();
  const int64_t nk = want.blocks.shape()[3];
  int64_t kept = 0;
  for (int64_t i = 0; i < want.counts.numel(); ++i) {
    kept += want.counts.data<int32_t>()[i];
    ASSERT_EQ(counts.data<int32_t>()[i], want.counts.data<int32_t>()[i])
        << "counts of row " << i / kNumLevels << ", level " << (1 << (i % kNumLevels)) << " "
        << replay_hint(seed);
  }
  ASSERT_GT(kept, 0) << "the reference plan is empty " << replay_hint(seed);
  for (int64_t i = 0; i < want.blocks.numel(); ++i) {
    ASSERT_EQ(blocks.data<int32_t>()[i], want.blocks.data<int32_t>()[i])
        << "blocks of row " << i / nk << ", entry " << i % nk << " " << replay_hint(seed);
  }
}

class AuxPlanner : public ::testing::TestWithParam<PlannerCase> {};

TEST_P(AuxPlanner, MatchesCpuExactly) {
  PSA_SKIP_WITHOUT_GPU();
  const PlannerCase c = GetParam();
  const uint64_t seed = test_seed(303 + c.seq_k + c.block_n);
  const Config config = planner_config(c);
  const int64_t batch = 2;
  const PlanShape shape = plan_shape(batch, c.heads_q, c.seq_q, c.seq_k, config);
  const HostTensor scores =
      random_scores(batch, c.heads_q, shape.num_q_blocks, shape.num_k_blocks, c.ties, seed);
  HostTensor keys;
  TensorView k_host;
  DeviceTensor k_device;
  TensorView k_view;
  if (c.sim_cap) {
    keys = smooth_keys(DType::kBFloat16, batch, c.heads_kv, c.seq_k, 64, c.block_n, seed + 5);
    k_host = keys.view();
    k_device = DeviceTensor(keys);
    k_view = k_device.view();
  }

  HostPlan want = make_host_plan(batch, c.heads_q, c.seq_q, c.seq_k, config);
  test::poison(want.counts);
  test::poison(want.blocks);
  PSA_EXPECT_OK(plan_from_scores(want.view(), scores.view(), k_host, config));

  const DeviceTensor d_scores(scores);
  DevicePlan got = test::make_device_plan(batch, c.heads_q, c.seq_q, c.seq_k, config);
  got.counts.poison();
  got.blocks.poison();
  const size_t ws_bytes = plan_workspace_bytes(shape, Device::kCuda);
  DeviceTensor workspace(DType::kUInt8, {static_cast<int64_t>(std::max<size_t>(ws_bytes, 1))});
  workspace.poison();
  PSA_EXPECT_OK(plan_from_scores(got.view(), d_scores.view(), k_view, config, workspace.data(),
                                 ws_bytes));
  expect_same_plan(got, want, seed);
}

INSTANTIATE_TEST_SUITE_P(
    Cases, AuxPlanner,
    ::testing::Values(
        PlannerCase{"topk_n64", PlanMode::kTopK, 64, 4096, 4096},
        PlannerCase{"topk_n32_ties", PlanMode::kTopK, 32, 2048, 4000, false, 0, TextPosition::kEnd,
                    false, false, true},
        PlannerCase{"topk_n128_text_end", PlanMode::kTopK, 128, 3000, 3000, false, 226},
        PlannerCase{"threshold_n128", PlanMode::kThresholdBound, 128, 4096, 4096},
        PlannerCase{"threshold_n32_text_start", PlanMode::kThresholdBound, 32, 2000, 2000, false,
                    100, TextPosition::kStart},
        PlannerCase{"threshold_n64_ties", PlanMode::kThresholdBound, 64, 1500, 2500, false, 0,
                    TextPosition::kEnd, false, false, true},
        PlannerCase{"topk_causal_sink", PlanMode::kTopK, 64, 1000, 3000, true, 0,
                    TextPosition::kEnd, true},
        PlannerCase{"threshold_causal_lq_gt_lk", PlanMode::kThresholdBound, 32, 2000, 1200, true,
                    50, TextPosition::kStart, true},
        PlannerCase{"topk_sim_gqa", PlanMode::kTopK, 64, 1024, 2000, false, 0, TextPosition::kEnd,
                    false, true, false, 4, 2},
        PlannerCase{"threshold_sim_n128", PlanMode::kThresholdBound, 128, 2048, 4096, false, 226,
                    TextPosition::kEnd, false, true},
        PlannerCase{"threshold_sim_causal_n32", PlanMode::kThresholdBound, 32, 1000, 1000, true, 0,
                    TextPosition::kEnd, false, true},
        // Text rows (every visible block at level 1) and text columns, causal and not, text
        // first and last, Lq < Lk.
        PlannerCase{"topk_causal_text_end", PlanMode::kTopK, 64, 2000, 2000, true, 200,
                    TextPosition::kEnd, true},
        PlannerCase{"threshold_causal_text_start", PlanMode::kThresholdBound, 32, 1500, 1500,
                    true, 300, TextPosition::kStart},
        PlannerCase{"topk_text_start_lq_lt_lk", PlanMode::kTopK, 64, 900, 2000, false, 150,
                    TextPosition::kStart},
        PlannerCase{"threshold_causal_text_end_lq_lt_lk", PlanMode::kThresholdBound, 128, 700,
                    1600, true, 100, TextPosition::kEnd, true},
        // The radix sort holds 256 x {1, 2, 4, 8, 16} keys: Nk = 512 (2 a thread, ties), 600
        // (4, causal), 3000 (16); past 4096 the bitonic sort: Nk = 4375.
        PlannerCase{"topk_nk512_ties", PlanMode::kTopK, 64, 1024, 32760, false, 0,
                    TextPosition::kEnd, false, false, true},
        PlannerCase{"threshold_nk600_causal", PlanMode::kThresholdBound, 32, 19200, 19200, true},
        PlannerCase{"threshold_wide_row", PlanMode::kThresholdBound, 32, 256, 96000},
        PlannerCase{"topk_bitonic_row_ties", PlanMode::kTopK, 32, 256, 140000, false, 0,
                    TextPosition::kEnd, false, false, true},
        PlannerCase{"topk_tiny_row", PlanMode::kTopK, 128, 300, 100}),
    [](const ::testing::TestParamInfo<PlannerCase>& info) { return std::string(info.param.name); });

// ---- Level maps -------------------------------------------------------------------------------

class AuxLevels : public ::testing::TestWithParam<bool> {};

TEST_P(AuxLevels, RoundTripMatchesCpu) {
  PSA_SKIP_WITHOUT_GPU();
  const bool sim_cap = GetParam();
  const uint64_t seed = test_seed(404 + sim_cap);
  Config config;
  config.block_m = 64;
  config.block_n = 64;
  config.sim_cap = sim_cap;
  const int64_t batch = 2, heads_q = 4, heads_kv = 2, seq_q = 700, seq_k = 1900;
  const PlanShape shape = plan_shape(batch, heads_q, seq_q, seq_k, config);
  HostTensor levels(DType::kUInt8, {batch, heads_q, shape.num_q_blocks, shape.num_k_blocks});
  HostTensor pick(DType::kFloat32, levels.shape());
  test::fill_uniform(pick, seed, 0.0, 5.0);
  constexpr int kValues[5] = {0, 1, 2, 4, 8};
  for (int64_t i = 0; i < levels.numel(); ++i) {
    levels.set(i, kValues[std::min(4, static_cast<int>(pick.get(i)))]);
  }
  HostTensor keys;
  TensorView k_host, k_view;
  DeviceTensor k_device;
  if (sim_cap) {
    keys = smooth_keys(DType::kFloat16, batch, heads_kv, seq_k, 128, config.block_n, seed + 3);
    k_host = keys.view();
    k_device = DeviceTensor(keys);
    k_view = k_device.view();
  }
  HostPlan want = make_host_plan(batch, heads_q, seq_q, seq_k, config);
  test::poison(want.counts);
  test::poison(want.blocks);
  PSA_EXPECT_OK(plan_from_levels(want.view(), levels.view(), k_host, config));

  const DeviceTensor d_levels(levels);
  DevicePlan got = test::make_device_plan(batch, heads_q, seq_q, seq_k, config);
  got.counts.poison();
  got.blocks.poison();
  PSA_EXPECT_OK(plan_from_levels(got.view(), d_levels.view(), k_view, config));
  expect_same_plan(got, want, seed);

  // The same map read through a strided view (storage (B, Hq, Nk, Mq), dims 2 and 3 swapped): a
  // level map, like q, k and v, may have any strides.
  const int64_t mq = shape.num_q_blocks, nk = shape.num_k_blocks;
  HostTensor swapped(DType::kUInt8, {batch, heads_q, nk, mq});
  for (int64_t bh = 0; bh < batch * heads_q; ++bh) {
    for (int64_t i = 0; i < mq; ++i) {
      for (int64_t j = 0; j < nk; ++j) {
        swapped.set((bh * nk + j) * mq + i, levels.get((bh * mq + i) * nk + j));
      }
    }
  }
  const DeviceTensor d_swapped(swapped);
  DevicePlan got_strided = test::make_device_plan(batch, heads_q, seq_q, seq_k, config);
  got_strided.counts.poison();
  got_strided.blocks.poison();
  PSA_EXPECT_OK(plan_from_levels(got_strided.view(), transpose_view(d_swapped.view(), 2, 3),
                                 k_view, config));
  expect_same_plan(got_strided, want, seed);

  // Back to a level map: the input itself without the cap, the CPU's expansion of its plan with.
  HostTensor want_levels(DType::kUInt8, levels.shape());
  PSA_EXPECT_OK(plan_to_levels(want_levels.view(), want.view()));
  if (!sim_cap) {
    for (int64_t i = 0; i < levels.numel(); ++i) {
      ASSERT_EQ(want_levels.get(i), levels.get(i)) << "CPU round trip, entry " << i;
    }
  }
  DeviceTensor d_out(DType::kUInt8, levels.shape());
  d_out.poison();
  PSA_EXPECT_OK(plan_to_levels(d_out.view(), got.view()));
  const HostTensor out = d_out.download();
  int64_t capped = 0;
  for (int64_t i = 0; i < levels.numel(); ++i) {
    ASSERT_EQ(out.get(i), want_levels.get(i)) << "entry " << i << " " << replay_hint(seed);
    capped += out.get(i) != levels.get(i);
  }
  if (sim_cap) EXPECT_GT(capped, 0) << "the cap changed nothing: the test proves little";
}

INSTANTIATE_TEST_SUITE_P(Cases, AuxLevels, ::testing::Values(false, true));

// ---- Permutation ------------------------------------------------------------------------------

struct PermuteCase {
  DType dtype;
  int64_t batch, heads, seq, dim;
  bool strided_in, strided_out;
};

void PrintTo(const PermuteCase& c, std::ostream* os) {
  *os << dtype_name(c.dtype) << " " << c.batch << "x" << c.heads << "x" << c.seq << "x" << c.dim
      << (c.strided_in ? " strided in" : "") << (c.strided_out ? " strided out" : "");
}

class AuxPermute : public ::testing::TestWithParam<PermuteCase> {};

TEST_P(AuxPermute, GathersTokens) {
  PSA_SKIP_WITHOUT_GPU();
  const PermuteCase c = GetParam();
  const uint64_t seed = test_seed(505 + c.seq + c.dim);
  const LayoutTensor in = random_tensor(c.dtype, c.batch, c.heads, c.seq, c.dim, c.strided_in, seed);
  HostTensor perm(DType::kInt64, {c.seq});
  std::vector<int64_t> order(static_cast<size_t>(c.seq));
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), std::mt19937_64(seed));
  for (int64_t i = 0; i < c.seq; ++i) perm.data<int64_t>()[i] = order[static_cast<size_t>(i)];

  const DeviceTensor d_in(in.host), d_perm(perm);
  const std::vector<int64_t> out_shape =
      c.strided_out ? std::vector<int64_t>{c.batch, c.seq, c.heads, c.dim}
                    : std::vector<int64_t>{c.batch, c.heads, c.seq, c.dim};
  DeviceTensor d_out(c.dtype, out_shape);
  d_out.poison();
  const TensorView out_view = c.strided_out ? transpose_view(d_out.view(), 1, 2) : d_out.view();
  PSA_EXPECT_OK(permute_tokens(out_view, in.device_view(d_in),
                               static_cast<const int64_t*>(d_perm.data())));
  const HostTensor out = d_out.download();
  const TensorView src = in.host_view();
  TensorView dst = out.view();
  if (c.strided_out) dst = transpose_view(dst, 1, 2);
  double norm = 0.0;
  for (int64_t b = 0; b < c.batch; ++b) {
    for (int64_t h = 0; h < c.heads; ++h) {
      for (int64_t i = 0; i < c.seq; ++i) {
        for (int64_t d = 0; d < c.dim; ++d) {
          const int64_t s_off = b * src.stride[0] + h * src.stride[1] + order[i] * src.stride[2] + d * src.stride[3];
          const int64_t d_off = b * dst.stride[0] + h * dst.stride[1] + i * dst.stride[2] + d * dst.stride[3];
          const double want = in.host.get(s_off);
          norm += want * want;
          // A copy: bit-exact.
          ASSERT_EQ(out.get(d_off), want) << "(" << b << ", " << h << ", " << i << ", " << d << ") "
                                          << replay_hint(seed);
        }
      }
    }
  }
  ASSERT_GT(norm, 0.0);
}

INSTANTIATE_TEST_SUITE_P(
    Cases, AuxPermute,
    ::testing::Values(PermuteCase{DType::kBFloat16, 2, 3, 500, 128, false, false},
                      PermuteCase{DType::kFloat16, 1, 2, 333, 64, true, false},
                      PermuteCase{DType::kFloat32, 1, 2, 200, 64, false, true},
                      PermuteCase{DType::kFloat16, 2, 2, 101, 7, true, true}));

// ---- Timing (reported, not asserted) ------------------------------------------------------------

// Pyramid, estimator and planner times on a model's shape (bf16), for the default plan (topk,
// block 128/64) and a psa_balanced-like one (thresholdbound, block_n 128, sim cap). The bar
// (PERFORMANCE.md): estimator + planner at most 0.05 of cuDNN dense time, e.g. about 0.3 to
// 0.6 ms for Wan2.1 1.3B on an H100/H200.
void time_plan_stages(const char* label, int64_t heads, int64_t seq, int64_t dim) {
  const int64_t batch = 1, tile_tokens = 4096;
  const uint64_t seed = test_seed(606);
  // Random (never zero) q and k: one random tile of tokens repeated along the sequence.
  HostTensor tile(DType::kBFloat16, {tile_tokens, dim});
  test::fill_normal(tile, seed);
  DeviceTensor q(DType::kBFloat16, {batch, heads, seq, dim}), k(DType::kBFloat16, {batch, heads, seq, dim});
  const size_t row_bytes = static_cast<size_t>(dim) * 2;
  for (DeviceTensor* t : {&q, &k}) {
    for (int64_t start = 0; start < heads * seq; start += tile_tokens) {
      const int64_t n = std::min(tile_tokens, heads * seq - start);
      PSA_CUDA_CHECK(cudaMemcpy(static_cast<char*>(t->data()) + start * row_bytes,
                                tile.view().data, n * row_bytes, cudaMemcpyHostToDevice));
    }
  }
  {
    // The pyramid of k and v (k serves as v here; the traffic is the same).
    test::DevicePyramid pyramid = test::make_device_pyramid(batch, heads, seq, dim, DType::kBFloat16);
    cudaEvent_t e0, e1;
    PSA_CUDA_CHECK(cudaEventCreate(&e0));
    PSA_CUDA_CHECK(cudaEventCreate(&e1));
    std::vector<float> ms;
    for (int run = 0; run < 13; ++run) {
      PSA_CUDA_CHECK(cudaEventRecord(e0));
      PSA_EXPECT_OK(build_pyramid(pyramid.view(), k.view(), q.view()));
      PSA_CUDA_CHECK(cudaEventRecord(e1));
      PSA_CUDA_CHECK(cudaEventSynchronize(e1));
      float a = 0.0f;
      PSA_CUDA_CHECK(cudaEventElapsedTime(&a, e0, e1));
      if (run >= 3) ms.push_back(a);
    }
    std::sort(ms.begin(), ms.end());
    // Bytes moved: read k and v, write 1/2 + 1/4 + 1/8 of each.
    const double bytes = 2.0 * batch * heads * seq * dim * 2 * (1.0 + 0.875);
    std::printf("[timing] %s pyramid: %.3f ms (%.0f GB/s)\n", label, ms[ms.size() / 2],
                bytes / (ms[ms.size() / 2] * 1e6));
    PSA_CUDA_CHECK(cudaEventDestroy(e0));
    PSA_CUDA_CHECK(cudaEventDestroy(e1));
  }
  for (int variant = 0; variant < 2; ++variant) {
    Config config;
    config.block_m = 128;
    config.block_n = variant == 0 ? 64 : 128;
    config.mode = variant == 0 ? PlanMode::kTopK : PlanMode::kThresholdBound;
    if (variant == 1) {
      config.ends = {0.5, 0.6, 0.7, 0.8};
      config.sim_cap = true;
    }
    const PlanShape shape = plan_shape(batch, heads, seq, seq, config);
    DeviceTensor scores(DType::kFloat32, {batch, heads, shape.num_q_blocks, shape.num_k_blocks});
    DevicePlan plan = test::make_device_plan(batch, heads, seq, seq, config);
    const size_t ws_bytes = plan_workspace_bytes(shape, Device::kCuda);
    DeviceTensor workspace(DType::kUInt8, {static_cast<int64_t>(ws_bytes)});
    cudaEvent_t e0, e1, e2;
    PSA_CUDA_CHECK(cudaEventCreate(&e0));
    PSA_CUDA_CHECK(cudaEventCreate(&e1));
    PSA_CUDA_CHECK(cudaEventCreate(&e2));
    constexpr int kRuns = 20;
    std::vector<float> est_ms, plan_ms;
    for (int run = 0; run < kRuns + 3; ++run) {
      PSA_CUDA_CHECK(cudaEventRecord(e0));
      PSA_EXPECT_OK(estimate_importance(scores.view(), q.view(), k.view(), config));
      PSA_CUDA_CHECK(cudaEventRecord(e1));
      PSA_EXPECT_OK(plan_from_scores(plan.view(), scores.view(), k.view(), config,
                                     workspace.data(), ws_bytes));
      PSA_CUDA_CHECK(cudaEventRecord(e2));
      PSA_CUDA_CHECK(cudaEventSynchronize(e2));
      float a = 0.0f, b = 0.0f;
      PSA_CUDA_CHECK(cudaEventElapsedTime(&a, e0, e1));
      PSA_CUDA_CHECK(cudaEventElapsedTime(&b, e1, e2));
      if (run >= 3) {
        est_ms.push_back(a);
        plan_ms.push_back(b);
      }
    }
    std::sort(est_ms.begin(), est_ms.end());
    std::sort(plan_ms.begin(), plan_ms.end());
    // The sampled GEMM of the estimator: (Mq s_m) x (Nk s_n) x D per head, 2 flops a term.
    const double sampled_flops = 2.0 * batch * heads * (shape.num_q_blocks * config.effective_samples_m()) *
                                 (shape.num_k_blocks * config.effective_samples_n()) * dim;
    std::printf("[timing] %s %s block_n %d: estimator %.3f ms (%.0f TFLOP/s of the sampled GEMM), "
                "planner %.3f ms (median of %d)\n",
                label, plan_mode_name(config.mode), config.block_n, est_ms[kRuns / 2],
                sampled_flops / (est_ms[kRuns / 2] * 1e9), plan_ms[kRuns / 2], kRuns);
    PSA_CUDA_CHECK(cudaEventDestroy(e0));
    PSA_CUDA_CHECK(cudaEventDestroy(e1));
    PSA_CUDA_CHECK(cudaEventDestroy(e2));
  }
}

TEST(AuxTiming, Wan13B) {
  PSA_SKIP_WITHOUT_GPU();
  time_plan_stages("Wan2.1 1.3B (1, 12, 32760, 128)", 12, 32760, 128);
}

TEST(AuxTiming, CogVideoX5B) {
  PSA_SKIP_WITHOUT_GPU();
  time_plan_stages("CogVideoX 5B (1, 48, 17776, 64)", 48, 17776, 64);
}

}  // namespace
}  // namespace psa
