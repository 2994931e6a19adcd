// Attention forward instantiation: bf16, head dim 128, block_m 64 and 128.
#include "cuda/attention/attention_launch.cuh"

namespace psa::cuda {
template Status launch_attention_forward<__nv_bfloat16, 128>(const AttentionParams&, int,
                                                       cudaStream_t);
}  // namespace psa::cuda
