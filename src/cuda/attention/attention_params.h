// The parameters of the pyramid sparse attention forward kernel (SPEC.md sections 2, 3, 6), one
// struct passed by value: pointers and strides in elements, filled by attention_dispatch.cu.
#pragma once

#include <cstdint>

namespace psa::cuda {

// Levels of the virtual key sequence: 0 is the input itself, 1..3 the pyramid levels of factor
// 2, 4, 8. Index l has pool factor 1 << l.
constexpr int kAttentionLevels = 4;

struct AttentionParams {
  // q: (B, Hq, Lq, D); out: (B, Hq, Lq, D); lse: (B, Hq, Lq) fp32 or null. Unit stride on D.
  const void* q = nullptr;
  void* out = nullptr;
  float* lse = nullptr;
  int64_t q_batch_stride = 0, q_head_stride = 0, q_row_stride = 0;
  int64_t out_batch_stride = 0, out_head_stride = 0, out_row_stride = 0;
  int64_t lse_batch_stride = 0, lse_head_stride = 0, lse_row_stride = 0;

  // Keys and values of every level: (B, Hkv, ceil(Lk / f), D) with unit stride on D.
  const void* k[kAttentionLevels] = {};
  const void* v[kAttentionLevels] = {};
  int64_t k_batch_stride[kAttentionLevels] = {}, k_head_stride[kAttentionLevels] = {},
          k_row_stride[kAttentionLevels] = {};
  int64_t v_batch_stride[kAttentionLevels] = {}, v_head_stride[kAttentionLevels] = {},
          v_row_stride[kAttentionLevels] = {};

  // The plan: counts (B, Hq, Mq, 4) and blocks (B, Hq, Mq, Nk), int32, contiguous. Read as
  // untrusted: counts and block indices are clamped so that a malformed plan never reads out of
  // bounds (an out-of-range block is skipped).
  const int32_t* counts = nullptr;
  const int32_t* blocks = nullptr;

  int batch = 0, heads_q = 0, heads_kv = 0;
  int seq_q = 0, seq_k = 0;
  int num_q_blocks = 0, num_k_blocks = 0;
  int block_n = 0, log2_block_n = 0;
  // softmax_scale * log2(e): logits are kept in base 2 so that exp becomes one ex2.approx.
  float scale_log2 = 0.0f;
  bool causal = false;
};

}  // namespace psa::cuda
