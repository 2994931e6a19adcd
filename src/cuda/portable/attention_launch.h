// The per-variant launchers of the portable attention forward, instantiated one per translation
// unit (src/cuda/portable/attention_fwd_<dtype>_hdim<D>.cu) and called only by
// src/cuda/attention/attention_dispatch.cu.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "cuda/attention/attention_params.h"
#include "psa/status.h"

namespace psa::cuda::portable {

// block_m is 64 or 128 (checked by attention_supported); smem_per_sm, the device's shared memory
// per SM in bytes, picks the tile shape (cuda/kernel_path.h).
template <typename Element, int kHeadDim>
Status launch_attention_forward(const AttentionParams& params, int block_m, int smem_per_sm,
                                cudaStream_t stream);

extern template Status launch_attention_forward<__nv_bfloat16, 64>(
    const AttentionParams&, int, int, cudaStream_t);
extern template Status launch_attention_forward<__nv_bfloat16, 128>(
    const AttentionParams&, int, int, cudaStream_t);
extern template Status launch_attention_forward<__half, 64>(
    const AttentionParams&, int, int, cudaStream_t);
extern template Status launch_attention_forward<__half, 128>(
    const AttentionParams&, int, int, cudaStream_t);

}  // namespace psa::cuda::portable
