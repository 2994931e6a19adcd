// The CUDA attention forward against the CPU reference (SPEC.md sections 2, 3, 6) over a sweep of
// dtypes, head dims, block sizes, GQA ratios, Lq != Lk, ragged lengths, causal on and off, plan
// kinds (mixed, all-full, all-skip, only-8x) and strided (B, L, H, D) layouts; non-finite inputs
// give NaN rows, never empty ones.
//
// Tolerance (STYLE.md): the GPU output's error against an fp64 reference (the CPU reference run on
// the same 16-bit inputs widened to fp32, computed in double) must be within 2x the error of the
// CPU reference run in the 16-bit dtype itself (whose only error is the final rounding). The GPU
// adds one more rounding of the same size (P to 16 bits before P V), so it lands near sqrt(2)x.
#include <gtest/gtest.h>

#include <ostream>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "common/test_util.h"
#include "cuda/cuda_test_util.h"
#include "cuda/plan_cases.h"
#include "cuda/cuda_backend.h"
#include "cuda/kernel_path.h"
#include "psa/psa.h"

namespace psa::test {
namespace {

struct AttentionCase {
  const char* name;
  int64_t batch, heads_q, heads_kv, seq_q, seq_k, head_dim;
  DType dtype;
  int block_m, block_n;
  bool causal;
  PlanKind plan;
  bool strided;  // q, k, v, out stored as (B, L, H, D) and viewed as (B, H, L, D)
  bool with_lse;
  float softmax_scale = 0.0f;  // 0 selects 1/sqrt(D)
};
// gtest prints a case by its name (not as raw bytes) in test listings and failures.
void PrintTo(const AttentionCase& c, std::ostream* os) { *os << c.name; }

// The sweep. Lengths are ragged unless a case says otherwise (e.g. 389 = 6 * 64 + 5).
const AttentionCase kCases[] = {
    {"Bf16D128Bm128Bn64Mixed", 2, 4, 2, 389, 389, 128, DType::kBFloat16, 128, 64, false,
     PlanKind::kMixed, false, true},
    {"Fp16D128Bm128Bn64MixedCausal", 1, 4, 4, 389, 389, 128, DType::kFloat16, 128, 64, true,
     PlanKind::kMixed, false, true},
    {"Bf16D64Bm64Bn32MixedGqa3LqLtLk", 1, 6, 2, 200, 333, 64, DType::kBFloat16, 64, 32, false,
     PlanKind::kMixed, false, true},
    {"Fp16D64Bm128Bn128MixedCausalLqLtLk", 1, 2, 1, 257, 500, 64, DType::kFloat16, 128, 128, true,
     PlanKind::kMixed, false, true},
    {"Bf16D128Bm64Bn128CausalLqGtLkEmptyRows", 1, 2, 2, 300, 170, 128, DType::kBFloat16, 64, 128,
     true, PlanKind::kMixed, false, true},
    {"Fp16D128Bm64Bn32Mixed", 1, 2, 1, 256, 256, 128, DType::kFloat16, 64, 32, false,
     PlanKind::kMixed, false, true},
    {"Bf16D64Bm128Bn64MixedCausal", 2, 2, 2, 320, 320, 64, DType::kBFloat16, 128, 64, true,
     PlanKind::kMixed, false, true},
    {"Bf16D128Bm128Bn64AllFullCausal", 1, 3, 3, 333, 333, 128, DType::kBFloat16, 128, 64, true,
     PlanKind::kAllFull, false, true},
    {"Fp16D64Bm64Bn32AllFull", 1, 2, 1, 250, 301, 64, DType::kFloat16, 64, 32, false,
     PlanKind::kAllFull, false, true},
    {"Bf16D128Bm128Bn64Only8x", 1, 2, 1, 389, 389, 128, DType::kBFloat16, 128, 64, false,
     PlanKind::kOnly8x, false, true},
    {"Fp16D64Bm64Bn32Only8xCausal", 1, 2, 2, 300, 300, 64, DType::kFloat16, 64, 32, true,
     PlanKind::kOnly8x, false, true},
    {"Bf16D128Bm128Bn128Only8xRagged", 1, 1, 1, 200, 517, 128, DType::kBFloat16, 128, 128, false,
     PlanKind::kOnly8x, false, true},
    {"Bf16D128Bm128Bn64StridedMixedCausalGqa", 2, 4, 2, 300, 300, 128, DType::kBFloat16, 128, 64,
     true, PlanKind::kMixed, true, true},
    {"Fp16D64Bm64Bn128StridedMixed", 1, 4, 1, 190, 410, 64, DType::kFloat16, 64, 128, false,
     PlanKind::kMixed, true, true},
    {"Bf16D64Bm128Bn32NoLse", 1, 2, 1, 256, 256, 64, DType::kBFloat16, 128, 32, false,
     PlanKind::kMixed, false, false},
    {"Bf16D128Bm128Bn32LongRow", 1, 2, 1, 256, 2000, 128, DType::kBFloat16, 128, 32, false,
     PlanKind::kMixed, false, true},
    {"Fp16D128Bm128Bn64AllFullSharpScale", 1, 2, 1, 300, 700, 128, DType::kFloat16, 128, 64, false,
     PlanKind::kAllFull, false, true, 0.3f},
};

struct CpuResult {
  HostTensor out, lse;
};
CpuResult cpu_attention(const HostTensor& q, const HostTensor& k, const HostTensor& v,
                        const HostPyramid& pyramid, const HostPlan& plan, const Config& config,
                        DType out_dtype) {
  CpuResult r;
  r.out = HostTensor(out_dtype, q.shape());
  r.lse = HostTensor(DType::kFloat32, {q.shape()[0], q.shape()[1], q.shape()[2]});
  poison(r.out);
  poison(r.lse);
  const Status s = attention_forward(r.out.view(), r.lse.view(), q.view(), k.view(), v.view(),
                                     pyramid.view(), plan.view(), config);
  EXPECT_TRUE(s.ok()) << s.to_string();
  return r;
}

// LSE rows match: both -inf (empty rows) or within the bound below.
void expect_lse_close(const HostTensor& gpu, const HostTensor& ref, uint64_t seed) {
  int64_t mismatches = 0, empty_rows = 0;
  double worst = 0.0;
  for (int64_t i = 0; i < ref.numel(); ++i) {
    const double r = ref.get(i), g = gpu.get(i);
    if (std::isinf(r)) {
      ++empty_rows;
      if (!(std::isinf(g) && g < 0)) ++mismatches;
      continue;
    }
    // LSE is fp32 on both sides from identical 16-bit products; the GPU differs by summation
    // order and ex2.approx / log2 (relative 2^-22): ~1e-5 on logits of size ~10, so 1e-3 is a
    // 100x margin that still catches a wrong bias (ln 2 = 0.69) or a missing key.
    const double d = std::fabs(g - r);
    if (!(d <= 1e-3)) ++mismatches;
    worst = std::max(worst, std::isnan(d) ? INFINITY : d);
  }
  EXPECT_EQ(mismatches, 0) << "LSE: worst |diff| " << worst << ", reference empty rows "
                           << empty_rows << "; " << replay_hint(seed);
}

class CudaAttentionTest : public ::testing::TestWithParam<AttentionCase> {};

TEST_P(CudaAttentionTest, MatchesCpuReference) {
  PSA_SKIP_WITHOUT_GPU();
  const AttentionCase& c = GetParam();
  const uint64_t seed = test_seed(0x5eed0000u + static_cast<uint64_t>(c.seq_q * 131 + c.seq_k));

  Qkv qkv = random_qkv(c.batch, c.heads_q, c.heads_kv, c.seq_q, c.seq_k, c.head_dim, c.dtype, seed,
                       /*scale=*/1.5);
  Config config;
  config.block_m = c.block_m;
  config.block_n = c.block_n;
  config.causal = c.causal;
  config.softmax_scale = c.softmax_scale;
  HostPyramid pyramid = make_host_pyramid(c.batch, c.heads_kv, c.seq_k, c.head_dim, c.dtype);
  ASSERT_TRUE(build_pyramid(pyramid.view(), qkv.k.view(), qkv.v.view()).ok());
  const HostPlan plan = plan_from_level_map(make_level_map(c, seed + 1), c);

  // fp64 reference on the widened inputs, and the same-precision CPU run.
  const HostTensor q32 = to_host(qkv.q.view(), DType::kFloat32);
  const HostTensor k32 = to_host(qkv.k.view(), DType::kFloat32);
  const HostTensor v32 = to_host(qkv.v.view(), DType::kFloat32);
  const CpuResult ref = cpu_attention(q32, k32, v32, widen(pyramid), plan, config, DType::kFloat32);
  const CpuResult cpu16 = cpu_attention(qkv.q, qkv.k, qkv.v, pyramid, plan, config, c.dtype);

  // GPU run on poisoned outputs.
  const DeviceOperand q = upload(qkv.q, c.strided);
  const DeviceOperand k = upload(qkv.k, c.strided);
  const DeviceOperand v = upload(qkv.v, c.strided);
  const DevicePyramid dev_pyramid = upload_pyramid(pyramid);
  const DevicePlan dev_plan = upload_plan(plan);
  DeviceOperand out = allocate(c.dtype, qkv.q.shape(), c.strided);
  DeviceTensor lse(DType::kFloat32, {c.batch, c.heads_q, c.seq_q});
  lse.poison();
  const Status status =
      attention_forward(out.view, c.with_lse ? lse.view() : TensorView{}, q.view, k.view, v.view,
                        dev_pyramid.view(), dev_plan.view(), config);
  ASSERT_TRUE(status.ok()) << status.to_string();
  const HostTensor gpu_out = download(out, c.strided);

  ASSERT_FALSE(has_nan(gpu_out)) << replay_hint(seed);
  if (c.plan == PlanKind::kAllSkip) {
    EXPECT_EQ(l2_norm(gpu_out), 0.0) << replay_hint(seed);
  } else {
    ASSERT_GT(l2_norm(ref.out), 0.0) << "reference is zero; " << replay_hint(seed);
    const double cpu_error = rel_l2(cpu16.out, ref.out);
    const double gpu_error = rel_l2(gpu_out, ref.out);
    EXPECT_LE(gpu_error, 2.0 * cpu_error)
        << "GPU rel L2 " << gpu_error << " vs same-precision CPU " << cpu_error << "; "
        << replay_hint(seed);
  }
  // Rows the reference leaves empty are exactly zero on the GPU.
  const int64_t d = c.head_dim;
  for (int64_t row = 0; row < ref.lse.numel(); ++row) {
    if (!std::isinf(ref.lse.get(row))) continue;
    for (int64_t i = 0; i < d; ++i) {
      ASSERT_EQ(gpu_out.get(row * d + i), 0.0) << "empty row " << row << "; " << replay_hint(seed);
    }
  }
  if (c.with_lse) expect_lse_close(lse.download(), ref.lse, seed);
}

INSTANTIATE_TEST_SUITE_P(Sweep, CudaAttentionTest, ::testing::ValuesIn(kCases),
                         [](const ::testing::TestParamInfo<AttentionCase>& info) {
                           return std::string(info.param.name);
                         });

AttentionCase all_skip_case() {
  return {"AllSkip", 1, 2, 1, 200, 300, 64, DType::kBFloat16, 64, 64, false, PlanKind::kAllSkip,
          false, true};
}

TEST(CudaAttention, AllSkipGivesZeroAndMinusInf) {
  PSA_SKIP_WITHOUT_GPU();
  const AttentionCase c = all_skip_case();
  const uint64_t seed = test_seed(77);
  Qkv qkv = random_qkv(c.batch, c.heads_q, c.heads_kv, c.seq_q, c.seq_k, c.head_dim, c.dtype, seed);
  Config config;
  config.block_m = c.block_m;
  config.block_n = c.block_n;
  DevicePyramid pyramid = make_device_pyramid(c.batch, c.heads_kv, c.seq_k, c.head_dim, c.dtype);
  for (int l = 0; l < kNumPooledLevels; ++l) {
    pyramid.k[l].poison();
    pyramid.v[l].poison();
  }
  const DevicePlan plan = upload_plan(plan_from_level_map(make_level_map(c, seed), c));
  const DeviceTensor q(qkv.q), k(qkv.k), v(qkv.v);
  DeviceTensor out(c.dtype, qkv.q.shape());
  DeviceTensor lse(DType::kFloat32, {c.batch, c.heads_q, c.seq_q});
  out.poison();
  lse.poison();
  ASSERT_TRUE(attention_forward(out.view(), lse.view(), q.view(), k.view(), v.view(),
                                pyramid.view(), plan.view(), config)
                  .ok());
  const HostTensor o = out.download(), l = lse.download();
  for (int64_t i = 0; i < o.numel(); ++i) ASSERT_EQ(o.get(i), 0.0) << replay_hint(seed);
  for (int64_t i = 0; i < l.numel(); ++i) {
    ASSERT_TRUE(std::isinf(l.get(i)) && l.get(i) < 0) << l.get(i) << "; " << replay_hint(seed);
  }
}

// A malformed device plan (the public API cannot check device contents): counts past Nk and
// block indices out of range are clamped to "skip", which must equal the sanitised plan on the CPU
// and never read out of bounds (run under compute-sanitizer memcheck).
TEST(CudaAttention, MalformedPlanIsClampedToSkip) {
  PSA_SKIP_WITHOUT_GPU();
  const AttentionCase c = {"Malformed", 1, 2, 1, 256, 300, 128, DType::kBFloat16, 128, 64, false,
                           PlanKind::kMixed, false, true};
  const uint64_t seed = test_seed(91);
  Qkv qkv = random_qkv(c.batch, c.heads_q, c.heads_kv, c.seq_q, c.seq_k, c.head_dim, c.dtype, seed);
  Config config;
  config.block_m = c.block_m;
  config.block_n = c.block_n;
  HostPyramid pyramid = make_host_pyramid(c.batch, c.heads_kv, c.seq_k, c.head_dim, c.dtype);
  ASSERT_TRUE(build_pyramid(pyramid.view(), qkv.k.view(), qkv.v.view()).ok());
  HostPlan plan = plan_from_level_map(make_level_map(c, seed), c);
  HostPlan bad = plan_from_level_map(make_level_map(c, seed), c);
  const int64_t nk = plan.blocks.shape()[3];
  auto* bad_counts = bad.counts.data<int32_t>();
  auto* bad_blocks = bad.blocks.data<int32_t>();
  auto* counts = plan.counts.data<int32_t>();
  auto* blocks = plan.blocks.data<int32_t>();
  // Row 0: every block of the list at level 1, one of them out of range (skipped), and a level-8
  // count that passes Nk (cut to 0 because the list is full).
  for (int64_t j = 0; j < nk; ++j) bad_blocks[j] = static_cast<int32_t>(j);
  bad_blocks[2] = -5;
  bad_counts[0] = static_cast<int32_t>(nk);
  bad_counts[1] = bad_counts[2] = 0;
  bad_counts[3] = 1000;
  counts[0] = static_cast<int32_t>(nk - 1);
  counts[1] = counts[2] = counts[3] = 0;
  for (int64_t j = 0, n = 0; j < nk; ++j) {
    if (j != 2) blocks[n++] = static_cast<int32_t>(j);
  }
  // Row 1: a negative count and a huge block index at level 2.
  bad_counts[kNumLevels + 0] = -3;
  bad_counts[kNumLevels + 1] = 1;
  bad_counts[kNumLevels + 2] = bad_counts[kNumLevels + 3] = 0;
  bad_blocks[nk] = 1 << 30;
  counts[kNumLevels + 0] = counts[kNumLevels + 1] = counts[kNumLevels + 2] =
      counts[kNumLevels + 3] = 0;

  const HostTensor q32 = to_host(qkv.q.view(), DType::kFloat32);
  const HostTensor k32 = to_host(qkv.k.view(), DType::kFloat32);
  const HostTensor v32 = to_host(qkv.v.view(), DType::kFloat32);
  const CpuResult ref = cpu_attention(q32, k32, v32, widen(pyramid), plan, config, DType::kFloat32);
  const CpuResult cpu16 = cpu_attention(qkv.q, qkv.k, qkv.v, pyramid, plan, config, c.dtype);

  const DeviceTensor q(qkv.q), k(qkv.k), v(qkv.v);
  const DevicePyramid dev_pyramid = upload_pyramid(pyramid);
  const DevicePlan dev_plan = upload_plan(bad);
  DeviceTensor out(c.dtype, qkv.q.shape());
  DeviceTensor lse(DType::kFloat32, {c.batch, c.heads_q, c.seq_q});
  out.poison();
  lse.poison();
  const Status status =
      cuda::attention_forward(out.view(), lse.view(), q.view(), k.view(), v.view(),
                              dev_pyramid.view(), dev_plan.view(), config, nullptr);
  ASSERT_TRUE(status.ok()) << status.to_string();
  const HostTensor gpu_out = out.download();
  ASSERT_FALSE(has_nan(gpu_out)) << replay_hint(seed);
  ASSERT_GT(l2_norm(ref.out), 0.0) << replay_hint(seed);
  EXPECT_LE(rel_l2(gpu_out, ref.out), 2.0 * rel_l2(cpu16.out, ref.out)) << replay_hint(seed);
  expect_lse_close(lse.download(), ref.lse, seed);
}

// A non-finite element of q makes its row's O and LSE NaN (never the zero row of an empty one),
// as the CPU reference and dense attention do; rows that see nothing stay O = 0, LSE = -inf, and
// every other row is bitwise the clean run's. Three ways a row meets a non-finite logit: q NaN;
// q +inf against keys of both signs in that dimension (logits +inf and -inf); q +inf against keys
// all negative in that dimension (every logit -inf: l = 0 must not pass for "sees nothing").
struct NonFiniteCase {
  const char* name;
  AttentionCase shape;
  int64_t rows[3];  // query rows poisoned in head 0: NaN, +inf (mixed signs), +inf (all -inf)
};
void PrintTo(const NonFiniteCase& c, std::ostream* os) { *os << c.name; }

class CudaAttentionNonFinite : public ::testing::TestWithParam<NonFiniteCase> {};

TEST_P(CudaAttentionNonFinite, GivesNanRowsAndKeepsEmptyRowsZero) {
  PSA_SKIP_WITHOUT_GPU();
  const NonFiniteCase& nc = GetParam();
  const AttentionCase& c = nc.shape;
  const uint64_t seed = test_seed(0x0f1e0000u + static_cast<uint64_t>(c.seq_q));
  Qkv clean = random_qkv(c.batch, c.heads_q, c.heads_kv, c.seq_q, c.seq_k, c.head_dim, c.dtype,
                         seed);
  const int64_t d = c.head_dim;
  for (int64_t t = 0; t < clean.k.numel() / d; ++t) {  // dimension 0 of every key negative
    clean.k.set(t * d, -std::fabs(clean.k.get(t * d)) - 0.1);
  }
  Qkv poisoned = clean;
  const double kInf = std::numeric_limits<double>::infinity();
  const double values[3] = {std::nan(""), kInf, kInf};
  const int64_t dims[3] = {3, 3, 0};
  for (int r = 0; r < 3; ++r) poisoned.q.set(nc.rows[r] * d + dims[r], values[r]);
  Config config;
  config.block_m = c.block_m;
  config.block_n = c.block_n;
  config.causal = c.causal;
  // The level map, with block 0 at level 1 in the plan rows of the poisoned rows (visible to
  // them in these cases), so that each poisoned row sees a unit.
  HostTensor levels = make_level_map(c, seed + 1);
  const int64_t nk = levels.shape()[3];
  for (int64_t row : nc.rows) levels.set((row / c.block_m) * nk, 1);
  const HostPlan plan = plan_from_level_map(levels, c);
  HostPyramid pyramid = make_host_pyramid(c.batch, c.heads_kv, c.seq_k, c.head_dim, c.dtype);
  ASSERT_TRUE(build_pyramid(pyramid.view(), clean.k.view(), clean.v.view()).ok());
  // The CPU reference in the inputs' own dtype: only where it is finite, NaN or empty matters.
  const CpuResult ref = cpu_attention(poisoned.q, poisoned.k, poisoned.v, pyramid, plan, config,
                                      c.dtype);

  const DevicePyramid dev_pyramid = upload_pyramid(pyramid);
  const DevicePlan dev_plan = upload_plan(plan);
  const DeviceTensor k(clean.k), v(clean.v);
  auto run = [&](const HostTensor& q_host, HostTensor* out_host, HostTensor* lse_host) {
    const DeviceTensor q(q_host);
    DeviceTensor out(c.dtype, q_host.shape());
    DeviceTensor lse(DType::kFloat32, {c.batch, c.heads_q, c.seq_q});
    out.poison();
    lse.poison();
    const Status status = attention_forward(out.view(), lse.view(), q.view(), k.view(), v.view(),
                                            dev_pyramid.view(), dev_plan.view(), config);
    ASSERT_TRUE(status.ok()) << status.to_string();
    *out_host = out.download();
    *lse_host = lse.download();
  };
  HostTensor clean_out, clean_lse, out, lse;
  run(clean.q, &clean_out, &clean_lse);
  run(poisoned.q, &out, &lse);

  int64_t empty_rows = 0;
  for (int64_t row = 0; row < lse.numel(); ++row) {
    const bool bad = row == nc.rows[0] || row == nc.rows[1] || row == nc.rows[2];
    const double ref_lse = ref.lse.get(row);
    if (bad) {
      ASSERT_TRUE(std::isnan(ref_lse)) << "reference row " << row << "; " << replay_hint(seed);
      EXPECT_TRUE(std::isnan(lse.get(row)))
          << "row " << row << " LSE " << lse.get(row) << "; " << replay_hint(seed);
      for (int64_t i = 0; i < d; ++i) {
        ASSERT_TRUE(std::isnan(out.get(row * d + i)))
            << "row " << row << " out " << out.get(row * d + i) << "; " << replay_hint(seed);
      }
      continue;
    }
    if (std::isinf(ref_lse)) {
      ++empty_rows;
      EXPECT_EQ(lse.get(row), -kInf) << "empty row " << row << "; " << replay_hint(seed);
      for (int64_t i = 0; i < d; ++i) ASSERT_EQ(out.get(row * d + i), 0.0) << "empty row " << row;
      continue;
    }
    EXPECT_EQ(lse.get(row), clean_lse.get(row)) << "row " << row << "; " << replay_hint(seed);
    for (int64_t i = 0; i < d; ++i) {
      ASSERT_EQ(out.get(row * d + i), clean_out.get(row * d + i)) << "row " << row;
    }
  }
  if (c.causal && c.seq_q > c.seq_k) EXPECT_GT(empty_rows, 0) << "the case must have empty rows";
}

INSTANTIATE_TEST_SUITE_P(
    Cases, CudaAttentionNonFinite,
    ::testing::Values(
        // Lq > Lk causal: rows 0..129 see nothing.
        NonFiniteCase{"Bf16D128Bm64Bn128CausalEmptyRows",
                      {"", 1, 2, 2, 300, 170, 128, DType::kBFloat16, 64, 128, true,
                       PlanKind::kAllFull, false, true},
                      {140, 200, 299}},
        NonFiniteCase{"Fp16D64Bm128Bn64Mixed",
                      {"", 1, 2, 1, 389, 389, 64, DType::kFloat16, 128, 64, false,
                       PlanKind::kMixed, false, true},
                      {5, 130, 388}},
        NonFiniteCase{"Bf16D128Bm128Bn64MixedCausal",
                      {"", 1, 2, 2, 389, 389, 128, DType::kBFloat16, 128, 64, true,
                       PlanKind::kMixed, false, true},
                      {7, 200, 300}}),
    [](const ::testing::TestParamInfo<NonFiniteCase>& info) {
      return std::string(info.param.name);
    });

// "Usable" means a device of compute capability 8.0 or newer is present (the portable kernels run
// there, the Hopper ones on 9.0); runs (and passes) on a machine without a GPU too, where it must
// say no and why.
TEST(CudaAttention, DeviceUsableMeansAnAmpereOrNewerDeviceIsPresent) {
  int count = 0;
  bool usable = false;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    count = 0;
    (void)cudaGetLastError();
  }
  for (int device = 0; device < count; ++device) {
    cudaDeviceProp prop{};
    PSA_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
    usable = usable || prop.major >= 8;
  }
  std::string reason;
  EXPECT_EQ(cuda_device_usable(&reason), usable) << reason;
  EXPECT_EQ(reason.empty(), usable) << reason;
  if (!usable && count > 0) EXPECT_NE(reason.find("8.0"), std::string::npos) << reason;
  EXPECT_TRUE(cuda_backend_built());
}

// Compute capability 9.0 takes the Hopper kernels unless PSA_FORCE_PORTABLE is 1 or 8.9; every
// other usable device the portable ones (cuda/kernel_path.h). The portable tiles follow the
// device's shared memory per SM, or 100 KiB under PSA_FORCE_PORTABLE=8.9.
TEST(CudaAttention, KernelPathFollowsTheComputeCapability) {
  PSA_SKIP_WITHOUT_GPU();
  cudaDeviceProp prop{};
  PSA_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  const char* env = std::getenv("PSA_FORCE_PORTABLE");
  const bool small_smem = env != nullptr && std::string(env) == "8.9";
  const bool forced = small_smem || (env != nullptr && std::string(env) == "1");
  EXPECT_EQ(cuda::portable_forced(), forced);
  int smem = 0;
  ASSERT_TRUE(cuda::shared_memory_per_sm(0, &smem).ok());
  EXPECT_EQ(smem, small_smem ? 100 * 1024 : static_cast<int>(prop.sharedMemPerMultiprocessor));
  cuda::KernelPath path = cuda::KernelPath::kHopper;
  const Status s = cuda::kernel_path(0, &path);
  ASSERT_TRUE(s.ok()) << s.to_string();
  const bool hopper = prop.major == 9 && prop.minor == 0 && !forced;
  EXPECT_EQ(path, hopper ? cuda::KernelPath::kHopper : cuda::KernelPath::kPortable)
      << prop.name << " (" << prop.major << "." << prop.minor << ")";
}

TEST(CudaAttention, UnsupportedCombinationsNameWhatIsSupported) {
  std::string reason;
  EXPECT_TRUE(cuda_attention_supported(DType::kBFloat16, 128, 128, 64, &reason)) << reason;
  EXPECT_FALSE(cuda_attention_supported(DType::kBFloat16, 96, 128, 64, &reason));
  EXPECT_NE(reason.find("64, 128"), std::string::npos) << reason;
  EXPECT_FALSE(cuda_attention_supported(DType::kFloat32, 128, 128, 64, &reason));
  EXPECT_NE(reason.find("bf16, fp16"), std::string::npos) << reason;
  EXPECT_FALSE(cuda_attention_supported(DType::kFloat16, 64, 32, 64, &reason));
  EXPECT_FALSE(cuda_attention_supported(DType::kFloat16, 64, 128, 16, &reason));
  EXPECT_NE(reason.find("32, 64, 128"), std::string::npos) << reason;
}

}  // namespace
}  // namespace psa::test
