// The parameters of the pyramid sparse attention backward kernel (SPEC.md section 7), one struct
// passed by value: pointers and strides in elements, filled by backward_dispatch.cu.
#pragma once

#include <cstdint>

#include "cuda/attention/attention_params.h"

namespace psa::cuda {

struct BackwardParams {
  // q and dout: (B, Hq, Lq, D) in the element type, unit stride on D, 16-byte rows. dout is the
  // caller's tensor, or a packed copy in the workspace when its layout does not allow 16-byte
  // copies (an expanded gradient has zero strides).
  const void* q = nullptr;
  const void* dout = nullptr;
  int64_t q_batch_stride = 0, q_head_stride = 0, q_row_stride = 0;
  int64_t dout_batch_stride = 0, dout_head_stride = 0, dout_row_stride = 0;

  // Keys and values of every level (index l: pool factor 1 << l), as in AttentionParams.
  const void* k[kAttentionLevels] = {};
  const void* v[kAttentionLevels] = {};
  int64_t k_batch_stride[kAttentionLevels] = {}, k_head_stride[kAttentionLevels] = {},
          k_row_stride[kAttentionLevels] = {};
  int64_t v_batch_stride[kAttentionLevels] = {}, v_head_stride[kAttentionLevels] = {},
          v_row_stride[kAttentionLevels] = {};

  // Row terms, (B * Hq, num_q_blocks * block_m) fp32 contiguous, padded rows included:
  // lse2 = LSE * log2(e) (+inf for a row with no visible unit and for padding, so that P = 0),
  // delta = rowsum(dout * out) (0 for padding).
  const float* lse2 = nullptr;
  const float* delta = nullptr;
  int64_t row_terms_stride = 0;

  // dq: (B, Hq, Lq, D) in the element type, unit stride on D, written once per row.
  void* dq = nullptr;
  int64_t dq_batch_stride = 0, dq_head_stride = 0, dq_row_stride = 0;

  // fp32 accumulators of dK and dV of every level: one region each, level l at level_offset[l],
  // (B, Hkv, ceil(Lk / f), D) contiguous; the dV region has the dK region's layout.
  float* dk_acc = nullptr;
  float* dv_acc = nullptr;
  int64_t level_offset[kAttentionLevels] = {};

  // The plan (counts (B, Hq, Mq, 4), blocks (B, Hq, Mq, Nk)), read as untrusted like the forward.
  const int32_t* counts = nullptr;
  const int32_t* blocks = nullptr;

  // Deterministic accumulation (null when config.deterministic is false). order (B, Hq, Mq, Nk):
  // for row R and key block J, (rank << 2) | level index, where rank counts the rows before R in
  // R's kv group (row order) that attend J at that level; -1 when R does not attend J. A unit
  // (batch, kv head, level, J) has counters per accumulated product in sem_k / sem_v
  // ((B, Hkv, 4, Nk, lanes) int32, zeroed), advanced once per tile that touches the unit; a tile
  // adds its share only when every earlier row of its lane has added all of its own.
  const int32_t* order = nullptr;
  int32_t* sem_k = nullptr;
  int32_t* sem_v = nullptr;
  // Deterministic mode spreads consecutive ranks over `lanes` copies of the accumulators (rank r
  // adds to copy r % lanes, after ranks r - lanes, r - 2 lanes, ...), lane_stride elements apart,
  // so that rows in flight together rarely wait on one another; the copies are summed in lane
  // order when dK and dV are finalised. The counters are per (unit, lane).
  int lanes = 1;
  int64_t lane_stride = 0;

  // Rows are handed out in order by this zeroed counter, so that a row is only waited on by rows
  // that were handed out after it (the ordered accumulation cannot deadlock). With order set,
  // `interleave` kv groups are handed out side by side (hand-out index k -> (batch, group block,
  // query head in group, query block, group in block)), so that the rows in flight together
  // split over several groups and fewer of them wait on one another; within a kv group the
  // hand-out order is still row order, the order of the ranks. Without order, k is the row.
  int32_t* row_counter = nullptr;
  int interleave = 1;

  int batch = 0, heads_q = 0, heads_kv = 0;
  int seq_q = 0, seq_k = 0;
  int num_q_blocks = 0, num_k_blocks = 0;
  int block_n = 0, log2_block_n = 0;
  float scale_log2 = 0.0f;  // softmax_scale * log2(e)
  float scale = 0.0f;       // softmax_scale, applied to dQ here and to dK when finalised
  bool causal = false;
};

}  // namespace psa::cuda
