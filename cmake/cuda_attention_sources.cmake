# The Hopper attention kernels: the backward's dispatch point and one translation unit per variant
# (dtype x head dim; block_m 64 and 128 inside each), so the variants compile in parallel. The
# forward's dispatch point (attention_dispatch.cu) serves both paths and is in PSA_CUDA_SOURCES.
set(PSA_CUDA_ATTENTION_SOURCES
  src/cuda/attention/backward_dispatch.cu
  src/cuda/attention_fwd_bf16_hdim64.cu
  src/cuda/attention_fwd_bf16_hdim128.cu
  src/cuda/attention_fwd_fp16_hdim64.cu
  src/cuda/attention_fwd_fp16_hdim128.cu
  src/cuda/attention_bwd_bf16_hdim64.cu
  src/cuda/attention_bwd_bf16_hdim128.cu
  src/cuda/attention_bwd_fp16_hdim64.cu
  src/cuda/attention_bwd_fp16_hdim128.cu)
