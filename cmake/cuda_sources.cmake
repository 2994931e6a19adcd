# CUDA sources of the psa library, by the architectures they are built for (CMakeLists.txt):
#   PSA_CUDA_SOURCES           every architecture: kernels with nothing arch-specific, dispatch.
#   PSA_CUDA_HOPPER_SOURCES    sm_90a only (wgmma, setmaxnreg, mbarriers).
#   PSA_CUDA_PORTABLE_SOURCES  compute capability 8.x and the compute_80 PTX (mma.sync, cp.async).
# One translation unit per attention variant (STYLE.md).
include(${CMAKE_CURRENT_LIST_DIR}/cuda_attention_sources.cmake)
set(PSA_CUDA_SOURCES
  src/cuda/attention/attention_dispatch.cu
  src/cuda/fill.cu
  src/cuda/kernel_path.cpp
  src/cuda/permute.cu
  src/cuda/planner.cu
  src/cuda/pyramid.cu
)
set(PSA_CUDA_HOPPER_SOURCES
  src/cuda/estimator.cu
  ${PSA_CUDA_ATTENTION_SOURCES}
)
set(PSA_CUDA_PORTABLE_SOURCES
  src/cuda/portable/attention_fwd_bf16_hdim64.cu
  src/cuda/portable/attention_fwd_bf16_hdim128.cu
  src/cuda/portable/attention_fwd_fp16_hdim64.cu
  src/cuda/portable/attention_fwd_fp16_hdim128.cu
  src/cuda/portable/estimator.cu
)
