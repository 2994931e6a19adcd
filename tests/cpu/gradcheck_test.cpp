// attention_backward (SPEC 7) and dense_attention_backward against central finite differences of
// their forwards, in fp64, on small problems that mix every level, a skipped block and ragged
// pooled tails.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "common/test_util.h"

namespace psa::test {
namespace {

// Finite-difference step: central differences have O(h^2) = 1e-12 truncation error, and the
// rounding error eps * |loss| / h stays near 1e-9 for losses of order 10.
constexpr double kStep = 1e-6;

// Elementwise |analytic - numeric| <= rel * |numeric| + abs, the absolute part on the tensor's
// scale so that near-zero entries are not judged by a relative error alone.
void expect_gradient(const HostTensor& analytic, const HostTensor& numeric, const char* name,
                     uint64_t seed) {
  double ref_max = 0.0;
  for (int64_t i = 0; i < numeric.numel(); ++i) ref_max = std::max(ref_max, std::fabs(numeric.get(i)));
  ASSERT_GT(ref_max, 0.0) << name << ": numeric gradient is all zero\n" << replay_hint(seed);
  // The backward is exact in double (it recomputes LSE and O); what remains is the numeric
  // derivative's own error, O(h^2) truncation plus eps * |loss| / h rounding (~1e-9 absolute).
  const double rel = 1e-6, abs = 1e-7 * ref_max;
  int64_t bad = 0;
  for (int64_t i = 0; i < numeric.numel(); ++i) {
    const double a = analytic.get(i), n = numeric.get(i);
    if (!(std::fabs(a - n) <= rel * std::fabs(n) + abs)) {
      if (bad++ == 0) {
        ADD_FAILURE() << name << "[" << i << "]: analytic " << a << ", numeric " << n << "\n"
                      << replay_hint(seed);
      }
    }
  }
  EXPECT_EQ(bad, 0) << name << ": " << bad << " of " << numeric.numel() << " elements differ";
}

// sum(out * w) and its gradient in each of q, k, v by central differences of `forward`.
struct NumericGrads {
  HostTensor dq, dk, dv;
};
NumericGrads numeric_gradients(Qkv x, const HostTensor& w,
                               const std::function<void(HostTensor*, const Qkv&)>& forward) {
  HostTensor out(DType::kFloat64, x.q.shape());
  auto loss = [&]() {
    forward(&out, x);
    double s = 0.0;
    for (int64_t i = 0; i < out.numel(); ++i) s += out.get(i) * w.get(i);
    return s;
  };
  NumericGrads g{HostTensor(DType::kFloat64, x.q.shape()),
                 HostTensor(DType::kFloat64, x.k.shape()),
                 HostTensor(DType::kFloat64, x.v.shape())};
  HostTensor* inputs[3] = {&x.q, &x.k, &x.v};
  HostTensor* grads[3] = {&g.dq, &g.dk, &g.dv};
  for (int t = 0; t < 3; ++t) {
    for (int64_t i = 0; i < inputs[t]->numel(); ++i) {
      const double x0 = inputs[t]->get(i);
      inputs[t]->set(i, x0 + kStep);
      const double plus = loss();
      inputs[t]->set(i, x0 - kStep);
      const double minus = loss();
      inputs[t]->set(i, x0);
      grads[t]->set(i, (plus - minus) / (2.0 * kStep));
    }
  }
  return g;
}


// B = 1, Hq = 2, Hkv = 1 (GQA), Lq = 20, Lk = 37, D = 4, blocks 16: Mq = 2, Nk = 3, the last key
// block holds 5 tokens (ragged pooled tails at every level).
TEST(Gradcheck, AttentionBackwardMatchesFiniteDifferences) {
  const int64_t nb = 1, hq = 2, hkv = 1, lq = 20, lk = 37, dim = 4;
  // Rows (h, I): every level, a skipped block, pooled levels on the ragged last block.
  const std::vector<int> levels = {
      1, 2, 0,  // h 0, I 0
      4, 8, 1,  // h 0, I 1
      8, 1, 4,  // h 1, I 0
      2, 1, 8,  // h 1, I 1
  };
  const uint64_t base_seed = test_seed(301);
  for (bool causal : {false, true}) {
    const uint64_t seed = base_seed + (causal ? 1000 : 0);
    SCOPED_TRACE(causal ? "causal" : "non-causal");
    Config config;
    config.block_m = 16;
    config.block_n = 16;
    config.tile_n = 16;
    config.causal = causal;
    const Qkv x = random_qkv(nb, hq, hkv, lq, lk, dim, DType::kFloat64, seed);
    HostTensor w(DType::kFloat64, x.q.shape());
    fill_normal(w, seed + 7);
    const HostPlan plan = plan_from_level_map(levels, nb, hq, lq, lk, config);

    auto forward = [&](HostTensor* out, const Qkv& in, HostTensor* lse) {
      HostPyramid pyramid = make_host_pyramid(nb, hkv, lk, dim, DType::kFloat64);
      ASSERT_TRUE(build_pyramid(pyramid.view(), in.k.view(), in.v.view()).ok());
      const Status s = attention_forward(out->view(), lse ? lse->view() : TensorView(),
                                         in.q.view(), in.k.view(), in.v.view(), pyramid.view(),
                                         plan.view(), config);
      ASSERT_TRUE(s.ok()) << s.to_string();
    };
    HostTensor out(DType::kFloat64, x.q.shape()), lse(DType::kFloat32, {nb, hq, lq});
    poison(out);
    poison(lse);
    forward(&out, x, &lse);
    HostTensor dq(DType::kFloat64, x.q.shape()), dk(DType::kFloat64, x.k.shape()),
        dv(DType::kFloat64, x.v.shape());
    poison(dq);
    poison(dk);
    poison(dv);
    const Status s = attention_backward(dq.view(), dk.view(), dv.view(), w.view(), x.q.view(),
                                        x.k.view(), x.v.view(), out.view(), lse.view(),
                                        plan.view(), config);
    ASSERT_TRUE(s.ok()) << s.to_string();

    const NumericGrads numeric = numeric_gradients(
        x, w, [&](HostTensor* o, const Qkv& in) { forward(o, in, nullptr); });
    expect_gradient(dq, numeric.dq, "dq", base_seed);
    expect_gradient(dk, numeric.dk, "dk", base_seed);
    expect_gradient(dv, numeric.dv, "dv", base_seed);
  }
}

TEST(Gradcheck, DenseBackwardMatchesFiniteDifferences) {
  const uint64_t seed = test_seed(302);
  const int64_t nb = 1, hq = 2, hkv = 1, lq = 9, lk = 13, dim = 4;
  const bool causal = true;
  const Qkv x = random_qkv(nb, hq, hkv, lq, lk, dim, DType::kFloat64, seed);
  HostTensor w(DType::kFloat64, x.q.shape());
  fill_normal(w, seed + 7);
  auto forward = [&](HostTensor* out, const Qkv& in, HostTensor* lse) {
    const Status s = dense_attention_forward(out->view(), lse ? lse->view() : TensorView(),
                                             in.q.view(), in.k.view(), in.v.view(), causal, 0.0f);
    ASSERT_TRUE(s.ok()) << s.to_string();
  };
  HostTensor out(DType::kFloat64, x.q.shape()), lse(DType::kFloat32, {nb, hq, lq});
  poison(out);
  poison(lse);
  forward(&out, x, &lse);
  HostTensor dq(DType::kFloat64, x.q.shape()), dk(DType::kFloat64, x.k.shape()),
      dv(DType::kFloat64, x.v.shape());
  poison(dq);
  poison(dk);
  poison(dv);
  const Status s = dense_attention_backward(dq.view(), dk.view(), dv.view(), w.view(), x.q.view(),
                                            x.k.view(), x.v.view(), out.view(), lse.view(),
                                            causal, 0.0f);
  ASSERT_TRUE(s.ok()) << s.to_string();
  const NumericGrads numeric = numeric_gradients(
      x, w, [&](HostTensor* o, const Qkv& in) { forward(o, in, nullptr); });
  expect_gradient(dq, numeric.dq, "dq", seed);
  expect_gradient(dk, numeric.dk, "dk", seed);
  expect_gradient(dv, numeric.dv, "dv", seed);
}

}  // namespace
}  // namespace psa::test
