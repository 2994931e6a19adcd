// Host helpers shared by the attention launchers (forward and backward). The kernels copy rows as
// 16-byte chunks, so a tensor they gather from or write rows to needs unit stride on D and every
// other stride a multiple of 8 elements from a 16-byte aligned base.
#pragma once

#include <cstdint>
#include <string>

#include "cuda/attention/attention_params.h"
#include "psa/ops.h"
#include "psa/status.h"
#include "psa/tensor.h"

namespace psa::cuda {

// cp.async moves 16-byte chunks: 8 elements of 16 bits.
constexpr int64_t kChunkElements = 8;

// kUnsupported naming `name` and the offending stride when `t` breaks the rule above.
Status check_rows_aligned(const TensorView& t, const std::string& name);

// Smallest l with 2^l >= x (x a power of two: its log2).
int log2_int(int x);

// The keys and values of every level (index l: pool factor 1 << l; level 0 is k and v themselves)
// into a kernel's parameters (AttentionParams or BackwardParams: the same field names).
template <typename Params>
void set_level_views(Params& p, const TensorView& k, const TensorView& v,
                     const PyramidView& pyramid) {
  const TensorView* level_k[kAttentionLevels] = {&k, &pyramid.k[0], &pyramid.k[1], &pyramid.k[2]};
  const TensorView* level_v[kAttentionLevels] = {&v, &pyramid.v[0], &pyramid.v[1], &pyramid.v[2]};
  for (int l = 0; l < kAttentionLevels; ++l) {
    p.k[l] = level_k[l]->data;
    p.v[l] = level_v[l]->data;
    p.k_batch_stride[l] = level_k[l]->stride[0];
    p.k_head_stride[l] = level_k[l]->stride[1];
    p.k_row_stride[l] = level_k[l]->stride[2];
    p.v_batch_stride[l] = level_v[l]->stride[0];
    p.v_head_stride[l] = level_v[l]->stride[1];
    p.v_row_stride[l] = level_v[l]->stride[2];
  }
}

}  // namespace psa::cuda
