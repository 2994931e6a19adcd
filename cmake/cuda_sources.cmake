# CUDA sources of the psa library: one translation unit per attention variant (STYLE.md).
include(${CMAKE_CURRENT_LIST_DIR}/cuda_attention_sources.cmake)
set(PSA_CUDA_SOURCES
  src/cuda/estimator.cu
  src/cuda/fill.cu
  src/cuda/permute.cu
  src/cuda/planner.cu
  src/cuda/pyramid.cu
  ${PSA_CUDA_ATTENTION_SOURCES}
)
