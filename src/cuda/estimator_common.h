// What the Hopper and the portable estimators share on the host: the input checks, the softmax
// scale and the device's shared-memory limits that pick their launch configuration.
#pragma once

#include <cuda_runtime.h>

#include <cmath>
#include <string>

#include "cuda/cuda_backend.h"
#include "cuda/cuda_utils.cuh"

namespace psa::cuda {

// The estimators read q and k of one 16-bit dtype, head dim <= max_head_dim.
inline Status check_estimator_inputs(const TensorView& q, const TensorView& k, int max_head_dim) {
  if (q.dtype != k.dtype || (q.dtype != DType::kFloat16 && q.dtype != DType::kBFloat16)) {
    return unsupported(std::string("CUDA estimate_importance supports float16 and bfloat16 q and "
                                   "k of one dtype, got q ") +
                       dtype_name(q.dtype) + ", k " + dtype_name(k.dtype));
  }
  if (q.shape[3] > max_head_dim) {
    return unsupported("CUDA estimate_importance supports head_dim <= " +
                       std::to_string(max_head_dim) + ", got " + std::to_string(q.shape[3]));
  }
  return Status();
}

inline float estimator_scale(const Config& config, int64_t head_dim) {
  return config.softmax_scale > 0.0f
             ? config.softmax_scale
             : static_cast<float>(1.0 / std::sqrt(static_cast<double>(head_dim)));
}

// Shared memory of the current device: the opt-in maximum per CTA, the per-SM total and the
// per-CTA reservation.
struct SharedMemoryLimits {
  size_t per_cta, per_sm, reserved;
};
inline Status shared_memory_limits(SharedMemoryLimits* limits) {
  int device = 0, optin = 0, per_sm = 0, reserved = 0;
  PSA_RETURN_IF_ERROR(cuda_check(cudaGetDevice(&device), "cudaGetDevice"));
  PSA_RETURN_IF_ERROR(cuda_check(
      cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device),
      "cudaDeviceGetAttribute"));
  PSA_RETURN_IF_ERROR(cuda_check(
      cudaDeviceGetAttribute(&per_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, device),
      "cudaDeviceGetAttribute"));
  PSA_RETURN_IF_ERROR(cuda_check(
      cudaDeviceGetAttribute(&reserved, cudaDevAttrReservedSharedMemoryPerBlock, device),
      "cudaDeviceGetAttribute"));
  *limits = {static_cast<size_t>(optin), static_cast<size_t>(per_sm),
             static_cast<size_t>(reserved)};
  return Status();
}

}  // namespace psa::cuda
