#include "cuda/kernel_path.h"

#include <cuda_runtime.h>

#include <array>
#include <atomic>
#include <cstdlib>
#include <cstring>

namespace psa::cuda {

namespace {

// Compute capability per device as 10 * major + minor, 0 while unknown. Devices past the table
// (more than 64 in one process) are queried on every call.
constexpr int kCachedDevices = 64;
std::array<std::atomic<int>, kCachedDevices> g_capability{};
std::array<std::atomic<int>, kCachedDevices> g_shared_memory{};

enum class Forced { kNo, kPortable, kSmallSharedMemory };

// Shared memory per SM of compute capability 8.6 and 8.9.
constexpr int kSmallSharedMemoryPerSm = 100 * 1024;

Status query_capability(int device_index, int* capability) {
  if (device_index >= 0 && device_index < kCachedDevices) {
    *capability = g_capability[device_index].load(std::memory_order_relaxed);
    if (*capability != 0) return Status();
  }
  int major = 0, minor = 0;
  cudaError_t error =
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device_index);
  if (error == cudaSuccess) {
    error = cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device_index);
  }
  if (error != cudaSuccess) {
    (void)cudaGetLastError();  // a failed query must not fail a later, unrelated call
    return Status(StatusCode::kCudaError, "CUDA error querying the compute capability of device " +
                                              std::to_string(device_index) + ": " +
                                              cudaGetErrorString(error));
  }
  *capability = 10 * major + minor;
  if (device_index >= 0 && device_index < kCachedDevices) {
    g_capability[device_index].store(*capability, std::memory_order_relaxed);
  }
  return Status();
}

Forced read_force_portable() {
  const char* value = std::getenv("PSA_FORCE_PORTABLE");
  if (value == nullptr) return Forced::kNo;
  if (std::strcmp(value, "1") == 0) return Forced::kPortable;
  if (std::strcmp(value, "8.9") == 0) return Forced::kSmallSharedMemory;
  return Forced::kNo;
}

Forced forced_mode() {
  static const Forced forced = read_force_portable();
  return forced;
}

}  // namespace

bool portable_forced() { return forced_mode() != Forced::kNo; }

Status shared_memory_per_sm(int device_index, int* bytes) {
  if (forced_mode() == Forced::kSmallSharedMemory) {
    *bytes = kSmallSharedMemoryPerSm;
    return Status();
  }
  if (device_index >= 0 && device_index < kCachedDevices) {
    *bytes = g_shared_memory[device_index].load(std::memory_order_relaxed);
    if (*bytes != 0) return Status();
  }
  const cudaError_t error = cudaDeviceGetAttribute(
      bytes, cudaDevAttrMaxSharedMemoryPerMultiprocessor, device_index);
  if (error != cudaSuccess) {
    (void)cudaGetLastError();
    return Status(StatusCode::kCudaError,
                  "CUDA error querying the shared memory per SM of device " +
                      std::to_string(device_index) + ": " + cudaGetErrorString(error));
  }
  if (device_index >= 0 && device_index < kCachedDevices) {
    g_shared_memory[device_index].store(*bytes, std::memory_order_relaxed);
  }
  return Status();
}

std::string describe_device(int device_index) {
  int capability = 0;
  std::string text = "device " + std::to_string(device_index);
  if (query_capability(device_index, &capability).ok()) {
    text += " of compute capability " + std::to_string(capability / 10) + "." +
            std::to_string(capability % 10);
  }
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, device_index) == cudaSuccess) {
    text += std::string(" (") + prop.name + ")";
  } else {
    (void)cudaGetLastError();
  }
  return text;
}

Status kernel_path(int device_index, KernelPath* path) {
  int capability = 0;
  PSA_RETURN_IF_ERROR(query_capability(device_index, &capability));
  if (capability < 10 * kMinComputeMajor) {
    return unsupported("psa's CUDA kernels need compute capability " +
                       std::to_string(kMinComputeMajor) + ".0 (Ampere) or newer; " +
                       describe_device(device_index) + " is older");
  }
  // sm_90a code runs on 9.0 only; newer architectures run the portable kernels' compute_80 PTX.
  *path = capability == 90 && !portable_forced() ? KernelPath::kHopper : KernelPath::kPortable;
  return Status();
}

}  // namespace psa::cuda
