// Portable attention forward instantiation: fp16, head dim 64, block_m 64 and 128.
#include "cuda/portable/attention_launch.cuh"

namespace psa::cuda::portable {
template Status launch_attention_forward<__half, 64>(const AttentionParams&, int, int,
                                                     cudaStream_t);
}  // namespace psa::cuda::portable
