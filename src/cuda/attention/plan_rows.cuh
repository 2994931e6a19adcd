// The layout of one plan row's virtual key sequence (docs/design.md), shared by the Hopper
// kernels and the portable forward: plain CUDA, any architecture.
#pragma once

#include <cstdint>

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

}  // namespace psa::cuda
