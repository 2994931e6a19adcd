// The per-variant launchers of the attention backward kernel, instantiated one per translation
// unit (src/cuda/attention_bwd_<dtype>_hdim<D>.cu) and called only by backward_dispatch.cu.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "cuda/attention/backward_params.h"
#include "psa/status.h"

namespace psa::cuda {

// block_m is 64 or 128 (checked by attention_supported). The row counter in params must be zero.
template <typename Element, int kHeadDim>
Status launch_attention_backward(const BackwardParams& params, int block_m, cudaStream_t stream);

extern template Status launch_attention_backward<__nv_bfloat16, 64>(const BackwardParams&, int,
                                                                    cudaStream_t);
extern template Status launch_attention_backward<__nv_bfloat16, 128>(const BackwardParams&, int,
                                                                     cudaStream_t);
extern template Status launch_attention_backward<__half, 64>(const BackwardParams&, int,
                                                             cudaStream_t);
extern template Status launch_attention_backward<__half, 128>(const BackwardParams&, int,
                                                              cudaStream_t);

}  // namespace psa::cuda
