// The CPU pyramid (SPEC 2): pooled token p of factor f is the exact mean of the real tokens
// [p*f, min((p+1)*f, Lk)), stored in the pyramid's dtype, for inputs of any strides.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "common/test_util.h"

namespace psa::test {
namespace {

// The mean of pooled token p computed directly from its definition, in double.
double brute_force_mean(const HostTensor& x, int64_t b, int64_t h, int64_t p, int64_t d,
                        int64_t factor) {
  const int64_t heads = x.shape()[1], length = x.shape()[2], dim = x.shape()[3];
  const int64_t first = p * factor;
  const int64_t last = std::min((p + 1) * factor, length);  // exclusive: real tokens only
  double sum = 0.0;
  for (int64_t t = first; t < last; ++t) sum += x.get(((b * heads + h) * length + t) * dim + d);
  return sum / static_cast<double>(last - first);
}

// Copies x (B, H, L, D) into storage laid out (B, L, H, D).
HostTensor to_blhd(const HostTensor& x) {
  const int64_t nb = x.shape()[0], nh = x.shape()[1], nl = x.shape()[2], nd = x.shape()[3];
  HostTensor r(x.dtype(), {nb, nl, nh, nd});
  for (int64_t b = 0; b < nb; ++b)
    for (int64_t h = 0; h < nh; ++h)
      for (int64_t l = 0; l < nl; ++l)
        for (int64_t d = 0; d < nd; ++d)
          r.set(((b * nl + l) * nh + h) * nd + d, x.get(((b * nh + h) * nl + l) * nd + d));
  return r;
}

void poison_pyramid(HostPyramid& p) {
  for (int l = 0; l < kNumPooledLevels; ++l) {
    poison(p.k[l]);
    poison(p.v[l]);
  }
}

// Checks every pooled value of `pyramid` against the brute-force mean of `k` / `v`, rounded to
// the pyramid's dtype, within `rel` (relative to the value's magnitude).
void expect_exact_means(const HostPyramid& pyramid, const HostTensor& k, const HostTensor& v,
                        double rel, uint64_t seed) {
  const int64_t nb = k.shape()[0], nh = k.shape()[1], length = k.shape()[2], dim = k.shape()[3];
  for (int l = 0; l < kNumPooledLevels; ++l) {
    const int64_t factor = kLevelFactors[l + 1];
    const int64_t pooled = (length + factor - 1) / factor;
    ASSERT_EQ(pyramid.k[l].shape(), (std::vector<int64_t>{nb, nh, pooled, dim}));
    const HostTensor* got[2] = {&pyramid.k[l], &pyramid.v[l]};
    const HostTensor* src[2] = {&k, &v};
    for (int which = 0; which < 2; ++which) {
      double ref_max = 0.0;
      int64_t bad = 0;
      for (int64_t b = 0; b < nb; ++b)
        for (int64_t h = 0; h < nh; ++h)
          for (int64_t p = 0; p < pooled; ++p)
            for (int64_t d = 0; d < dim; ++d) {
              HostTensor expected(got[which]->dtype(), {1});
              expected.set(0, brute_force_mean(*src[which], b, h, p, d, factor));
              const double e = expected.get(0);
              const double a = got[which]->get(((b * nh + h) * pooled + p) * dim + d);
              ref_max = std::max(ref_max, std::fabs(e));
              if (!(std::fabs(a - e) <= rel * std::fabs(e))) {
                if (bad++ == 0) {
                  ADD_FAILURE() << (which ? "v" : "k") << " level f=" << factor << " (b=" << b
                                << ", h=" << h << ", p=" << p << ", d=" << d << "): got " << a
                                << ", expected " << e << "\n" << replay_hint(seed);
                }
              }
            }
      EXPECT_EQ(bad, 0) << "mismatching pooled values at f=" << factor << "\n" << replay_hint(seed);
      ASSERT_GT(ref_max, 0.0) << "reference is all zero\n" << replay_hint(seed);
    }
  }
}

TEST(Pyramid, ExactMeansWithRaggedTailFp32) {
  const uint64_t seed = test_seed(101);
  // Lk = 61: the last group holds 1 token at f = 2 (60), 1 at f = 4 (60), 5 at f = 8 (56..60).
  const Qkv x = random_qkv(2, 3, 3, 1, 61, 5, DType::kFloat32, seed);
  HostPyramid pyramid = make_host_pyramid(2, 3, 61, 5, DType::kFloat32);
  poison_pyramid(pyramid);
  ASSERT_TRUE(build_pyramid(pyramid.view(), x.k.view(), x.v.view()).ok());
  // Both sides are the same double mean rounded once to fp32.
  expect_exact_means(pyramid, x.k, x.v, 0.0, seed);

  // The ragged tail is a mean of 5 tokens, not of 8 with the last one repeated (SPEC 2).
  double padded = 0.0;
  for (int64_t t = 56; t < 64; ++t) padded += x.k.get(std::min<int64_t>(t, 60) * 5);
  EXPECT_GT(std::fabs(pyramid.k[2].get(7 * 5) - padded / 8.0), 1e-4) << replay_hint(seed);
}

TEST(Pyramid, ExactMeansBf16AndFp16) {
  const uint64_t seed = test_seed(102);
  for (DType dtype : {DType::kBFloat16, DType::kFloat16}) {
    SCOPED_TRACE(dtype_name(dtype));
    const Qkv x = random_qkv(1, 2, 2, 1, 45, 8, dtype, seed);
    HostPyramid pyramid = make_host_pyramid(1, 2, 45, 8, dtype);
    poison_pyramid(pyramid);
    ASSERT_TRUE(build_pyramid(pyramid.view(), x.k.view(), x.v.view()).ok());
    // Sums of at most 8 16-bit values are exact in double, so both sides round the same double.
    expect_exact_means(pyramid, x.k, x.v, 0.0, seed);
  }
}

TEST(Pyramid, Fp32PyramidFromBf16Inputs) {
  const uint64_t seed = test_seed(103);
  const Qkv x = random_qkv(1, 1, 1, 1, 29, 6, DType::kBFloat16, seed);
  HostPyramid pyramid = make_host_pyramid(1, 1, 29, 6, DType::kFloat32);
  poison_pyramid(pyramid);
  ASSERT_TRUE(build_pyramid(pyramid.view(), x.k.view(), x.v.view()).ok());
  // The mean is kept at fp32 precision, not rounded to bf16.
  expect_exact_means(pyramid, x.k, x.v, 0.0, seed);
}

TEST(Pyramid, StridedInputsMatchContiguous) {
  const uint64_t seed = test_seed(104);
  const int64_t nb = 2, nh = 3, length = 37, dim = 4;
  const Qkv x = random_qkv(nb, nh, nh, 1, length, dim, DType::kFloat32, seed);
  // (B, L, H, D) storage viewed as (B, H, L, D): no copy, non-unit strides in H and L.
  const HostTensor k_blhd = to_blhd(x.k), v_blhd = to_blhd(x.v);
  const TensorView k_view = transpose_view(k_blhd.view(), 1, 2);
  const TensorView v_view = transpose_view(v_blhd.view(), 1, 2);
  ASSERT_FALSE(is_contiguous(k_view));

  HostPyramid contiguous = make_host_pyramid(nb, nh, length, dim, DType::kFloat32);
  HostPyramid strided = make_host_pyramid(nb, nh, length, dim, DType::kFloat32);
  poison_pyramid(contiguous);
  poison_pyramid(strided);
  ASSERT_TRUE(build_pyramid(contiguous.view(), x.k.view(), x.v.view()).ok());
  ASSERT_TRUE(build_pyramid(strided.view(), k_view, v_view).ok());
  for (int l = 0; l < kNumPooledLevels; ++l) {
    ASSERT_GT(l2_norm(contiguous.k[l]), 0.0);
    // Same values summed in the same order: bitwise equal.
    EXPECT_EQ(max_abs_diff(strided.k[l], contiguous.k[l]), 0.0) << replay_hint(seed);
    EXPECT_EQ(max_abs_diff(strided.v[l], contiguous.v[l]), 0.0) << replay_hint(seed);
  }
  expect_exact_means(strided, x.k, x.v, 0.0, seed);
}

}  // namespace
}  // namespace psa::test
