#include "common/test_util.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <limits>
#include <sstream>

#include "common/random.h"

namespace psa::test {

namespace {
double uniform01(uint64_t seed, uint64_t index) {
  const detail::Philox4x32 r =
      detail::philox4x32(static_cast<uint32_t>(index), static_cast<uint32_t>(index >> 32),
                         0x5eedu, 0x7e57u, static_cast<uint32_t>(seed),
                         static_cast<uint32_t>(seed >> 32));
  const uint64_t bits = (static_cast<uint64_t>(r.v[0]) << 21) ^ r.v[1];
  return static_cast<double>(bits & ((1ull << 53) - 1)) / static_cast<double>(1ull << 53);
}
}  // namespace

void fill_uniform(HostTensor& t, uint64_t seed, double lo, double hi) {
  const int64_t n = t.numel();
  for (int64_t i = 0; i < n; ++i) t.set(i, lo + (hi - lo) * uniform01(seed, static_cast<uint64_t>(i)));
}

void fill_normal(HostTensor& t, uint64_t seed, double scale) {
  constexpr double kTwoPi = 6.283185307179586;
  const int64_t n = t.numel();
  for (int64_t i = 0; i < n; ++i) {
    const double u1 = 1.0 - uniform01(seed, 2 * static_cast<uint64_t>(i));
    const double u2 = uniform01(seed, 2 * static_cast<uint64_t>(i) + 1);
    t.set(i, scale * std::sqrt(-2.0 * std::log(u1)) * std::cos(kTwoPi * u2));
  }
}

void poison(HostTensor& t) {
  const double value = is_floating(t.dtype()) ? std::numeric_limits<double>::quiet_NaN() : 0x5a;
  t.fill(value);
}

double l2_norm(const HostTensor& t) {
  double s = 0.0;
  for (int64_t i = 0; i < t.numel(); ++i) s += t.get(i) * t.get(i);
  return std::sqrt(s);
}

double rel_l2(const HostTensor& a, const HostTensor& b) {
  EXPECT_EQ(a.numel(), b.numel());
  double num = 0.0, den = 0.0;
  for (int64_t i = 0; i < b.numel(); ++i) {
    const double d = a.get(i) - b.get(i);
    num += d * d;
    den += b.get(i) * b.get(i);
  }
  EXPECT_GT(den, 0.0) << "reference is all zero: the comparison would prove nothing";
  return std::sqrt(num / den);
}

double max_abs_diff(const HostTensor& a, const HostTensor& b) {
  double m = 0.0;
  for (int64_t i = 0; i < b.numel(); ++i) {
    const double d = std::fabs(a.get(i) - b.get(i));
    if (std::isnan(d)) return std::numeric_limits<double>::infinity();
    m = std::max(m, d);
  }
  return m;
}

bool has_nan(const HostTensor& t) {
  for (int64_t i = 0; i < t.numel(); ++i) {
    if (std::isnan(t.get(i))) return true;
  }
  return false;
}

Qkv random_qkv(int64_t batch, int64_t heads_q, int64_t heads_kv, int64_t seq_q, int64_t seq_k,
               int64_t head_dim, DType dtype, uint64_t seed, double scale) {
  Qkv r{HostTensor(dtype, {batch, heads_q, seq_q, head_dim}),
        HostTensor(dtype, {batch, heads_kv, seq_k, head_dim}),
        HostTensor(dtype, {batch, heads_kv, seq_k, head_dim})};
  fill_normal(r.q, seed * 3 + 0, scale);
  fill_normal(r.k, seed * 3 + 1, scale);
  fill_normal(r.v, seed * 3 + 2, 1.0);
  return r;
}

HostPlan plan_from_level_map(const std::vector<int>& levels, int64_t batch, int64_t heads_q,
                             int64_t seq_q, int64_t seq_k, const Config& config) {
  HostPlan plan = make_host_plan(batch, heads_q, seq_q, seq_k, config);
  poison(plan.blocks);
  const int64_t nk = plan.blocks.shape()[3];
  const int64_t rows = plan.counts.numel() / kNumLevels;
  EXPECT_EQ(static_cast<int64_t>(levels.size()), rows * nk) << "level map of the wrong size";
  for (int64_t row = 0; row < rows; ++row) {
    int64_t position = 0;
    for (int l = 0; l < kNumLevels; ++l) {
      int64_t count = 0;
      for (int64_t j = 0; j < nk; ++j) {
        if (levels[static_cast<size_t>(row * nk + j)] != kLevelFactors[l]) continue;
        plan.blocks.set(row * nk + position++, static_cast<double>(j));
        ++count;
      }
      plan.counts.set(row * kNumLevels + l, static_cast<double>(count));
    }
  }
  return plan;
}

std::string replay_hint(uint64_t seed) {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  std::ostringstream os;
  os << "replay: PSA_TEST_SEED=" << seed << " ./psa_cpu_tests --gtest_filter="
     << (info ? std::string(info->test_suite_name()) + "." + info->name() : std::string("*"));
  return os.str();
}

uint64_t test_seed(uint64_t fallback) {
  const char* env = std::getenv("PSA_TEST_SEED");
  return env ? std::strtoull(env, nullptr, 10) : fallback;
}

}  // namespace psa::test
