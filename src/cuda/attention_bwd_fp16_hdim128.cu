// Attention backward instantiation: fp16, head dim 128, block_m 64 and 128.
#include "cuda/attention/backward_launch.cuh"

namespace psa::cuda {
template Status launch_attention_backward<__half, 128>(const BackwardParams&, int, cudaStream_t);
}  // namespace psa::cuda
