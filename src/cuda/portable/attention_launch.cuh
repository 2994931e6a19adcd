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

// Launches the kernel of Traits for a plan of block_m query rows per row: block_m / kBlockM CTAs
// per plan row.
template <typename Traits>
Status launch_attention_traits(const AttentionParams& params, int block_m, cudaStream_t stream) {
  // One CTA per plan row (or part), query block fastest, so the CTAs running together share one
  // head's K/V in L2.
  const int ctas_per_row = block_m / Traits::kBlockM;
  const int64_t num_ctas =
      static_cast<int64_t>(params.batch) * params.heads_q * params.num_q_blocks * ctas_per_row;
  if (num_ctas == 0) return Status();
  if (num_ctas > kMaxGridX) {
    return unsupported("attention_forward (portable): B * Hq * Mq = " +
                       std::to_string(num_ctas / ctas_per_row) +
                       " plan rows exceed the grid limit " +
                       std::to_string(kMaxGridX / ctas_per_row));
  }
  auto kernel = attention_forward_kernel<Traits>;
  PSA_RETURN_IF_ERROR(cuda_check(cudaFuncSetAttribute(kernel,
                                                      cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                      Traits::kSmemBytes),
                                 "attention_forward_kernel (portable, shared memory)"));
  kernel<<<static_cast<unsigned>(num_ctas), Traits::kThreads, Traits::kSmemBytes, stream>>>(
      params, ctas_per_row);
  return check_launch("attention_forward_kernel (portable)");
}

// True when `ctas` CTAs of Traits fit one SM's shared memory (each also takes the 1 KiB the
// runtime reserves per block).
template <typename Traits>
bool fits(int ctas, int smem_per_sm) {
  return ctas * (Traits::kSmemBytes + 1024) <= smem_per_sm;
}

// Tile shapes (4 warps per CTA; Q, one K and one V tile and two tile records in shared memory;
// O in registers), the widest that keeps two CTAs on an SM:
//   D 128, block_m 128: a CTA of 128 queries (32 per warp), kBlockN 64: 67.2 KiB, two CTAs per
//          SM on 8.0 (164 KiB) and 9.0 (228 KiB); block_m 64: 64 queries (16 per warp): 51.2 KiB.
//          On the 100 KiB of 8.6 / 8.9 neither fits twice: CTAs of 64 queries and kBlockN 32
//          (33.7 KiB), two per plan row of 128.
//   D 64:  the same shapes at half the bytes, kBlockN 64 everywhere. Block_m 128 holds O (64)
//          and S (64) per thread and runs three CTAs per SM at 168 registers, with ~100 bytes of
//          spill: faster than two without (run 21, docs/kernel_notes.md).
// Registers: D 128, block_m 128 holds O (128 per thread) and S (64) of two m16 tiles, within the
// 255 of two CTAs of 128 threads per SM.
template <typename Element, int kHeadDim>
Status launch_attention_forward(const AttentionParams& params, int block_m, int smem_per_sm,
                                cudaStream_t stream) {
  using Narrow = AttentionTraits<Element, kHeadDim, 64, 64, 2>;
  using Wide = AttentionTraits<Element, kHeadDim, 128, 64, kHeadDim == 64 ? 3 : 2>;
  if constexpr (kHeadDim == 128) {
    using Small = AttentionTraits<Element, kHeadDim, 64, 32, 2>;
    if (!(block_m == 128 ? fits<Wide>(2, smem_per_sm) : fits<Narrow>(2, smem_per_sm))) {
      return launch_attention_traits<Small>(params, block_m, stream);
    }
  }
  if (block_m == 64) return launch_attention_traits<Narrow>(params, block_m, stream);
  return launch_attention_traits<Wide>(params, block_m, stream);
}

}  // namespace psa::cuda::portable
