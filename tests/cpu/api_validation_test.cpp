// Bad arguments to every public function return a clear error naming the argument: never a crash,
// never silent garbage. Each case starts from a valid call (checked to succeed) and breaks one thing.
#include <gtest/gtest.h>

#include <functional>
#include <limits>
#include <string>

#include "common/test_util.h"
#include "psa/psa.h"

namespace psa::test {
namespace {

constexpr int64_t kB = 1, kHq = 4, kHkv = 2, kLq = 40, kLk = 72, kD = 8;

Config small_config() {
  Config c;
  c.block_m = 16;
  c.block_n = 16;
  c.tile_n = 16;
  return c;
}

// Everything a valid forward call needs, owned on the host.
struct Problem {
  Config config = small_config();
  Qkv qkv = random_qkv(kB, kHq, kHkv, kLq, kLk, kD, DType::kFloat32, 11);
  HostTensor out{DType::kFloat32, {kB, kHq, kLq, kD}};
  HostTensor lse{DType::kFloat32, {kB, kHq, kLq}};
  HostPyramid pyramid = make_host_pyramid(kB, kHkv, kLk, kD, DType::kFloat32);
  HostPlan plan = make_host_plan(kB, kHq, kLq, kLk, config);
  HostTensor scores{DType::kFloat32, {kB, kHq, 3, 5}};

  Problem() {
    EXPECT_TRUE(build_pyramid(pyramid.view(), qkv.k.view(), qkv.v.view()).ok());
    EXPECT_TRUE(estimate_importance(scores.view(), qkv.q.view(), qkv.k.view(), config).ok());
    EXPECT_TRUE(plan_from_scores(plan.view(), scores.view(), TensorView{}, config).ok());
  }

  Status forward() {
    return attention_forward(out.view(), lse.view(), qkv.q.view(), qkv.k.view(), qkv.v.view(),
                             pyramid.view(), plan.view(), config);
  }
};

// The error must be kInvalidArgument and its message must contain every fragment.
void expect_invalid(const Status& s, std::initializer_list<const char*> fragments) {
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.to_string();
  for (const char* f : fragments) {
    EXPECT_NE(s.message().find(f), std::string::npos)
        << "message \"" << s.message() << "\" should mention \"" << f << "\"";
  }
}

TEST(ApiValidation, ValidCallsSucceed) {
  Problem p;
  ASSERT_TRUE(p.forward().ok()) << p.forward().to_string();
}

TEST(ApiValidation, AttentionForwardWrongRank) {
  Problem p;
  TensorView q = p.qkv.q.view();
  q.rank = 3;
  expect_invalid(attention_forward(p.out.view(), p.lse.view(), q, p.qkv.k.view(), p.qkv.v.view(),
                                   p.pyramid.view(), p.plan.view(), p.config),
                 {"q", "rank 4"});
}

TEST(ApiValidation, AttentionForwardMismatchedShapes) {
  Problem p;
  HostTensor v(DType::kFloat32, {kB, kHkv, kLk + 1, kD});
  fill_normal(v, 3);
  expect_invalid(attention_forward(p.out.view(), p.lse.view(), p.qkv.q.view(), p.qkv.k.view(),
                                   v.view(), p.pyramid.view(), p.plan.view(), p.config),
                 {"v", "(B, Hkv, Lk, D)", "(1, 2, 72, 8)", "(1, 2, 73, 8)"});
  HostTensor k(DType::kFloat32, {kB, kHkv, kLk, kD + 1});
  fill_normal(k, 4);
  expect_invalid(attention_forward(p.out.view(), p.lse.view(), p.qkv.q.view(), k.view(),
                                   p.qkv.v.view(), p.pyramid.view(), p.plan.view(), p.config),
                 {"k", "(B, Hkv, Lk, D)"});
  HostTensor out(DType::kFloat32, {kB, kHq, kLq, kD + 1});
  expect_invalid(attention_forward(out.view(), p.lse.view(), p.qkv.q.view(), p.qkv.k.view(),
                                   p.qkv.v.view(), p.pyramid.view(), p.plan.view(), p.config),
                 {"out", "shape of q"});
  HostTensor lse(DType::kFloat32, {kB, kHq, kLq + 1});
  expect_invalid(attention_forward(p.out.view(), lse.view(), p.qkv.q.view(), p.qkv.k.view(),
                                   p.qkv.v.view(), p.pyramid.view(), p.plan.view(), p.config),
                 {"lse", "(B, Hq, Lq)"});
}

TEST(ApiValidation, HeadsNotMultiple) {
  Qkv qkv = random_qkv(1, 3, 2, 32, 32, 8, DType::kFloat32, 5);
  HostTensor out(DType::kFloat32, {1, 3, 32, 8});
  expect_invalid(dense_attention_forward(out.view(), TensorView{}, qkv.q.view(), qkv.k.view(),
                                         qkv.v.view(), false, 0.0f),
                 {"Hq = 3", "Hkv = 2"});
}

TEST(ApiValidation, UnsupportedDtypes) {
  Problem p;
  HostTensor qi(DType::kInt32, {kB, kHq, kLq, kD});
  qi.fill(1);
  expect_invalid(attention_forward(p.out.view(), p.lse.view(), qi.view(), p.qkv.k.view(),
                                   p.qkv.v.view(), p.pyramid.view(), p.plan.view(), p.config),
                 {"q", "dtype", "int32"});
  HostTensor kh(DType::kFloat16, {kB, kHkv, kLk, kD});
  fill_normal(kh, 6);
  expect_invalid(attention_forward(p.out.view(), p.lse.view(), p.qkv.q.view(), kh.view(),
                                   p.qkv.v.view(), p.pyramid.view(), p.plan.view(), p.config),
                 {"one dtype", "float16"});
  HostTensor lse64(DType::kFloat64, {kB, kHq, kLq});
  expect_invalid(attention_forward(p.out.view(), lse64.view(), p.qkv.q.view(), p.qkv.k.view(),
                                   p.qkv.v.view(), p.pyramid.view(), p.plan.view(), p.config),
                 {"lse", "float32"});
}

TEST(ApiValidation, NullPointers) {
  Problem p;
  TensorView q = p.qkv.q.view();
  q.data = nullptr;
  expect_invalid(attention_forward(p.out.view(), p.lse.view(), q, p.qkv.k.view(), p.qkv.v.view(),
                                   p.pyramid.view(), p.plan.view(), p.config),
                 {"q", "null"});
  PyramidView pyr = p.pyramid.view();
  pyr.v[2].data = nullptr;
  expect_invalid(build_pyramid(pyr, p.qkv.k.view(), p.qkv.v.view()), {"pyramid.v[2]", "null"});
  expect_invalid(plan_statistics(nullptr, p.plan.view()), {"stats"});
  HostTensor out(DType::kFloat32, {kB, kHkv, kLk, kD});
  expect_invalid(permute_tokens(out.view(), p.qkv.k.view(), nullptr), {"perm"});
}

// ---- Empty problems: the results of torch's scaled_dot_product_attention ---------------------
// B, Hq, Lq or Lk = 0 is a valid problem: outputs without elements are left alone (their data
// pointers may be null, as torch.empty((0, ...)).data_ptr() is), and outputs that still have
// elements get what an empty sum gives: O = 0 and LSE = -inf for rows without keys, zero
// gradients, plan rows that list nothing. Outputs are poisoned (NaN, 0x7f..) first.

// Every element of `t` equals `expected` (bitwise for the infinities).
void expect_all(const HostTensor& t, double expected, const char* what) {
  const HostTensor values = to_host(t.view(), DType::kFloat64);
  const int64_t n = numel(t.view());
  ASSERT_GT(n, 0) << what << " should have elements";
  for (int64_t i = 0; i < n; ++i) {
    ASSERT_EQ(values.data<double>()[i], expected) << what << " element " << i;
  }
}

struct EmptyCase {
  int64_t batch, heads_q, heads_kv, seq_q, seq_k;
};

// Plans, attends and differentiates one problem through the public API, every call checked.
void run_empty_case(const EmptyCase& e) {
  SCOPED_TRACE("B = " + std::to_string(e.batch) + ", Hq = " + std::to_string(e.heads_q) +
               ", Hkv = " + std::to_string(e.heads_kv) + ", Lq = " + std::to_string(e.seq_q) +
               ", Lk = " + std::to_string(e.seq_k));
  const Config config = small_config();
  Qkv qkv = random_qkv(e.batch, e.heads_q, e.heads_kv, e.seq_q, e.seq_k, kD, DType::kFloat32, 3);
  HostPyramid pyramid = make_host_pyramid(e.batch, e.heads_kv, e.seq_k, kD, DType::kFloat32);
  ASSERT_TRUE(build_pyramid(pyramid.view(), qkv.k.view(), qkv.v.view()).ok());

  const PlanShape shape = plan_shape(e.batch, e.heads_q, e.seq_q, e.seq_k, config);
  HostTensor scores(DType::kFloat32, {e.batch, e.heads_q, shape.num_q_blocks,
                                      shape.num_k_blocks});
  HostPlan plan = make_host_plan(e.batch, e.heads_q, e.seq_q, e.seq_k, config);
  poison(plan.counts);
  Status st = estimate_importance(scores.view(), qkv.q.view(), qkv.k.view(), config);
  ASSERT_TRUE(st.ok()) << st.to_string();
  st = plan_from_scores(plan.view(), scores.view(), TensorView{}, config);
  ASSERT_TRUE(st.ok()) << st.to_string();
  if (numel(plan.counts.view()) > 0) expect_all(plan.counts, 0.0, "plan.counts");
  PlanStats stats;
  ASSERT_TRUE(plan_statistics(&stats, plan.view()).ok());
  EXPECT_EQ(stats.density, 0.0);
  EXPECT_EQ(stats.density_per_head.size(), static_cast<size_t>(e.heads_q));

  HostTensor out(DType::kFloat32, {e.batch, e.heads_q, e.seq_q, kD});
  HostTensor lse(DType::kFloat32, {e.batch, e.heads_q, e.seq_q});
  poison(out);
  poison(lse);
  st = attention_forward(out.view(), lse.view(), qkv.q.view(), qkv.k.view(), qkv.v.view(),
                         pyramid.view(), plan.view(), config);
  ASSERT_TRUE(st.ok()) << st.to_string();
  const bool rows = numel(out.view()) > 0;  // only when Lk = 0
  if (rows) {
    expect_all(out, 0.0, "out");
    expect_all(lse, -std::numeric_limits<double>::infinity(), "lse");
  }

  HostTensor dout(DType::kFloat32, {e.batch, e.heads_q, e.seq_q, kD});
  fill_normal(dout, 4);
  HostTensor dq(DType::kFloat32, {e.batch, e.heads_q, e.seq_q, kD});
  HostTensor dk(DType::kFloat32, {e.batch, e.heads_kv, e.seq_k, kD});
  HostTensor dv(DType::kFloat32, {e.batch, e.heads_kv, e.seq_k, kD});
  for (HostTensor* g : {&dq, &dk, &dv}) poison(*g);
  st = attention_backward(dq.view(), dk.view(), dv.view(), dout.view(), qkv.q.view(),
                          qkv.k.view(), qkv.v.view(), out.view(), lse.view(), plan.view(), config,
                          nullptr, 0);
  ASSERT_TRUE(st.ok()) << st.to_string();
  for (const auto& [g, name] : {std::pair{&dq, "dq"}, {&dk, "dk"}, {&dv, "dv"}}) {
    if (numel(g->view()) > 0) expect_all(*g, 0.0, name);
  }

  // The dense reference agrees.
  poison(out);
  poison(lse);
  st = dense_attention_forward(out.view(), lse.view(), qkv.q.view(), qkv.k.view(), qkv.v.view(),
                               false, 0.0f);
  ASSERT_TRUE(st.ok()) << st.to_string();
  if (rows) {
    expect_all(out, 0.0, "dense out");
    expect_all(lse, -std::numeric_limits<double>::infinity(), "dense lse");
  }
  for (HostTensor* g : {&dq, &dk, &dv}) poison(*g);
  st = dense_attention_backward(dq.view(), dk.view(), dv.view(), dout.view(), qkv.q.view(),
                                qkv.k.view(), qkv.v.view(), out.view(), lse.view(), false, 0.0f);
  ASSERT_TRUE(st.ok()) << st.to_string();
  for (const auto& [g, name] : {std::pair{&dq, "dense dq"}, {&dk, "dense dk"}, {&dv, "dense dv"}}) {
    if (numel(g->view()) > 0) expect_all(*g, 0.0, name);
  }
}

TEST(EmptyProblems, NoQueryRows) { run_empty_case({1, 4, 2, 0, 72}); }
TEST(EmptyProblems, NoKeys) { run_empty_case({1, 4, 2, 40, 0}); }
TEST(EmptyProblems, NoQueriesNorKeys) { run_empty_case({2, 4, 2, 0, 0}); }
TEST(EmptyProblems, NoBatch) { run_empty_case({0, 4, 2, 40, 72}); }
TEST(EmptyProblems, NoHeads) { run_empty_case({1, 0, 0, 40, 72}); }
TEST(EmptyProblems, NoQueryHeads) { run_empty_case({1, 0, 2, 40, 72}); }

TEST(EmptyProblems, EmptyViewsMayHaveNullData) {
  // The empty outputs of run_empty_case come from HostTensor, whose empty buffers may or may not
  // have an address; here every view without elements has none.
  const Config config = small_config();
  const TensorView q = make_view(nullptr, DType::kFloat32, {1, 4, 0, 8});
  const TensorView k = make_view(nullptr, DType::kFloat32, {1, 2, 0, 8});
  const TensorView out = q, lse = make_view(nullptr, DType::kFloat32, {1, 4, 0});
  Status st = dense_attention_forward(out, lse, q, k, k, true, 0.0f);
  EXPECT_TRUE(st.ok()) << st.to_string();
  st = permute_tokens(out, q, nullptr);
  EXPECT_TRUE(st.ok()) << st.to_string();
  HostPlan plan = make_host_plan(1, 4, 0, 0, config);
  HostTensor levels(DType::kUInt8, {1, 4, 0, 0});
  st = plan_to_levels(levels.view(), plan.view());
  EXPECT_TRUE(st.ok()) << st.to_string();
}

TEST(EmptyProblems, StillRejected) {
  // An element-holding view with a null pointer, a head dimension of 0, key/value heads of 0 with
  // query heads, and negative sizes remain errors.
  Problem p;
  TensorView q = p.qkv.q.view();
  q.data = nullptr;
  expect_invalid(dense_attention_forward(p.out.view(), TensorView{}, q, p.qkv.k.view(),
                                         p.qkv.v.view(), false, 0.0f),
                 {"q", "null"});
  Qkv flat = random_qkv(1, 2, 2, 8, 8, 0, DType::kFloat32, 1);
  HostTensor out(DType::kFloat32, {1, 2, 8, 0});
  expect_invalid(dense_attention_forward(out.view(), TensorView{}, flat.q.view(), flat.k.view(),
                                         flat.v.view(), false, 0.0f),
                 {"head dimension D >= 1"});
  Qkv headless = random_qkv(1, 2, 0, 8, 8, 8, DType::kFloat32, 1);
  HostTensor out2(DType::kFloat32, {1, 2, 8, 8});
  expect_invalid(dense_attention_forward(out2.view(), TensorView{}, headless.q.view(),
                                         headless.k.view(), headless.v.view(), false, 0.0f),
                 {"Hq = 2", "Hkv = 0"});
  TensorView k = p.qkv.k.view();
  k.shape[2] = -1;
  expect_invalid(build_pyramid(p.pyramid.view(), k, p.qkv.v.view()), {"k", ">= 0"});
}

TEST(ApiValidation, IndexOverflow) {
  // A sequence of 2^31 keys cannot be indexed with 32-bit rows; validation runs before any access,
  // so the view may point at a small buffer.
  Problem p;
  TensorView k = p.qkv.k.view(), v = p.qkv.v.view(), q = p.qkv.q.view();
  for (TensorView* t : {&k, &v}) {
    t->shape[2] = int64_t{1} << 31;
    t->stride[0] = t->stride[1] = 0;
  }
  HostTensor out(DType::kFloat32, {kB, kHq, kLq, kD});
  expect_invalid(dense_attention_forward(out.view(), TensorView{}, q, k, v, false, 0.0f),
                 {"2^31", "Lk = 2147483648"});
  TensorView huge = p.qkv.q.view();
  huge.shape[2] = int64_t{1} << 40;
  huge.stride[2] = int64_t{1} << 40;
  expect_invalid(attention_forward(p.out.view(), p.lse.view(), huge, p.qkv.k.view(),
                                   p.qkv.v.view(), p.pyramid.view(), p.plan.view(), p.config),
                 {"q", "overflow"});
}

TEST(ApiValidation, PlanMismatch) {
  Problem p;
  HostPlan other = make_host_plan(kB, kHq, kLq + 16, kLk, p.config);
  expect_invalid(attention_forward(p.out.view(), p.lse.view(), p.qkv.q.view(), p.qkv.k.view(),
                                   p.qkv.v.view(), p.pyramid.view(), other.view(), p.config),
                 {"plan", "Lq = 56"});
  HostPlan bad = p.plan;
  bad.blocks.data<int32_t>()[0] = 99;
  expect_invalid(attention_forward(p.out.view(), p.lse.view(), p.qkv.q.view(), p.qkv.k.view(),
                                   p.qkv.v.view(), p.pyramid.view(), bad.view(), p.config),
                 {"plan.blocks", "99", "Nk = 5"});
  HostPlan negative = p.plan;
  negative.counts.data<int32_t>()[1] = -2;
  expect_invalid(attention_forward(p.out.view(), p.lse.view(), p.qkv.q.view(), p.qkv.k.view(),
                                   p.qkv.v.view(), p.pyramid.view(), negative.view(), p.config),
                 {"plan.counts", "negative"});
}

TEST(ApiValidation, PyramidShape) {
  Problem p;
  HostPyramid wrong = make_host_pyramid(kB, kHkv, kLk + 8, kD, DType::kFloat32);
  expect_invalid(build_pyramid(wrong.view(), p.qkv.k.view(), p.qkv.v.view()),
                 {"pyramid.k[0]", "ceil(Lk/f)"});
}

TEST(ApiValidation, EstimatorAndPlanner) {
  Problem p;
  HostTensor scores(DType::kFloat32, {kB, kHq, 3, 6});
  expect_invalid(estimate_importance(scores.view(), p.qkv.q.view(), p.qkv.k.view(), p.config),
                 {"scores", "(B, Hq, Mq, Nk)"});
  Config bad = p.config;
  bad.block_n = 48;
  expect_invalid(estimate_importance(p.scores.view(), p.qkv.q.view(), p.qkv.k.view(), bad),
                 {"block_n", "power of two"});
  Config text = p.config;
  text.text_len = kLk + 1;
  expect_invalid(plan_from_scores(p.plan.view(), p.scores.view(), TensorView{}, text),
                 {"text_len", "Lk"});
  Config sim = p.config;
  sim.sim_cap = true;
  expect_invalid(plan_from_scores(p.plan.view(), p.scores.view(), TensorView{}, sim),
                 {"similarity cap"});
  Config other_blocks = p.config;
  other_blocks.block_m = 32;
  expect_invalid(plan_from_scores(p.plan.view(), p.scores.view(), TensorView{}, other_blocks),
                 {"block_m"});
}

TEST(ApiValidation, LevelMaps) {
  Problem p;
  HostTensor levels(DType::kUInt8, {kB, kHq, 3, 5});
  ASSERT_TRUE(plan_to_levels(levels.view(), p.plan.view()).ok());
  HostTensor wrong_dtype(DType::kInt32, {kB, kHq, 3, 5});
  expect_invalid(plan_from_levels(p.plan.view(), wrong_dtype.view(), TensorView{}, p.config),
                 {"levels", "uint8"});
  HostTensor wrong_shape(DType::kUInt8, {kB, kHq, 3, 4});
  expect_invalid(plan_to_levels(wrong_shape.view(), p.plan.view()), {"levels", "(B, Hq, Mq, Nk)"});
}

TEST(ApiValidation, Backward) {
  Problem p;
  ASSERT_TRUE(p.forward().ok());
  HostTensor dout(DType::kFloat32, {kB, kHq, kLq, kD});
  fill_normal(dout, 9);
  HostTensor dq(DType::kFloat32, {kB, kHq, kLq, kD}), dk(DType::kFloat32, {kB, kHkv, kLk, kD}),
      dv(DType::kFloat32, {kB, kHkv, kLk, kD});
  ASSERT_TRUE(attention_backward(dq.view(), dk.view(), dv.view(), dout.view(), p.qkv.q.view(),
                                 p.qkv.k.view(), p.qkv.v.view(), p.out.view(), p.lse.view(),
                                 p.plan.view(), p.config)
                  .ok());
  expect_invalid(attention_backward(dq.view(), dv.view(), dk.view(), dout.view(), p.qkv.q.view(),
                                    p.qkv.k.view(), p.qkv.v.view(), p.out.view(), TensorView{},
                                    p.plan.view(), p.config),
                 {"lse", "required"});
  HostTensor dk_wrong(DType::kFloat32, {kB, kHq, kLk, kD});
  expect_invalid(attention_backward(dq.view(), dk_wrong.view(), dv.view(), dout.view(),
                                    p.qkv.q.view(), p.qkv.k.view(), p.qkv.v.view(), p.out.view(),
                                    p.lse.view(), p.plan.view(), p.config),
                 {"dk", "shape of k"});
}

TEST(ApiValidation, SampleBlockOffsets) {
  std::vector<int32_t> offsets(512);
  expect_invalid(sample_block_offsets(offsets.data(), 0, 0, 0, 512, 4), {"block", "256"});
  expect_invalid(sample_block_offsets(offsets.data(), 0, 0, 0, 64, 65), {"count", "64"});
  expect_invalid(sample_block_offsets(nullptr, 0, 0, 0, 64, 4), {"offsets"});
  EXPECT_TRUE(sample_block_offsets(offsets.data(), 0, 0, 0, 64, 16).ok());
}

TEST(ApiValidation, DenseScale) {
  Problem p;
  expect_invalid(dense_attention_forward(p.out.view(), TensorView{}, p.qkv.q.view(),
                                         p.qkv.k.view(), p.qkv.v.view(), false, -1.0f),
                 {"scale"});
}

TEST(ApiValidation, PermuteTokens) {
  Problem p;
  std::vector<int64_t> perm(kLk);
  for (int64_t i = 0; i < kLk; ++i) perm[static_cast<size_t>(i)] = kLk - 1 - i;
  HostTensor out(DType::kFloat32, {kB, kHkv, kLk, kD});
  ASSERT_TRUE(permute_tokens(out.view(), p.qkv.k.view(), perm.data()).ok());
  perm[3] = kLk;
  expect_invalid(permute_tokens(out.view(), p.qkv.k.view(), perm.data()), {"perm[3]", "72"});
  expect_invalid(permute_tokens(p.qkv.k.view(), p.qkv.k.view(), perm.data()), {"in place"});
}

TEST(ApiValidation, ConfigFields) {
  Config c;
  c.ends = {0.2, 0.1, 0.3, 0.4};
  expect_invalid(validate_config(c), {"non-decreasing", "level 2"});
  c = Config();
  c.ends[3] = 1.5;
  expect_invalid(validate_config(c), {"ends[3]", "[0, 1]"});
  c = Config();
  c.tile_n = 128;
  expect_invalid(validate_config(c), {"tile_n"});
  c = Config();
  c.samples_m = 1000;
  expect_invalid(validate_config(c), {"samples_m"});
  c = Config();
  c.sim_thresholds[1] = 2.0f;
  expect_invalid(validate_config(c), {"sim_thresholds[1]"});
  c = Config();
  c.softmax_scale = -1.0f;
  expect_invalid(validate_config(c), {"softmax_scale"});
}

TEST(ApiValidation, CudaWithoutBackendSaysSo) {
  if (cuda_backend_built()) GTEST_SKIP() << "this build has the CUDA backend";
  Problem p;
  TensorView q = p.qkv.q.view(), k = p.qkv.k.view(), v = p.qkv.v.view();
  HostTensor qh(DType::kBFloat16, {kB, kHq, kLq, kD});
  for (TensorView* t : {&q, &k, &v}) {
    t->device = Device::kCuda;
    t->dtype = DType::kBFloat16;
  }
  TensorView out = qh.view();
  out.device = Device::kCuda;
  const Status s = dense_attention_forward(out, TensorView{}, q, k, v, false, 0.0f);
  EXPECT_NE(s.code(), StatusCode::kOk);
  EXPECT_FALSE(s.message().empty());
  // Built without CUDA, nothing is usable, whatever the machine has.
  std::string reason;
  EXPECT_FALSE(cuda_device_usable(&reason));
  EXPECT_NE(reason.find("without the CUDA backend"), std::string::npos) << reason;
}

}  // namespace
}  // namespace psa::test
