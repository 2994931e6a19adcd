// The CPU attention reference (SPEC 6, 7): all-level-1 plans equal dense attention (forward and
// backward), pooled levels are exact, empty rows give O = 0 and LSE = -inf, 16-bit inputs agree
// with fp32 on the same values, strided tensors give the same result as contiguous ones, a
// non-finite q gives NaN rows, and text rows of a planned problem equal dense attention.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "common/test_util.h"

namespace psa::test {
namespace {

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

struct Case {
  int64_t batch = 1, heads_q = 2, heads_kv = 2, seq_q = 64, seq_k = 64, head_dim = 16;
  int block_m = 16, block_n = 16;
  bool causal = false;

  int64_t num_q_blocks() const { return (seq_q + block_m - 1) / block_m; }
  int64_t num_k_blocks() const { return (seq_k + block_n - 1) / block_n; }
  std::string name() const {
    std::ostringstream os;
    os << "B=" << batch << " Hq=" << heads_q << " Hkv=" << heads_kv << " Lq=" << seq_q
       << " Lk=" << seq_k << " D=" << head_dim << " block_m=" << block_m
       << " block_n=" << block_n << " causal=" << causal;
    return os.str();
  }
};

Config make_config(const Case& c) {
  Config config;
  config.block_m = c.block_m;
  config.block_n = c.block_n;
  config.tile_n = std::min(32, c.block_n);
  config.causal = c.causal;
  return config;
}

// A plan from a level map (B, Hq, Mq, Nk) with values in {0, 1, 2, 4, 8}, written here so that
// these tests do not depend on the planner.
HostPlan plan_from_map(const std::vector<int>& levels, const Case& c) {
  return plan_from_level_map(levels, c.batch, c.heads_q, c.seq_q, c.seq_k, make_config(c));
}

std::vector<int> uniform_map(const Case& c, int level) {
  return std::vector<int>(c.batch * c.heads_q * c.num_q_blocks() * c.num_k_blocks(), level);
}

// Levels drawn uniformly from `choices` (seeded).
std::vector<int> random_map(const Case& c, const std::vector<int>& choices, uint64_t seed) {
  HostTensor u(DType::kFloat64, {c.batch * c.heads_q * c.num_q_blocks() * c.num_k_blocks()});
  fill_uniform(u, seed, 0.0, 1.0);
  std::vector<int> levels(u.numel());
  for (int64_t i = 0; i < u.numel(); ++i) {
    levels[i] = choices[std::min<size_t>(choices.size() - 1, u.get(i) * choices.size())];
  }
  return levels;
}

struct Forward {
  HostTensor out, lse;
};
struct Grads {
  HostTensor dq, dk, dv;
};

Forward psa_forward(const Qkv& x, const HostPlan& plan, const Config& config,
                    DType pyramid_dtype) {
  const auto& qs = x.q.shape();
  const auto& ks = x.k.shape();
  HostPyramid pyramid = make_host_pyramid(ks[0], ks[1], ks[2], ks[3], pyramid_dtype);
  EXPECT_TRUE(build_pyramid(pyramid.view(), x.k.view(), x.v.view()).ok());
  Forward f{HostTensor(x.q.dtype(), qs), HostTensor(DType::kFloat32, {qs[0], qs[1], qs[2]})};
  poison(f.out);
  poison(f.lse);
  const Status s = attention_forward(f.out.view(), f.lse.view(), x.q.view(), x.k.view(),
                                     x.v.view(), pyramid.view(), plan.view(), config);
  EXPECT_TRUE(s.ok()) << s.to_string();
  return f;
}

Forward dense_forward(const Qkv& x, bool causal) {
  const auto& qs = x.q.shape();
  Forward f{HostTensor(x.q.dtype(), qs), HostTensor(DType::kFloat32, {qs[0], qs[1], qs[2]})};
  poison(f.out);
  poison(f.lse);
  const Status s = dense_attention_forward(f.out.view(), f.lse.view(), x.q.view(), x.k.view(),
                                           x.v.view(), causal, 0.0f);
  EXPECT_TRUE(s.ok()) << s.to_string();
  return f;
}

Grads empty_grads(const Qkv& x) {
  Grads g{HostTensor(x.q.dtype(), x.q.shape()), HostTensor(x.k.dtype(), x.k.shape()),
          HostTensor(x.v.dtype(), x.v.shape())};
  poison(g.dq);
  poison(g.dk);
  poison(g.dv);
  return g;
}

Grads psa_backward(const Qkv& x, const Forward& f, const HostTensor& dout, const HostPlan& plan,
                   const Config& config) {
  Grads g = empty_grads(x);
  const Status s = attention_backward(g.dq.view(), g.dk.view(), g.dv.view(), dout.view(),
                                      x.q.view(), x.k.view(), x.v.view(), f.out.view(),
                                      f.lse.view(), plan.view(), config);
  EXPECT_TRUE(s.ok()) << s.to_string();
  return g;
}

Grads dense_backward(const Qkv& x, const Forward& f, const HostTensor& dout, bool causal) {
  Grads g = empty_grads(x);
  const Status s = dense_attention_backward(g.dq.view(), g.dk.view(), g.dv.view(), dout.view(),
                                            x.q.view(), x.k.view(), x.v.view(), f.out.view(),
                                            f.lse.view(), causal, 0.0f);
  EXPECT_TRUE(s.ok()) << s.to_string();
  return g;
}

// Elementwise |actual - expected| <= rel * |expected| + abs; equal infinities match, NaN never
// does. Asserts that the reference has a non-zero finite element.
void expect_close(const HostTensor& actual, const HostTensor& expected, double rel, double abs,
                  const std::string& what, uint64_t seed) {
  ASSERT_EQ(actual.shape(), expected.shape()) << what;
  double ref_max = 0.0;
  int64_t bad = 0, first_bad = -1;
  for (int64_t i = 0; i < expected.numel(); ++i) {
    const double a = actual.get(i), e = expected.get(i);
    if (std::isfinite(e)) ref_max = std::max(ref_max, std::fabs(e));
    const bool ok = a == e || std::fabs(a - e) <= rel * std::fabs(e) + abs;
    if (!ok && bad++ == 0) first_bad = i;
  }
  EXPECT_GT(ref_max, 0.0) << what << ": reference is all zero, the check proves nothing\n"
                          << replay_hint(seed);
  EXPECT_EQ(bad, 0) << what << ": " << bad << " of " << expected.numel()
                    << " elements differ; first at flat index " << first_bad << ": got "
                    << (first_bad >= 0 ? actual.get(first_bad) : 0.0) << ", expected "
                    << (first_bad >= 0 ? expected.get(first_bad) : 0.0) << "\n"
                    << replay_hint(seed);
}

HostTensor random_like(const HostTensor& t, uint64_t seed) {
  HostTensor r(t.dtype(), t.shape());
  fill_normal(r, seed);
  return r;
}

// (1) With every block at level 1, PSA is dense attention, forward and backward, for causal on
// and off, GQA, Lq != Lk in both directions, ragged lengths and every block size pair.
TEST(Attention, AllLevelOneEqualsDense) {
  const uint64_t base_seed = test_seed(201);
  const int64_t lengths[][2] = {{70, 130}, {130, 70}, {61, 61}};
  const int64_t heads[][2] = {{4, 2}, {2, 2}};
  uint64_t case_index = 0;
  for (bool causal : {false, true})
    for (const auto& hh : heads)
      for (const auto& ll : lengths)
        for (int block_m : {16, 32})
          for (int block_n : {16, 32}) {
            Case c;
            c.batch = 2;
            c.heads_q = hh[0];
            c.heads_kv = hh[1];
            c.seq_q = ll[0];
            c.seq_k = ll[1];
            c.block_m = block_m;
            c.block_n = block_n;
            c.causal = causal;
            const uint64_t seed = base_seed + 1000 * case_index++;
            SCOPED_TRACE(c.name());
            const Config config = make_config(c);
            const Qkv x = random_qkv(c.batch, c.heads_q, c.heads_kv, c.seq_q, c.seq_k,
                                     c.head_dim, DType::kFloat32, seed);
            const HostPlan plan = plan_from_map(uniform_map(c, 1), c);
            const Forward sparse = psa_forward(x, plan, config, DType::kFloat32);
            const Forward dense = dense_forward(x, causal);
            // Same math in double, different summation order, each rounded once to fp32.
            expect_close(sparse.out, dense.out, 1e-5, 1e-7, "out", base_seed);
            expect_close(sparse.lse, dense.lse, 1e-5, 1e-7, "lse", base_seed);

            if (causal && c.seq_q > c.seq_k) {
              // Rows i < Lq - Lk see no key: O = 0 and LSE = -inf, never NaN.
              for (int64_t i = 0; i < c.seq_q - c.seq_k; ++i) {
                ASSERT_EQ(sparse.lse.get(i), kNegInf) << "row " << i << "\n" << replay_hint(base_seed);
                for (int64_t d = 0; d < c.head_dim; ++d) {
                  ASSERT_EQ(sparse.out.get(i * c.head_dim + d), 0.0) << replay_hint(base_seed);
                }
              }
            }

            const HostTensor dout = random_like(x.q, seed + 7);
            const Grads gs = psa_backward(x, sparse, dout, plan, config);
            const Grads gd = dense_backward(x, dense, dout, causal);
            // Both backwards recompute LSE and O in double: only the summation order differs
            // before one rounding to fp32.
            expect_close(gs.dq, gd.dq, 1e-5, 1e-7, "dq", base_seed);
            expect_close(gs.dk, gd.dk, 1e-5, 1e-7, "dk", base_seed);
            expect_close(gs.dv, gd.dv, 1e-5, 1e-7, "dv", base_seed);
          }
}

// k and v constant within each group of 8 tokens (per batch, head and dim): every pool level
// then holds exactly the tokens it stands for, so any mixture of levels is dense attention.
Qkv group_constant_qkv(const Case& c, uint64_t seed) {
  Qkv x = random_qkv(c.batch, c.heads_q, c.heads_kv, c.seq_q, c.seq_k, c.head_dim,
                     DType::kFloat32, seed);
  for (HostTensor* t : {&x.k, &x.v}) {
    for (int64_t slice = 0; slice < c.batch * c.heads_kv; ++slice) {
      for (int64_t j = 0; j < c.seq_k; ++j) {
        const int64_t leader = (j / 8) * 8;
        for (int64_t d = 0; d < c.head_dim; ++d) {
          t->set((slice * c.seq_k + j) * c.head_dim + d,
                 t->get((slice * c.seq_k + leader) * c.head_dim + d));
        }
      }
    }
  }
  return x;
}

// (2a) Pooled levels are exact on group-constant keys and values (Lk a multiple of 8).
TEST(Attention, PooledLevelsExactOnGroupConstantInputs) {
  const uint64_t base_seed = test_seed(202);
  uint64_t case_index = 0;
  for (int block_n : {16, 32}) {
    Case c;
    c.batch = 2;
    c.heads_q = 4;
    c.heads_kv = 2;
    c.seq_q = 50;
    c.seq_k = 96;
    c.block_m = 16;
    c.block_n = block_n;
    const uint64_t seed = base_seed + 1000 * case_index++;
    SCOPED_TRACE(c.name());
    const Config config = make_config(c);
    const Qkv x = group_constant_qkv(c, seed);
    const HostPlan plan = plan_from_map(random_map(c, {1, 2, 4, 8}, seed + 1), c);
    const Forward sparse = psa_forward(x, plan, config, DType::kFloat32);
    const Forward dense = dense_forward(x, false);
    // Means of equal fp32 values are exact; only the summation order differs.
    expect_close(sparse.out, dense.out, 1e-5, 1e-7, "out", base_seed);
    expect_close(sparse.lse, dense.lse, 1e-5, 1e-7, "lse", base_seed);

    // The gradient of a pooled token split equally over its constituents equals the dense
    // gradient of each (identical) constituent.
    const HostTensor dout = random_like(x.q, seed + 7);
    const Grads gs = psa_backward(x, sparse, dout, plan, config);
    const Grads gd = dense_backward(x, dense, dout, false);
    // As in AllLevelOneEqualsDense: same math in double, one rounding to fp32.
    expect_close(gs.dq, gd.dq, 1e-5, 1e-7, "dq", base_seed);
    expect_close(gs.dk, gd.dk, 1e-5, 1e-7, "dk", base_seed);
    expect_close(gs.dv, gd.dv, 1e-5, 1e-7, "dv", base_seed);
  }
}

// An independent reference of SPEC 6: for each row, the attended units are expanded into an
// explicit list where pooled token p appears as c_p copies of its mean (c_p counted from the
// real tokens), then an ordinary softmax runs over that list.
Forward brute_force_forward(const Qkv& x, const std::vector<int>& levels, const Case& c) {
  const double scale = 1.0 / std::sqrt(static_cast<double>(c.head_dim));
  const int64_t nk = c.num_k_blocks(), group = c.heads_q / c.heads_kv, dim = c.head_dim;
  Forward f{HostTensor(DType::kFloat64, x.q.shape()),
            HostTensor(DType::kFloat64, {c.batch, c.heads_q, c.seq_q})};
  for (int64_t b = 0; b < c.batch; ++b)
    for (int64_t h = 0; h < c.heads_q; ++h)
      for (int64_t i = 0; i < c.seq_q; ++i) {
        const int64_t kvh = h / group, qblock = i / c.block_m;
        const int64_t kv_base = (b * c.heads_kv + kvh) * c.seq_k * dim;
        std::vector<std::vector<double>> keys, values;
        for (int64_t j = 0; j < nk; ++j) {
          const int f_level = levels[((b * c.heads_q + h) * c.num_q_blocks() + qblock) * nk + j];
          if (f_level == 0) continue;
          const int64_t block_end = std::min<int64_t>((j + 1) * c.block_n, c.seq_k);
          for (int64_t start = j * c.block_n; start < block_end; start += f_level) {
            const int64_t end = std::min<int64_t>(start + f_level, c.seq_k);
            if (c.causal && end - 1 > i + (c.seq_k - c.seq_q)) continue;
            std::vector<double> kbar(dim, 0.0), vbar(dim, 0.0);
            for (int64_t t = start; t < end; ++t)
              for (int64_t d = 0; d < dim; ++d) {
                kbar[d] += x.k.get(kv_base + t * dim + d) / static_cast<double>(end - start);
                vbar[d] += x.v.get(kv_base + t * dim + d) / static_cast<double>(end - start);
              }
            for (int64_t copy = start; copy < end; ++copy) {
              keys.push_back(kbar);
              values.push_back(vbar);
            }
          }
        }
        const int64_t row = (b * c.heads_q + h) * c.seq_q + i;
        std::vector<double> logits(keys.size());
        double m = kNegInf;
        for (size_t u = 0; u < keys.size(); ++u) {
          double s = 0.0;
          for (int64_t d = 0; d < dim; ++d) s += x.q.get(row * dim + d) * keys[u][d];
          logits[u] = scale * s;
          m = std::max(m, logits[u]);
        }
        double sum = 0.0;
        for (size_t u = 0; u < keys.size(); ++u) sum += std::exp(logits[u] - m);
        for (int64_t d = 0; d < dim; ++d) {
          double o = 0.0;
          for (size_t u = 0; u < keys.size(); ++u) o += std::exp(logits[u] - m) * values[u][d];
          f.out.set(row * dim + d, keys.empty() ? 0.0 : o / sum);
        }
        f.lse.set(row, keys.empty() ? kNegInf : m + std::log(sum));
      }
  return f;
}

// (2b) Ragged tails (Lk not a multiple of 8 nor of block_n), mixed levels with skipped blocks,
// causal off and on, against the brute-force expansion.
TEST(Attention, MixedLevelsRaggedTailMatchBruteForce) {
  const uint64_t base_seed = test_seed(203);
  uint64_t case_index = 0;
  for (bool causal : {false, true})
    for (int block_n : {16, 32}) {
      Case c;
      c.batch = 1;
      c.heads_q = 4;
      c.heads_kv = 2;
      c.seq_q = 45;
      c.seq_k = 61;
      c.head_dim = 8;
      c.block_m = 16;
      c.block_n = block_n;
      c.causal = causal;
      const uint64_t seed = base_seed + 1000 * case_index++;
      SCOPED_TRACE(c.name());
      const Qkv x = random_qkv(c.batch, c.heads_q, c.heads_kv, c.seq_q, c.seq_k, c.head_dim,
                               DType::kFloat32, seed);
      const std::vector<int> levels = random_map(c, {0, 1, 2, 4, 8}, seed + 1);
      const Forward sparse = psa_forward(x, plan_from_map(levels, c), make_config(c),
                                         DType::kFloat32);
      const Forward ref = brute_force_forward(x, levels, c);
      // The pyramid holds fp32-rounded means (relative error ~6e-8), and out is rounded to fp32.
      expect_close(sparse.out, ref.out, 1e-5, 1e-6, "out", base_seed);
      expect_close(sparse.lse, ref.lse, 1e-5, 1e-6, "lse", base_seed);
    }
}

// (3) Rows whose plan skips every block give O = 0 and LSE = -inf, and no gradient.
TEST(Attention, EmptyPlanRowsGiveZeroOutAndNegInfLse) {
  const uint64_t seed = test_seed(204);
  Case c;
  c.batch = 1;
  c.heads_q = 2;
  c.heads_kv = 1;
  c.seq_q = 40;
  c.seq_k = 50;
  const Config config = make_config(c);
  const Qkv x =
      random_qkv(c.batch, c.heads_q, c.heads_kv, c.seq_q, c.seq_k, c.head_dim, DType::kFloat32,
                 seed);
  std::vector<int> levels = random_map(c, {1, 2, 4, 8}, seed + 1);
  const int64_t nk = c.num_k_blocks(), mq = c.num_q_blocks();
  // Head 0, query block 1 and head 1, query block 0 skip everything.
  const int64_t empty_rows[] = {0 * mq + 1, 1 * mq + 0};
  for (int64_t row : empty_rows) std::fill_n(levels.begin() + row * nk, nk, 0);
  const HostPlan plan = plan_from_map(levels, c);
  const Forward f = psa_forward(x, plan, config, DType::kFloat32);
  const Grads g = psa_backward(x, f, random_like(x.q, seed + 7), plan, config);
  ASSERT_FALSE(has_nan(f.out));
  ASSERT_FALSE(has_nan(f.lse));
  ASSERT_FALSE(has_nan(g.dq) || has_nan(g.dk) || has_nan(g.dv)) << replay_hint(seed);
  for (int64_t h = 0; h < c.heads_q; ++h)
    for (int64_t i = 0; i < c.seq_q; ++i) {
      const int64_t row = h * c.seq_q + i;
      const bool empty = (h == 0 && i / c.block_m == 1) || (h == 1 && i / c.block_m == 0);
      if (empty) {
        EXPECT_EQ(f.lse.get(row), kNegInf) << "h=" << h << " i=" << i << "\n" << replay_hint(seed);
      } else {
        EXPECT_TRUE(std::isfinite(f.lse.get(row))) << "h=" << h << " i=" << i;
      }
      for (int64_t d = 0; d < c.head_dim; ++d) {
        if (!empty) continue;
        EXPECT_EQ(f.out.get(row * c.head_dim + d), 0.0) << replay_hint(seed);
        EXPECT_EQ(g.dq.get(row * c.head_dim + d), 0.0) << replay_hint(seed);
      }
    }
  EXPECT_GT(l2_norm(g.dq), 0.0);
}

// (4) fp16 / bf16 inputs agree with an fp32 run on the same (rounded) values and the same
// (rounded) pyramid: the only difference is the rounding of out to 16 bits.
TEST(Attention, HalfPrecisionInputsMatchFp32OnSameValues) {
  const uint64_t base_seed = test_seed(205);
  uint64_t case_index = 0;
  for (DType dtype : {DType::kFloat16, DType::kBFloat16}) {
    Case c;
    c.batch = 1;
    c.heads_q = 4;
    c.heads_kv = 2;
    c.seq_q = 70;
    c.seq_k = 75;
    c.block_m = 32;
    c.block_n = 16;
    c.causal = true;
    const uint64_t seed = base_seed + 1000 * case_index++;
    SCOPED_TRACE(std::string(dtype_name(dtype)) + " " + c.name());
    const Config config = make_config(c);
    const Qkv x16 = random_qkv(c.batch, c.heads_q, c.heads_kv, c.seq_q, c.seq_k, c.head_dim,
                               dtype, seed);
    const Qkv x32{to_host(x16.q.view(), DType::kFloat32), to_host(x16.k.view(), DType::kFloat32),
                  to_host(x16.v.view(), DType::kFloat32)};
    const HostPlan plan = plan_from_map(random_map(c, {0, 1, 2, 4, 8}, seed + 1), c);

    HostPyramid pyramid16 = make_host_pyramid(c.batch, c.heads_kv, c.seq_k, c.head_dim, dtype);
    ASSERT_TRUE(build_pyramid(pyramid16.view(), x16.k.view(), x16.v.view()).ok());
    HostPyramid pyramid32;
    for (int l = 0; l < kNumPooledLevels; ++l) {
      pyramid32.k[l] = to_host(pyramid16.k[l].view(), DType::kFloat32);
      pyramid32.v[l] = to_host(pyramid16.v[l].view(), DType::kFloat32);
    }
    Forward f16{HostTensor(dtype, x16.q.shape()),
                HostTensor(DType::kFloat32, {c.batch, c.heads_q, c.seq_q})};
    Forward f32{HostTensor(DType::kFloat32, x16.q.shape()),
                HostTensor(DType::kFloat32, {c.batch, c.heads_q, c.seq_q})};
    for (Forward* f : {&f16, &f32}) {
      poison(f->out);
      poison(f->lse);
    }
    ASSERT_TRUE(attention_forward(f16.out.view(), f16.lse.view(), x16.q.view(), x16.k.view(),
                                  x16.v.view(), pyramid16.view(), plan.view(), config)
                    .ok());
    ASSERT_TRUE(attention_forward(f32.out.view(), f32.lse.view(), x32.q.view(), x32.k.view(),
                                  x32.v.view(), pyramid32.view(), plan.view(), config)
                    .ok());
    // One rounding of out to 16 bits: unit roundoff 2^-11 (fp16) or 2^-9 (bf16); twice that
    // covers the double rounding double -> fp32 -> 16 bit. fp16 subnormals add 2^-25 absolute.
    const double unit = dtype == DType::kFloat16 ? std::ldexp(1.0, -11) : std::ldexp(1.0, -9);
    expect_close(f16.out, f32.out, 2 * unit, std::ldexp(1.0, -25), "out", base_seed);
    // lse is fp32 in both and computed from identical values.
    expect_close(f16.lse, f32.lse, 0.0, 0.0, "lse", base_seed);
  }
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

// A (B, H, L, D) view of (B, L, H, D) storage: H and L strides swapped, no copy.
TensorView bhld_view(const HostTensor& blhd) { return transpose_view(blhd.view(), 1, 2); }

// (5) Strided q, k, v, out, dout, dq, dk, dv give bitwise the results of contiguous ones.
TEST(Attention, StridedTensorsMatchContiguous) {
  const uint64_t seed = test_seed(206);
  Case c;
  c.batch = 2;
  c.heads_q = 4;
  c.heads_kv = 2;
  c.seq_q = 37;
  c.seq_k = 53;
  c.causal = true;
  const Config config = make_config(c);
  const Qkv x = random_qkv(c.batch, c.heads_q, c.heads_kv, c.seq_q, c.seq_k, c.head_dim,
                           DType::kFloat32, seed);
  const HostPlan plan = plan_from_map(random_map(c, {0, 1, 2, 4, 8}, seed + 1), c);
  const HostTensor dout = random_like(x.q, seed + 7);
  const Forward f = psa_forward(x, plan, config, DType::kFloat32);
  const Grads g = psa_backward(x, f, dout, plan, config);

  const HostTensor q_s = to_blhd(x.q), k_s = to_blhd(x.k), v_s = to_blhd(x.v),
                   dout_s = to_blhd(dout);
  HostPyramid pyramid = make_host_pyramid(c.batch, c.heads_kv, c.seq_k, c.head_dim,
                                          DType::kFloat32);
  ASSERT_TRUE(build_pyramid(pyramid.view(), bhld_view(k_s), bhld_view(v_s)).ok());
  HostTensor out_s(DType::kFloat32, {c.batch, c.seq_q, c.heads_q, c.head_dim});
  HostTensor lse(DType::kFloat32, {c.batch, c.heads_q, c.seq_q});
  poison(out_s);
  poison(lse);
  ASSERT_TRUE(attention_forward(bhld_view(out_s), lse.view(), bhld_view(q_s), bhld_view(k_s),
                                bhld_view(v_s), pyramid.view(), plan.view(), config)
                  .ok());
  HostTensor dq_s(DType::kFloat32, {c.batch, c.seq_q, c.heads_q, c.head_dim});
  HostTensor dk_s(DType::kFloat32, {c.batch, c.seq_k, c.heads_kv, c.head_dim});
  HostTensor dv_s(DType::kFloat32, {c.batch, c.seq_k, c.heads_kv, c.head_dim});
  poison(dq_s);
  poison(dk_s);
  poison(dv_s);
  ASSERT_TRUE(attention_backward(bhld_view(dq_s), bhld_view(dk_s), bhld_view(dv_s),
                                 bhld_view(dout_s), bhld_view(q_s), bhld_view(k_s),
                                 bhld_view(v_s), bhld_view(out_s), lse.view(), plan.view(),
                                 config)
                  .ok());
  // Same values, same loops: bitwise equal.
  expect_close(to_host(bhld_view(out_s), DType::kFloat32), f.out, 0.0, 0.0, "out", seed);
  expect_close(lse, f.lse, 0.0, 0.0, "lse", seed);
  expect_close(to_host(bhld_view(dq_s), DType::kFloat32), g.dq, 0.0, 0.0, "dq", seed);
  expect_close(to_host(bhld_view(dk_s), DType::kFloat32), g.dk, 0.0, 0.0, "dk", seed);
  expect_close(to_host(bhld_view(dv_s), DType::kFloat32), g.dv, 0.0, 0.0, "dv", seed);
}

// Dense attention itself on strided inputs (it is the reference of the CUDA tests too).
TEST(Attention, DenseStridedMatchesContiguous) {
  const uint64_t seed = test_seed(207);
  const Qkv x = random_qkv(1, 4, 2, 33, 29, 8, DType::kFloat32, seed);
  const Forward f = dense_forward(x, true);
  const HostTensor q_s = to_blhd(x.q), k_s = to_blhd(x.k), v_s = to_blhd(x.v);
  HostTensor out_s(DType::kFloat32, {1, 33, 4, 8});
  HostTensor lse(DType::kFloat32, {1, 4, 33});
  poison(out_s);
  poison(lse);
  ASSERT_TRUE(dense_attention_forward(bhld_view(out_s), lse.view(), bhld_view(q_s),
                                      bhld_view(k_s), bhld_view(v_s), true, 0.0f)
                  .ok());
  expect_close(to_host(bhld_view(out_s), DType::kFloat32), f.out, 0.0, 0.0, "out", seed);
  expect_close(lse, f.lse, 0.0, 0.0, "lse", seed);
}

// lse is optional in the forward: an empty view is "not wanted", out is unchanged.
TEST(Attention, ForwardWithoutLse) {
  const uint64_t seed = test_seed(208);
  Case c;
  c.seq_q = 30;
  c.seq_k = 40;
  const Config config = make_config(c);
  const Qkv x = random_qkv(c.batch, c.heads_q, c.heads_kv, c.seq_q, c.seq_k, c.head_dim,
                           DType::kFloat32, seed);
  const HostPlan plan = plan_from_map(random_map(c, {1, 2, 4, 8}, seed + 1), c);
  const Forward f = psa_forward(x, plan, config, DType::kFloat32);
  HostPyramid pyramid = make_host_pyramid(c.batch, c.heads_kv, c.seq_k, c.head_dim,
                                          DType::kFloat32);
  ASSERT_TRUE(build_pyramid(pyramid.view(), x.k.view(), x.v.view()).ok());
  HostTensor out(DType::kFloat32, x.q.shape());
  poison(out);
  ASSERT_TRUE(attention_forward(out.view(), TensorView(), x.q.view(), x.k.view(), x.v.view(),
                                pyramid.view(), plan.view(), config)
                  .ok());
  expect_close(out, f.out, 0.0, 0.0, "out", seed);
}

// softmax_scale given explicitly is used instead of 1/sqrt(D).
TEST(Attention, ExplicitSoftmaxScaleMatchesDense) {
  const uint64_t seed = test_seed(209);
  Case c;
  c.seq_q = 20;
  c.seq_k = 36;
  Config config = make_config(c);
  config.softmax_scale = 0.37f;
  const Qkv x = random_qkv(c.batch, c.heads_q, c.heads_kv, c.seq_q, c.seq_k, c.head_dim,
                           DType::kFloat32, seed);
  const Forward sparse =
      psa_forward(x, plan_from_map(uniform_map(c, 1), c), config, DType::kFloat32);
  Forward dense{HostTensor(DType::kFloat32, x.q.shape()),
                HostTensor(DType::kFloat32, {c.batch, c.heads_q, c.seq_q})};
  ASSERT_TRUE(dense_attention_forward(dense.out.view(), dense.lse.view(), x.q.view(),
                                      x.k.view(), x.v.view(), false, 0.37f)
                  .ok());
  // Same math in double, different summation order, each rounded once to fp32.
  expect_close(sparse.out, dense.out, 1e-5, 1e-7, "out", seed);
  expect_close(sparse.lse, dense.lse, 1e-5, 1e-7, "lse", seed);
  const Forward default_scale =
      psa_forward(x, plan_from_map(uniform_map(c, 1), c), make_config(c), DType::kFloat32);
  EXPECT_GT(max_abs_diff(default_scale.lse, sparse.lse), 1e-3) << replay_hint(seed);
}

// (6) A non-finite element of q makes its row's O and LSE NaN (never the zero row of an empty row),
// as dense attention does, and its gradient non-finite: dq of the row and dk, dv of the keys it
// reaches. Other rows and keys are bitwise those of the clean inputs. Three ways a row meets a
// non-finite logit: q NaN (every logit NaN); q +inf against keys of both signs in that dimension
// (logits +inf and -inf); q +inf against keys all negative in that dimension (every logit -inf,
// which must not pass for "no visible key").
TEST(Attention, NonFiniteQueryGivesNonFiniteRows) {
  const uint64_t seed = test_seed(210);
  constexpr double kInf = std::numeric_limits<double>::infinity();
  struct Poisoned {
    int64_t head, row, dim;
    double value;
  };
  const Poisoned poisoned[] = {{0, 5, 3, std::nan("")}, {1, 20, 3, kInf}, {1, 33, 0, kInf}};
  for (bool causal : {false, true})
    for (bool all_full : {true, false}) {
      Case c;
      c.heads_q = 2;
      c.heads_kv = 1;
      c.seq_q = 40;
      c.seq_k = 50;
      c.causal = causal;
      SCOPED_TRACE(c.name() + (all_full ? " all level 1" : " mixed levels"));
      const Config config = make_config(c);
      Qkv clean = random_qkv(c.batch, c.heads_q, c.heads_kv, c.seq_q, c.seq_k, c.head_dim,
                             DType::kFloat32, seed);
      for (int64_t j = 0; j < c.seq_k; ++j) {  // dimension 0 of every key negative
        clean.k.set(j * c.head_dim, -std::fabs(clean.k.get(j * c.head_dim)) - 0.1);
      }
      Qkv x = clean;
      for (const Poisoned& p : poisoned) {
        x.q.set((p.head * c.seq_q + p.row) * c.head_dim + p.dim, p.value);
      }
      const HostPlan plan = plan_from_map(
          all_full ? uniform_map(c, 1) : random_map(c, {1, 2, 4, 8}, seed + 1), c);
      const HostTensor dout = random_like(x.q, seed + 7);
      const Forward want = psa_forward(clean, plan, config, DType::kFloat32);
      const Grads want_grads = psa_backward(clean, want, dout, plan, config);
      const Forward got = psa_forward(x, plan, config, DType::kFloat32);
      const Grads grads = psa_backward(x, got, dout, plan, config);
      const Forward dense = dense_forward(x, causal);

      auto is_poisoned = [&](int64_t h, int64_t i) {
        for (const Poisoned& p : poisoned) {
          if (p.head == h && p.row == i) return true;
        }
        return false;
      };
      for (int64_t h = 0; h < c.heads_q; ++h)
        for (int64_t i = 0; i < c.seq_q; ++i) {
          const int64_t row = h * c.seq_q + i;
          const bool bad = is_poisoned(h, i);
          if (bad) {
            EXPECT_TRUE(std::isnan(got.lse.get(row)))
                << "h=" << h << " i=" << i << " lse " << got.lse.get(row) << "\n"
                << replay_hint(seed);
            EXPECT_TRUE(std::isnan(dense.lse.get(row))) << "dense h=" << h << " i=" << i;
          } else {
            EXPECT_EQ(got.lse.get(row), want.lse.get(row)) << "h=" << h << " i=" << i;
          }
          for (int64_t d = 0; d < c.head_dim; ++d) {
            const int64_t e = row * c.head_dim + d;
            if (bad) {
              ASSERT_TRUE(std::isnan(got.out.get(e)))
                  << "h=" << h << " i=" << i << " out " << got.out.get(e) << "\n"
                  << replay_hint(seed);
              ASSERT_TRUE(std::isnan(dense.out.get(e))) << "dense h=" << h << " i=" << i;
              ASSERT_TRUE(std::isnan(grads.dq.get(e))) << "dq h=" << h << " i=" << i;
            } else {
              ASSERT_EQ(got.out.get(e), want.out.get(e)) << "h=" << h << " i=" << i;
              ASSERT_EQ(grads.dq.get(e), want_grads.dq.get(e)) << "dq h=" << h << " i=" << i;
            }
          }
        }
      // Keys past the last poisoned row's horizon (causal) are reached by clean rows only; with
      // every block at level 1, the keys row 5 sees are reached by a NaN row.
      const int64_t shift = c.seq_k - c.seq_q;
      for (int64_t j = 0; j < c.seq_k; ++j) {
        const bool unreached = causal && j > 33 + shift;
        const bool reached = all_full && (!causal || j <= 5 + shift);
        for (int64_t d = 0; d < c.head_dim; ++d) {
          const int64_t e = j * c.head_dim + d;
          if (unreached) {
            ASSERT_EQ(grads.dk.get(e), want_grads.dk.get(e)) << "dk key " << j;
            ASSERT_EQ(grads.dv.get(e), want_grads.dv.get(e)) << "dv key " << j;
          }
          if (reached) {
            ASSERT_TRUE(std::isnan(grads.dk.get(e))) << "dk key " << j << " " << grads.dk.get(e);
            ASSERT_TRUE(std::isnan(grads.dv.get(e))) << "dv key " << j << " " << grads.dv.get(e);
          }
        }
      }
    }
}

// (7) Text rows attend at full resolution (SPEC 5): through the whole pipeline (estimator, planner,
// attention), the rows of text tokens equal dense attention while the other rows are sparse. The
// first case is the transformers integration's: causal, keep_first_block, the question at the
// end, where forcing only the text columns changed nothing.
TEST(Attention, TextRowsEqualDenseThroughThePipeline) {
  const uint64_t seed = test_seed(211);
  struct TextCase {
    bool causal;
    int64_t text_len;
    TextPosition position;
  };
  for (const TextCase& t : {TextCase{true, 32, TextPosition::kEnd},
                            TextCase{false, 100, TextPosition::kStart}}) {
    Case c;
    c.heads_q = 2;
    c.heads_kv = 2;
    c.seq_q = 700;
    c.seq_k = 700;
    c.head_dim = 32;
    c.block_m = 128;
    c.block_n = 64;
    c.causal = t.causal;
    SCOPED_TRACE(c.name() + " text_len=" + std::to_string(t.text_len));
    Config config = make_config(c);
    config.keep_first_block = t.causal;
    config.text_len = t.text_len;
    config.text_position = t.position;
    const Qkv x = random_qkv(c.batch, c.heads_q, c.heads_kv, c.seq_q, c.seq_k, c.head_dim,
                             DType::kFloat32, seed);
    HostTensor scores(DType::kFloat32, {c.batch, c.heads_q, c.num_q_blocks(), c.num_k_blocks()});
    ASSERT_TRUE(estimate_importance(scores.view(), x.q.view(), x.k.view(), config).ok());
    HostPlan plan = make_host_plan(c.batch, c.heads_q, c.seq_q, c.seq_k, config);
    ASSERT_TRUE(plan_from_scores(plan.view(), scores.view(), TensorView(), config).ok());
    const Forward sparse = psa_forward(x, plan, config, DType::kFloat32);
    const Forward dense = dense_forward(x, t.causal);

    const int64_t text_first = t.position == TextPosition::kEnd ? c.seq_q - t.text_len : 0;
    HostTensor text_sparse(DType::kFloat32, {c.heads_q, t.text_len, c.head_dim});
    HostTensor text_dense(DType::kFloat32, text_sparse.shape());
    double other_diff = 0.0;
    for (int64_t h = 0; h < c.heads_q; ++h)
      for (int64_t i = 0; i < c.seq_q; ++i) {
        const bool text = i >= text_first && i < text_first + t.text_len;
        for (int64_t d = 0; d < c.head_dim; ++d) {
          const int64_t e = (h * c.seq_q + i) * c.head_dim + d;
          if (text) {
            const int64_t te = (h * t.text_len + i - text_first) * c.head_dim + d;
            text_sparse.set(te, sparse.out.get(e));
            text_dense.set(te, dense.out.get(e));
          } else {
            other_diff = std::max(other_diff, std::fabs(sparse.out.get(e) - dense.out.get(e)));
          }
        }
      }
    // Same math in double, different summation order, each rounded once to fp32.
    expect_close(text_sparse, text_dense, 1e-5, 1e-7, "text rows", seed);
    // The plan is sparse elsewhere (else the check above proves nothing about text).
    EXPECT_GT(other_diff, 1e-3) << replay_hint(seed);
  }
}

}  // namespace
}  // namespace psa::test
