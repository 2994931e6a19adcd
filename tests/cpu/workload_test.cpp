// The embedded video-DiT-like workload (WORKLOADS.md): reproducible, right shapes and dtypes,
// RMS-normalised q and k, text tokens where asked, calibrated locality, and fast.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "common/test_util.h"

namespace psa {
namespace {

bool bitwise_equal(const HostTensor& a, const HostTensor& b) {
  return a.dtype() == b.dtype() && a.shape() == b.shape() &&
         std::memcmp(a.data<unsigned char>(), b.data<unsigned char>(),
                     static_cast<size_t>(a.numel()) * dtype_size(a.dtype())) == 0;
}

// Row norms of (B, H, L, D) tensor t: (min, max) over rows of head h in batch b.
std::pair<double, double> row_norm_range(const HostTensor& t, int64_t b, int64_t h) {
  const int64_t heads = t.shape()[1], len = t.shape()[2], dim = t.shape()[3];
  double lo = 1e300, hi = 0.0;
  for (int64_t i = 0; i < len; ++i) {
    double sum = 0.0;
    for (int64_t d = 0; d < dim; ++d) {
      const double v = t.get(((b * heads + h) * len + i) * dim + d);
      sum += v * v;
    }
    lo = std::min(lo, std::sqrt(sum));
    hi = std::max(hi, std::sqrt(sum));
  }
  return {lo, hi};
}

TEST(Workload, DeterministicForASeedAndDifferentForAnother) {
  const uint64_t seed = test::test_seed(5);
  WorkloadSpec spec;
  spec.frames = 4;
  spec.height = 6;
  spec.width = 8;
  spec.text_len = 5;
  spec.seed = seed;
  Workload a, b, c;
  ASSERT_TRUE(generate_workload(&a, spec).ok());
  ASSERT_TRUE(generate_workload(&b, spec).ok());
  spec.seed = seed + 1;
  ASSERT_TRUE(generate_workload(&c, spec).ok());
  ASSERT_GT(test::l2_norm(a.q), 0.0) << test::replay_hint(seed);
  EXPECT_TRUE(bitwise_equal(a.q, b.q)) << test::replay_hint(seed);
  EXPECT_TRUE(bitwise_equal(a.k, b.k)) << test::replay_hint(seed);
  EXPECT_TRUE(bitwise_equal(a.v, b.v)) << test::replay_hint(seed);
  EXPECT_EQ(a.stats.local_mass, b.stats.local_mass);
  EXPECT_FALSE(bitwise_equal(a.q, c.q)) << test::replay_hint(seed);
  EXPECT_FALSE(bitwise_equal(a.k, c.k)) << test::replay_hint(seed);
  EXPECT_FALSE(bitwise_equal(a.v, c.v)) << test::replay_hint(seed);
}

TEST(Workload, ShapesAndDtypesWithGqa) {
  const uint64_t seed = test::test_seed(6);
  for (DType dtype : {DType::kFloat32, DType::kFloat16, DType::kBFloat16}) {
    WorkloadSpec spec;
    spec.batch = 2;
    spec.frames = 3;
    spec.height = 4;
    spec.width = 5;
    spec.heads = 6;
    spec.heads_kv = 2;
    spec.head_dim = 32;
    spec.text_len = 3;
    spec.dtype = dtype;
    spec.seed = seed;
    Workload w;
    ASSERT_TRUE(generate_workload(&w, spec).ok()) << dtype_name(dtype);
    const std::vector<int64_t> q_shape = {2, 6, 63, 32}, kv_shape = {2, 2, 63, 32};
    EXPECT_EQ(w.q.shape(), q_shape);
    EXPECT_EQ(w.k.shape(), kv_shape);
    EXPECT_EQ(w.v.shape(), kv_shape);
    EXPECT_EQ(w.q.dtype(), dtype);
    EXPECT_EQ(w.k.dtype(), dtype);
    EXPECT_EQ(w.v.dtype(), dtype);
    EXPECT_FALSE(test::has_nan(w.q) || test::has_nan(w.k) || test::has_nan(w.v));
    ASSERT_GT(test::l2_norm(w.v), 0.0) << test::replay_hint(seed);
    ASSERT_EQ(w.stats.head_kinds.size(), 6u);
    ASSERT_EQ(w.stats.local_mass.size(), 6u);
    // Query heads of one kv group share their kv head's kind.
    EXPECT_EQ(w.stats.head_kinds[0], w.stats.head_kinds[2]);
    EXPECT_EQ(w.stats.head_kinds[3], w.stats.head_kinds[5]);
  }
}

TEST(Workload, QueryAndKeyRowsKeepTheirRmsNormThroughRope) {
  const uint64_t seed = test::test_seed(7);
  WorkloadSpec spec;
  spec.frames = 4;
  spec.height = 8;
  spec.width = 8;
  spec.heads = 6;
  spec.text_len = 4;
  spec.text_position = TextPosition::kEnd;
  spec.seed = seed;
  Workload w;
  ASSERT_TRUE(generate_workload(&w, spec).ok());
  // Every row of a head was scaled to the same RMS, then rotated (text rows unrotated); rotations
  // keep norms, so all rows of a head share one norm up to fp32 rounding (1e-5 relative).
  for (const HostTensor* t : {&w.q, &w.k}) {
    for (int64_t h = 0; h < t->shape()[1]; ++h) {
      const auto [lo, hi] = row_norm_range(*t, 0, h);
      ASSERT_GT(lo, 0.0) << test::replay_hint(seed);
      EXPECT_LE(hi - lo, 1e-5 * hi) << "head " << h << " " << test::replay_hint(seed);
    }
  }
}

TEST(Workload, DefaultShapeIsCalibrated) {
  const uint64_t seed = test::test_seed(0);
  WorkloadSpec spec;  // 8 x 16 x 16, 4 heads, head_dim 64
  spec.seed = seed;
  Workload w;
  ASSERT_TRUE(generate_workload(&w, spec).ok());
  // WORKLOADS.md: about 70% of the mass on the nearest 15% of keys; uniform attention gives 0.15.
  EXPECT_GE(w.stats.mean_local_mass, 0.55) << test::replay_hint(seed);
  EXPECT_LE(w.stats.mean_local_mass, 0.85) << test::replay_hint(seed);
  double sum = 0.0;
  for (double m : w.stats.local_mass) {
    EXPECT_GT(m, 0.15) << "every head should beat uniform attention " << test::replay_hint(seed);
    sum += m;
  }
  EXPECT_NEAR(sum / 4.0, w.stats.mean_local_mass, 1e-12);
  const std::string text = describe_workload(spec, w.stats);
  EXPECT_NE(text.find("8 x 16 x 16"), std::string::npos) << text;
  EXPECT_NE(text.find("not ground truth"), std::string::npos) << text;
}

// Text tokens carry their own content (keyed by text index), no positional direction and no
// rotation; video tokens depend only on their (t, y, x). So a workload with text first and one
// with text last hold the same rows, shifted: text rows [0, 6) of the first are rows [32, 38) of
// the second, video rows [6, 38) are rows [0, 32). A misplaced block breaks the match.
TEST(Workload, TextTokensAtTheRequestedPosition) {
  const uint64_t seed = test::test_seed(8);
  const int64_t text = 6, video = 32, len = text + video, dim = 16, heads = 2;
  WorkloadSpec spec;
  spec.frames = 2;
  spec.height = 4;
  spec.width = 4;
  spec.heads = heads;
  spec.head_dim = dim;
  spec.text_len = text;
  spec.seed = seed;
  Workload first, last;
  spec.text_position = TextPosition::kStart;
  ASSERT_TRUE(generate_workload(&first, spec).ok());
  spec.text_position = TextPosition::kEnd;
  ASSERT_TRUE(generate_workload(&last, spec).ok());
  ASSERT_GT(test::l2_norm(first.q), 0.0) << test::replay_hint(seed);
  for (const auto member : {&Workload::q, &Workload::k, &Workload::v}) {
    const HostTensor& a = first.*member;
    const HostTensor& b = last.*member;
    for (int64_t h = 0; h < heads; ++h) {
      auto row_equal = [&](int64_t ia, int64_t ib) {
        for (int64_t d = 0; d < dim; ++d) {
          if (a.get((h * len + ia) * dim + d) != b.get((h * len + ib) * dim + d)) return false;
        }
        return true;
      };
      for (int64_t j = 0; j < text; ++j) {
        EXPECT_TRUE(row_equal(j, video + j)) << "text row " << j << " " << test::replay_hint(seed);
      }
      for (int64_t r = 0; r < video; ++r) {
        EXPECT_TRUE(row_equal(text + r, r)) << "video row " << r << " " << test::replay_hint(seed);
      }
      // Unshifted, the blocks do not match: row 0 is text in one and video in the other.
      EXPECT_FALSE(row_equal(0, 0)) << test::replay_hint(seed);
    }
  }
}

TEST(Workload, RejectsBadSpecs) {
  Workload w;
  WorkloadSpec spec;
  spec.frames = 0;
  EXPECT_EQ(generate_workload(&w, spec).code(), StatusCode::kInvalidArgument);
  spec = WorkloadSpec();
  spec.heads_kv = 3;  // does not divide 4
  EXPECT_EQ(generate_workload(&w, spec).code(), StatusCode::kInvalidArgument);
  spec = WorkloadSpec();
  spec.head_dim = 63;
  EXPECT_EQ(generate_workload(&w, spec).code(), StatusCode::kInvalidArgument);
  spec = WorkloadSpec();
  spec.rope_split = {22, 22, 22};  // sums to 66, not 64
  EXPECT_EQ(generate_workload(&w, spec).code(), StatusCode::kInvalidArgument);
  spec = WorkloadSpec();
  spec.dtype = DType::kInt32;
  EXPECT_EQ(generate_workload(&w, spec).code(), StatusCode::kInvalidArgument);
  spec = WorkloadSpec();
  spec.text_len = -1;
  EXPECT_EQ(generate_workload(&w, spec).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(generate_workload(nullptr, WorkloadSpec()).code(), StatusCode::kInvalidArgument);
  EXPECT_STREQ(head_kind_name(HeadKind::kSink), "sink");
}

}  // namespace
}  // namespace psa
