// The pyramid on the CPU (SPEC 2): pooled keys and values of factors 2, 4, 8, each pooled token the
// exact mean of its real tokens, accumulated in double and stored in the pyramid's dtype.
#include <vector>

#include "common/index_math.h"
#include "cpu/attention_common.h"
#include "cpu/cpu_backend.h"

namespace psa::cpu {

void pool_means(double* pooled, const double* tokens, int64_t length, int64_t head_dim,
                int64_t factor) {
  const int64_t num_pooled = detail::pooled_length(length, factor);
  for (int64_t p = 0; p < num_pooled; ++p) {
    // c_p real tokens: f, except a ragged last group (e.g. L = 61, f = 8: p = 7 holds 5 tokens).
    const int64_t count = detail::pooled_count(length, factor, p);
    double* dst = pooled + p * head_dim;
    for (int64_t d = 0; d < head_dim; ++d) dst[d] = 0.0;
    for (int64_t t = p * factor; t < p * factor + count; ++t) {
      const double* src = tokens + t * head_dim;
      for (int64_t d = 0; d < head_dim; ++d) dst[d] += src[d];
    }
    for (int64_t d = 0; d < head_dim; ++d) dst[d] /= static_cast<double>(count);
  }
}

namespace {

// Pools one (b, h) slice of `input` (B, H, L, D) into every level of `levels`.
void pool_slice(const TensorView (&levels)[kNumPooledLevels], const TensorView& input, int64_t b,
                int64_t h) {
  const int64_t length = input.shape[2], head_dim = input.shape[3];
  std::vector<double> tokens(static_cast<size_t>(length * head_dim));
  for (int64_t t = 0; t < length; ++t) load_row(tokens.data() + t * head_dim, input, b, h, t);
  std::vector<double> pooled;
  for (int l = 0; l < kNumPooledLevels; ++l) {
    const int64_t factor = kLevelFactors[l + 1];
    const int64_t num_pooled = detail::pooled_length(length, factor);
    pooled.resize(static_cast<size_t>(num_pooled * head_dim));
    pool_means(pooled.data(), tokens.data(), length, head_dim, factor);
    for (int64_t p = 0; p < num_pooled; ++p) {
      store_row(levels[l], b, h, p, pooled.data() + p * head_dim);
    }
  }
}

}  // namespace

Status build_pyramid(PyramidView pyramid, const TensorView& k, const TensorView& v) {
  const int64_t batch = k.shape[0], heads_kv = k.shape[1];
  parallel_for(batch * heads_kv, [&](int64_t slice) {
    const int64_t b = slice / heads_kv, h = slice % heads_kv;
    pool_slice(pyramid.k, k, b, h);
    pool_slice(pyramid.v, v, b, h);
  });
  return Status::ok_status();
}

}  // namespace psa::cpu
