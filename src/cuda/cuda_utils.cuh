// Helpers shared by the CUDA launchers and kernels: CUDA errors as psa::Status values, the
// stream handle, a device guard, and fp16 / bf16 element access in fp32.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "psa/status.h"
#include "psa/tensor.h"

namespace psa::cuda {

// "CUDA error in <what>: <cudaGetErrorString>", or ok.
inline Status cuda_check(cudaError_t error, const char* what) {
  if (error == cudaSuccess) return Status();
  return Status(StatusCode::kCudaError,
                std::string("CUDA error in ") + what + ": " + cudaGetErrorString(error));
}

// Checks the launch just enqueued (configuration errors surface here; execution errors surface at
// the caller's next synchronisation, as for every asynchronous CUDA call).
inline Status check_launch(const char* kernel_name) {
  return cuda_check(cudaGetLastError(), kernel_name);
}

inline cudaStream_t to_cuda_stream(Stream stream) { return static_cast<cudaStream_t>(stream); }

// Makes `device_index` current for the scope of a launcher and restores the caller's device, so
// that tensors on a second GPU run there without the caller switching devices.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device_index) : status_(switch_to(device_index)) {}
  ~DeviceGuard() {
    // A destructor cannot report; restoring a device that was current a moment ago does not fail.
    if (switched_) static_cast<void>(cudaSetDevice(previous_));
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;
  const Status& status() const { return status_; }

 private:
  Status switch_to(int device_index) {
    Status status = cuda_check(cudaGetDevice(&previous_), "cudaGetDevice");
    if (!status.ok() || previous_ == device_index) return status;
    Status set = cuda_check(cudaSetDevice(device_index), "cudaSetDevice");
    switched_ = set.ok();
    return set;
  }

  // Declared before status_, which is initialised from switch_to().
  int previous_ = 0;
  bool switched_ = false;
  Status status_;
};

// Grid sizes are int64 products of tensor dims; CUDA's x dimension takes up to 2^31 - 1 blocks.
constexpr int64_t kMaxGridX = 2147483647;

// ---- Element access in fp32 (device) ----------------------------------------------------------
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_float(float x) { return x; }

template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ __half from_float<__half>(float x) {
  return __float2half_rn(x);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}
template <>
__device__ __forceinline__ float from_float<float>(float x) {
  return x;
}

// The grid of a persistent kernel with `smem_bytes` of dynamic shared memory: its shared-memory
// limit raised to that, and as many CTAs as fit on the current device at once, at most
// `work_items` and at least 1.
template <typename Kernel>
Status persistent_grid(int64_t* grid, Kernel kernel, int threads, int smem_bytes,
                       int64_t work_items, const char* kernel_name) {
  PSA_RETURN_IF_ERROR(cuda_check(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_bytes),
      kernel_name));
  int device = 0, num_sms = 0, per_sm = 0;
  PSA_RETURN_IF_ERROR(cuda_check(cudaGetDevice(&device), "cudaGetDevice"));
  PSA_RETURN_IF_ERROR(cuda_check(
      cudaDeviceGetAttribute(&num_sms, cudaDevAttrMultiProcessorCount, device),
      "cudaDeviceGetAttribute (multiprocessor count)"));
  PSA_RETURN_IF_ERROR(cuda_check(
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, smem_bytes),
      "cudaOccupancyMaxActiveBlocksPerMultiprocessor"));
  const int64_t resident = static_cast<int64_t>(num_sms) * (per_sm > 1 ? per_sm : 1);
  *grid = work_items < resident ? work_items : resident;
  if (*grid < 1) *grid = 1;
  return Status();
}

// True when `ptr` is aligned for `bytes`-wide vector access.
inline bool is_aligned(const void* ptr, size_t bytes) {
  return reinterpret_cast<uintptr_t>(ptr) % bytes == 0;
}

}  // namespace psa::cuda
