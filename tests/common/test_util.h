// Shared test helpers: seeded counter-based random inputs, poisoning, error norms.
// Every random tensor comes from (seed, stream id), so a failing case replays from its seed.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "psa/psa.h"

namespace psa::test {

// Uniform values in [lo, hi) from Philox keyed by `seed`; the same seed gives the same tensor.
void fill_uniform(HostTensor& t, uint64_t seed, double lo = -1.0, double hi = 1.0);
// Standard normal values (Box-Muller on Philox), times `scale`.
void fill_normal(HostTensor& t, uint64_t seed, double scale = 1.0);
// NaN for floating dtypes, 0x7f.. patterns for integers: anything a kernel fails to write shows.
void poison(HostTensor& t);

// ||a - b|| / ||b|| over all elements (b the reference); both converted to double.
double rel_l2(const HostTensor& a, const HostTensor& b);
double max_abs_diff(const HostTensor& a, const HostTensor& b);
double l2_norm(const HostTensor& t);
bool has_nan(const HostTensor& t);

// q (B, Hq, Lq, D), k, v (B, Hkv, Lk, D) with normal entries; convenience for attention tests.
struct Qkv {
  HostTensor q, k, v;
};
Qkv random_qkv(int64_t batch, int64_t heads_q, int64_t heads_kv, int64_t seq_q, int64_t seq_k,
               int64_t head_dim, DType dtype, uint64_t seed, double scale = 1.0);

// A plan from a level map (B, Hq, Mq, Nk) flattened row-major with values in {0, 1, 2, 4, 8},
// built here so that attention tests do not depend on the planner. Entries of `blocks` past a
// row's total are poisoned: they must never be read.
HostPlan plan_from_level_map(const std::vector<int>& levels, int64_t batch, int64_t heads_q,
                             int64_t seq_q, int64_t seq_k, const Config& config);

// "replay: PSA_TEST_SEED=<seed> ./psa_cpu_tests --gtest_filter=<current test>"
std::string replay_hint(uint64_t seed);
// The seed a test should use: PSA_TEST_SEED from the environment when set, else `fallback`.
uint64_t test_seed(uint64_t fallback);

}  // namespace psa::test
