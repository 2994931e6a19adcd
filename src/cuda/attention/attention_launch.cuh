// Launches one instantiation of the attention forward kernel (included only by the per-variant
// translation units src/cuda/attention_fwd_*.cu, so that each variant compiles on its own).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/attention/attention_kernel.cuh"
#include "cuda/attention/attention_launch.h"
#include "cuda/cuda_utils.cuh"

namespace psa::cuda {

template <typename Traits, typename Kernel>
Status launch_attention_traits(Kernel kernel, const AttentionParams& params, cudaStream_t stream) {
  // Persistent CTAs, as many as fit at once; CTA c takes plan rows c, c + grid, ... in row order
  // (query block fastest), so the CTAs running together share the K/V of one head in L2.
  const int64_t num_rows =
      static_cast<int64_t>(params.batch) * params.heads_q * params.num_q_blocks;
  int64_t grid = 0;
  PSA_RETURN_IF_ERROR(persistent_grid(&grid, kernel, Traits::kNumThreads, Traits::kSmemBytes,
                                      num_rows, "attention_forward_kernel (shared memory)"));
  kernel<<<static_cast<unsigned>(grid), Traits::kNumThreads, Traits::kSmemBytes, stream>>>(
      params);
  return check_launch("attention_forward_kernel");
}

// Tile shapes per variant (shared memory: 2 x Q + kStages x (K + V) tiles):
//   D 128, block_m 128: kBlockN 128 x 2 stages = 192 KiB (kBlockN 64 x 4 stages measured 0.86x);
//          block_m 64:  kBlockN 64 x 2 stages = 96 KiB.
//   D 64,  block_m 128: kBlockN 128 x 4 stages = 160 KiB; block_m 64: 128 x 2 = 80 KiB.
template <typename Element, int kHeadDim>
Status launch_attention_forward(const AttentionParams& params, int block_m, cudaStream_t stream) {
  if (block_m == 64) {
    using T = AttentionTraits<Element, kHeadDim, 64, kHeadDim == 128 ? 64 : 128, 2>;
    return launch_attention_traits<T>(attention_forward_kernel<T>, params, stream);
  }
  using T = AttentionTraits<Element, kHeadDim, 128, 128, kHeadDim == 128 ? 2 : 4>;
  return launch_attention_traits<T>(attention_forward_kernel<T>, params, stream);
}

}  // namespace psa::cuda
