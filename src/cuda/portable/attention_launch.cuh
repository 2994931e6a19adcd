// Launches one instantiation of the portable attention forward (included only by the per-variant
// translation units src/cuda/portable/attention_fwd_*.cu).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "cuda/cuda_utils.cuh"
#include "cuda/portable/attention_kernel.cuh"
#include "cuda/portable/attention_launch.h"

namespace psa::cuda::portable {

template <typename Traits>
Status launch_attention_traits(const AttentionParams& params, cudaStream_t stream) {
  // One CTA per plan row, query block fastest, so the CTAs running together share one head's K/V
  // in L2.
  const int64_t num_rows =
      static_cast<int64_t>(params.batch) * params.heads_q * params.num_q_blocks;
  if (num_rows == 0) return Status();
  if (num_rows > kMaxGridX) {
    return unsupported("attention_forward (portable): B * Hq * Mq = " + std::to_string(num_rows) +
                       " plan rows exceed the grid limit " + std::to_string(kMaxGridX));
  }
  auto kernel = attention_forward_kernel<Traits>;
  PSA_RETURN_IF_ERROR(cuda_check(cudaFuncSetAttribute(kernel,
                                                      cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                      Traits::kSmemBytes),
                                 "attention_forward_kernel (portable, shared memory)"));
  kernel<<<static_cast<unsigned>(num_rows), Traits::kThreads, Traits::kSmemBytes, stream>>>(
      params);
  return check_launch("attention_forward_kernel (portable)");
}

// Tile shapes per variant (K/V ring in shared memory; Q fragments and O in registers):
//   D 128, block_m 128: 8 warps, kBlockN 64 x 3 stages = 96 KiB, one CTA per SM (~160 registers:
//          Q 32 + O 64 + S 32 per thread);
//          block_m 64:  4 warps, kBlockN 64 x 2 stages = 64 KiB, two CTAs per SM on an A100.
//   D 64,  block_m 128: 8 warps, kBlockN 64 x 3 stages = 48 KiB, two CTAs per SM (<= 128
//          registers: Q 16 + O 32 + S 32);
//          block_m 64:  4 warps, the same ring, two CTAs per SM.
template <typename Element, int kHeadDim>
Status launch_attention_forward(const AttentionParams& params, int block_m, cudaStream_t stream) {
  if (block_m == 64) {
    using T = AttentionTraits<Element, kHeadDim, 64, 64, kHeadDim == 128 ? 2 : 3, 2>;
    return launch_attention_traits<T>(params, stream);
  }
  using T = AttentionTraits<Element, kHeadDim, 128, 64, 3, kHeadDim == 128 ? 1 : 2>;
  return launch_attention_traits<T>(params, stream);
}

}  // namespace psa::cuda::portable
