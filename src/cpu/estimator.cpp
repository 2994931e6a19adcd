// Block importance on the CPU (SPEC.md section 4): the reference the CUDA estimator is tested
// against. Dots accumulate in fp32 (in head-dim order), as a GPU would, so the two agree closely.
#include <cmath>
#include <cstdint>
#include <vector>

#include "common/index_math.h"
#include "common/planner_rules.h"
#include "common/random.h"
#include "cpu/cpu_backend.h"
#include "cpu/cpu_util.h"

namespace psa::cpu {

namespace {

// Copies the sampled rows of every block of one (batch, head) sequence into `rows`:
// (num_blocks, samples, D) fp32. Offset o of block X maps to token X*block + o % |X|.
void gather_sampled_rows(std::vector<float>& rows, const TensorView& t, int64_t b, int64_t h,
                         int64_t block, const std::vector<int32_t>& offsets) {
  const int64_t length = t.shape[2], dim = t.shape[3];
  const int64_t num_blocks = detail::ceil_div(length, block);
  const int64_t samples = static_cast<int64_t>(offsets.size());
  rows.resize(static_cast<size_t>(num_blocks * samples * dim));
  for (int64_t x = 0; x < num_blocks; ++x) {
    const int64_t real = detail::block_rows(length, block, x);
    for (int64_t s = 0; s < samples; ++s) {
      const int64_t token = x * block + offsets[static_cast<size_t>(s)] % real;
      const int64_t base = offset_of(t, b, h, token);
      float* dst = rows.data() + (x * samples + s) * dim;
      for (int64_t d = 0; d < dim; ++d)
        dst[d] = static_cast<float>(load(t, base + d * t.stride[3]));
    }
  }
}

}  // namespace

Status estimate_importance(TensorView scores, const TensorView& q, const TensorView& k,
                           const Config& config) {
  const int64_t batch = q.shape[0], heads_q = q.shape[1], seq_q = q.shape[2], dim = q.shape[3];
  const int64_t heads_kv = k.shape[1], seq_k = k.shape[2];
  const int64_t group = heads_q / heads_kv;
  const int64_t block_m = config.block_m, block_n = config.block_n;
  const int64_t num_q_blocks = detail::ceil_div(seq_q, block_m);
  const int64_t num_k_blocks = detail::ceil_div(seq_k, block_n);
  const int samples_m = config.effective_samples_m(), samples_n = config.effective_samples_n();
  const float scale = config.softmax_scale > 0.0f
                          ? config.softmax_scale
                          : static_cast<float>(1.0 / std::sqrt(static_cast<double>(dim)));
  float* out = static_cast<float*>(scores.data);

  parallel_for(batch * heads_q, [&](int64_t bh) {
    const int64_t b = bh / heads_q, h = bh % heads_q, hkv = h / group;
    // Query offsets are keyed by the query head, key offsets by the kv head on their own counter
    // stream (detail::key_offset_stream), so the query heads of a group share the sampled keys;
    // both by their global index (config.head_offset).
    std::vector<int32_t> q_offsets(static_cast<size_t>(samples_m));
    std::vector<int32_t> k_offsets(static_cast<size_t>(samples_n));
    const int64_t h_draw = h + config.head_offset, hkv_draw = h_draw / group;
    detail::sample_offsets(q_offsets.data(), config.seed, b, h_draw, static_cast<int>(block_m),
                           samples_m);
    detail::sample_offsets(k_offsets.data(), config.seed, b, detail::key_offset_stream(hkv_draw),
                           static_cast<int>(block_n), samples_n);
    // (Mq, s_m, D) sampled queries and (Nk, s_n, D) sampled keys.
    std::vector<float> q_rows, k_rows;
    gather_sampled_rows(q_rows, q, b, h, block_m, q_offsets);
    gather_sampled_rows(k_rows, k, b, hkv, block_n, k_offsets);

    std::vector<float> logits(static_cast<size_t>(samples_m * num_k_blocks));  // r_i(J), (s_m, Nk)
    std::vector<float> row_max(static_cast<size_t>(samples_m));                // m_i
    std::vector<char> visible(static_cast<size_t>(num_k_blocks));
    for (int64_t qi = 0; qi < num_q_blocks; ++qi) {
      float* p = out + ((b * heads_q + h) * num_q_blocks + qi) * num_k_blocks;
      bool any_visible = false;
      for (int64_t kj = 0; kj < num_k_blocks; ++kj) {
        visible[kj] =
            !config.causal || detail::block_visible(seq_q, seq_k, block_m, block_n, qi, kj);
        any_visible = any_visible || visible[kj];
      }
      if (!any_visible) {
        for (int64_t kj = 0; kj < num_k_blocks; ++kj) p[kj] = 0.0f;
        continue;
      }
      for (int64_t i = 0; i < samples_m; ++i) {
        const float* qv = q_rows.data() + (qi * samples_m + i) * dim;
        float m = -INFINITY;
        for (int64_t kj = 0; kj < num_k_blocks; ++kj) {
          if (!visible[kj]) continue;
          float best = -INFINITY;
          for (int64_t j = 0; j < samples_n; ++j) {
            const float* kv = k_rows.data() + (kj * samples_n + j) * dim;
            float dot = 0.0f;
            for (int64_t d = 0; d < dim; ++d) dot += qv[d] * kv[d];
            best = std::fmax(best, dot);
          }
          const float r = scale * best;
          logits[i * num_k_blocks + kj] = r;
          m = std::fmax(m, r);
        }
        row_max[i] = m;
      }
      // P(I, J) = max_i exp(r_i(J) - m_i), then the row divided by its sum (fp32, J order).
      float sum = 0.0f;
      for (int64_t kj = 0; kj < num_k_blocks; ++kj) {
        float value = 0.0f;
        if (visible[kj]) {
          for (int64_t i = 0; i < samples_m; ++i) {
            value = std::fmax(value, std::exp(logits[i * num_k_blocks + kj] - row_max[i]));
          }
        }
        p[kj] = value;
        sum += value;
      }
      for (int64_t kj = 0; kj < num_k_blocks; ++kj) p[kj] /= sum;
    }
  });
  return Status();
}

}  // namespace psa::cpu
