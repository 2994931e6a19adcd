// Attention backward instantiation: bf16, head dim 64, block_m 64 and 128.
#include "cuda/attention/backward_launch.cuh"

namespace psa::cuda {
template Status launch_attention_backward<__nv_bfloat16, 64>(const BackwardParams&, int, cudaStream_t);
}  // namespace psa::cuda
