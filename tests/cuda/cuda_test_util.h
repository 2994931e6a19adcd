// Helpers of the CUDA tests: device buffers, host <-> device copies, and the skip when no GPU.
#pragma once

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cstdint>

#include "psa/psa.h"

namespace psa::test {

// True when a CUDA device psa runs on (compute capability 8.0 or newer) is present; tests call
// PSA_SKIP_WITHOUT_GPU() first.
bool gpu_available();
#define PSA_SKIP_WITHOUT_GPU()                                                                   \
  do {                                                                                           \
    if (!::psa::test::gpu_available()) {                                                         \
      GTEST_SKIP() << "no CUDA device of compute capability 8.0 or newer here; these run on a " \
                      "GPU machine";                                                             \
    }                                                                                            \
  } while (0)

// True when device 0 runs the Hopper kernels: compute capability 9.0 and PSA_FORCE_PORTABLE=1
// not set (cuda/kernel_path.h). The CUDA backward exists only there.
bool hopper_path();
#define PSA_SKIP_WITHOUT_HOPPER_PATH()                                                           \
  do {                                                                                           \
    if (!::psa::test::hopper_path()) {                                                           \
      GTEST_SKIP() << "the CUDA backward runs on the Hopper path only (compute capability 9.0, " \
                      "PSA_FORCE_PORTABLE unset); this device runs the portable forward";        \
    }                                                                                            \
  } while (0)

#define PSA_CUDA_CHECK(expr) ASSERT_EQ((expr), cudaSuccess) << cudaGetErrorString(expr)

// An owning device buffer shaped like a HostTensor (contiguous) or with custom strides.
class DeviceTensor {
 public:
  DeviceTensor() = default;
  explicit DeviceTensor(const HostTensor& host);                  // upload, same shape/dtype
  DeviceTensor(DType dtype, const std::vector<int64_t>& shape);   // uninitialised
  ~DeviceTensor();
  DeviceTensor(const DeviceTensor&) = delete;
  DeviceTensor& operator=(const DeviceTensor&) = delete;
  DeviceTensor(DeviceTensor&& other) noexcept;
  DeviceTensor& operator=(DeviceTensor&& other) noexcept;

  TensorView view() const;
  HostTensor download() const;         // synchronous copy back (tests only)
  void poison();                       // 0xFF bytes: NaN in fp16/bf16/fp32, -1 in ints
  void* data() const { return data_; }

 private:
  void* data_ = nullptr;
  DType dtype_ = DType::kFloat32;
  std::vector<int64_t> shape_;
  size_t bytes_ = 0;
};

// A device pyramid and plan of the right shapes.
struct DevicePyramid {
  DeviceTensor k[kNumPooledLevels], v[kNumPooledLevels];
  PyramidView view() const;
};
DevicePyramid make_device_pyramid(int64_t batch, int64_t heads_kv, int64_t seq_k, int64_t head_dim,
                                  DType dtype);
struct DevicePlan {
  DeviceTensor counts, blocks;
  int block_m = 0, block_n = 0;
  int64_t seq_q = 0, seq_k = 0;
  PlanView view() const;
};
DevicePlan make_device_plan(int64_t batch, int64_t heads_q, int64_t seq_q, int64_t seq_k,
                            const Config& config);
DevicePlan upload_plan(const HostPlan& plan);

}  // namespace psa::test
