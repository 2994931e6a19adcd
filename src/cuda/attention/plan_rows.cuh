// The layout of one plan row's virtual key sequence (docs/design.md), shared by the Hopper
// kernels and the portable forward: plain CUDA, any architecture.
#pragma once

#include <cstdint>

#include "common/index_math.h"
#include "cuda/attention/attention_params.h"

namespace psa::cuda {

// The clamped layout of plan row `plan_row`: region starts R_1, R_2, R_4, R_8 and end of the
// virtual key sequence, and where each level's blocks start in the row's list. Untrusted counts
// are clamped cumulatively to the Nk entries of the list (a negative count is 0). Params is
// AttentionParams or BackwardParams (counts, num_k_blocks and block_n).
template <typename Params>
__device__ __forceinline__ void row_layout(const Params& params, int64_t plan_row,
                                           int32_t (&region_start)[kAttentionLevels + 1],
                                           int32_t (&list_offset)[kAttentionLevels]) {
  int used = 0, region = 0;
#pragma unroll
  for (int l = 0; l < kAttentionLevels; ++l) {
    int c = __ldg(params.counts + plan_row * kAttentionLevels + l);
    c = max(0, min(c, params.num_k_blocks - used));
    list_offset[l] = used;
    region_start[l] = region;
    used += c;
    region += c * (params.block_n >> l);
  }
  region_start[kAttentionLevels] = region;
}

// Level l (pool factor 1 << l) of (batch, kv head) as the gather sees it: K and V base addresses,
// row pitches in bytes (16-bit elements) and pooled length. Views: any struct with k_base,
// v_base, k_row_bytes, v_row_bytes and level_length; Params: AttentionParams or BackwardParams.
template <typename Views, typename Params>
__device__ __forceinline__ void set_level_view(Views& views, const Params& params, int l,
                                               int64_t batch, int64_t head_kv) {
  views.k_base[l] = static_cast<const char*>(params.k[l]) +
                    (batch * params.k_batch_stride[l] + head_kv * params.k_head_stride[l]) * 2;
  views.v_base[l] = static_cast<const char*>(params.v[l]) +
                    (batch * params.v_batch_stride[l] + head_kv * params.v_head_stride[l]) * 2;
  views.k_row_bytes[l] = params.k_row_stride[l] * 2;
  views.v_row_bytes[l] = params.v_row_stride[l] * 2;
  views.level_length[l] = static_cast<int32_t>(psa::detail::pooled_length(params.seq_k, 1 << l));
}

// The two halves of virtual_row_token, for a caller that issues the plan load early and uses it
// later: where row r's block index sits in the row's list (-1 for r >= num_virtual) and the
// row's level; then, given that block index j, the row's pyramid token.
template <typename Layout>
__device__ __forceinline__ int virtual_row_slot(const Layout& row, int r, int num_virtual,
                                                int log2_block_n, int* level) {
  *level = (r >= row.region_start[1]) + (r >= row.region_start[2]) + (r >= row.region_start[3]);
  if (r >= num_virtual) return -1;
  const int seg_shift = log2_block_n - *level;  // block_n / f rows per block
  return row.list_offset[*level] + ((r - row.region_start[*level]) >> seg_shift);
}
template <typename Layout>
__device__ __forceinline__ bool virtual_row_pooled(const Layout& row, int r, int level, int j,
                                                   int log2_block_n, int num_k_blocks,
                                                   int64_t* p) {
  *p = 0;
  if (j < 0 || j >= num_k_blocks) return false;
  const int seg_shift = log2_block_n - level;
  const int rel = r - row.region_start[level];
  *p = (static_cast<int64_t>(j) << seg_shift) + (rel & ((1 << seg_shift) - 1));
  return *p < row.level_length[level];
}

// Virtual key row r of a plan row laid out by row_layout (Layout: any struct with region_start,
// list_offset and level_length): its level (0..3, pool factor 1 << level; set for every r) and
// its token p in that level of the pyramid. False for a row past the sequence (r >= num_virtual),
// a block index outside [0, Nk) (an untrusted plan) or a token past the level's end (a ragged last
// block); p is meaningful only when true.
template <typename Layout>
__device__ __forceinline__ bool virtual_row_token(const Layout& row, const int32_t* block_list,
                                                  int r, int num_virtual, int log2_block_n,
                                                  int num_k_blocks, int* level, int64_t* p) {
  const int slot = virtual_row_slot(row, r, num_virtual, log2_block_n, level);
  *p = 0;
  if (slot < 0) return false;
  return virtual_row_pooled(row, r, *level, __ldg(block_list + slot), log2_block_n, num_k_blocks,
                            p);
}

}  // namespace psa::cuda
