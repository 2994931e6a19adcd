// Launches one instantiation of the attention backward kernel (included only by the per-variant
// translation units src/cuda/attention_bwd_*.cu, so that each variant compiles on its own).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/attention/backward_kernel.cuh"
#include "cuda/attention/backward_launch.h"
#include "cuda/cuda_utils.cuh"

namespace psa::cuda {

template <typename Traits>
Status launch_backward_traits(const BackwardParams& params, cudaStream_t stream) {
  const auto kernel = attention_backward_kernel<Traits>;
  // Persistent CTAs, as many as fit at once; rows are handed out in order by the counter, so a
  // CTA that is not resident yet holds no row anyone waits for.
  const int64_t num_rows =
      static_cast<int64_t>(params.batch) * params.heads_q * params.num_q_blocks;
  int64_t grid = 0;
  PSA_RETURN_IF_ERROR(persistent_grid(&grid, kernel, Traits::kNumThreads, Traits::kSmemBytes,
                                      num_rows, "attention_backward_kernel (shared memory)"));
  kernel<<<static_cast<unsigned>(grid), Traits::kNumThreads, Traits::kSmemBytes, stream>>>(
      params);
  return check_launch("attention_backward_kernel");
}

// Tile shapes per variant (shared memory: Q + dO + kStages x (K + V) + 2 x (P + dS)):
//   D 128: block_m 128, 2 stages = 192 KiB; block_m 64, 3 stages = 128 KiB.
//   D 64:  block_m 128, 4 stages = 160 KiB; block_m 64, 4 stages = 112 KiB.
template <typename Element, int kHeadDim>
Status launch_attention_backward(const BackwardParams& params, int block_m, cudaStream_t stream) {
  if (block_m == 64) {
    return launch_backward_traits<BackwardTraits<Element, kHeadDim, 64, kHeadDim == 128 ? 3 : 4>>(
        params, stream);
  }
  return launch_backward_traits<BackwardTraits<Element, kHeadDim, 128, kHeadDim == 128 ? 2 : 4>>(
      params, stream);
}

}  // namespace psa::cuda
