#include "cuda/cuda_test_util.h"

#include <utility>

#include "cuda/kernel_path.h"

namespace psa::test {

bool gpu_available() { return cuda_device_usable(nullptr); }

bool hopper_path() {
  cuda::KernelPath path = cuda::KernelPath::kPortable;
  return gpu_available() && cuda::kernel_path(0, &path).ok() && path == cuda::KernelPath::kHopper;
}

namespace {
size_t bytes_of(DType dtype, const std::vector<int64_t>& shape) {
  size_t n = dtype_size(dtype);
  for (int64_t s : shape) n *= static_cast<size_t>(s);
  return n;
}
}  // namespace

DeviceTensor::DeviceTensor(DType dtype, const std::vector<int64_t>& shape)
    : dtype_(dtype), shape_(shape), bytes_(bytes_of(dtype, shape)) {
  if (cudaMalloc(&data_, bytes_ == 0 ? 1 : bytes_) != cudaSuccess) {
    ADD_FAILURE() << "cudaMalloc of " << bytes_ << " bytes failed";
    data_ = nullptr;
  }
}

DeviceTensor::DeviceTensor(const HostTensor& host) : DeviceTensor(host.dtype(), host.shape()) {
  if (data_) {
    const TensorView v = host.view();
    EXPECT_EQ(cudaMemcpy(data_, v.data, bytes_, cudaMemcpyHostToDevice), cudaSuccess);
  }
}

DeviceTensor::~DeviceTensor() {
  if (data_) cudaFree(data_);
}

DeviceTensor::DeviceTensor(DeviceTensor&& other) noexcept { *this = std::move(other); }

DeviceTensor& DeviceTensor::operator=(DeviceTensor&& other) noexcept {
  if (this != &other) {
    if (data_) cudaFree(data_);
    data_ = std::exchange(other.data_, nullptr);
    dtype_ = other.dtype_;
    shape_ = std::move(other.shape_);
    bytes_ = std::exchange(other.bytes_, 0);
  }
  return *this;
}

TensorView DeviceTensor::view() const {
  return make_view(data_, dtype_, static_cast<int>(shape_.size()), shape_.data(), Device::kCuda);
}

HostTensor DeviceTensor::download() const {
  HostTensor host(dtype_, shape_);
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  EXPECT_EQ(cudaMemcpy(host.view().data, data_, bytes_, cudaMemcpyDeviceToHost), cudaSuccess);
  return host;
}

void DeviceTensor::poison() { EXPECT_EQ(cudaMemset(data_, 0xff, bytes_), cudaSuccess); }

PyramidView DevicePyramid::view() const {
  PyramidView p;
  for (int l = 0; l < kNumPooledLevels; ++l) {
    p.k[l] = k[l].view();
    p.v[l] = v[l].view();
  }
  return p;
}

DevicePyramid make_device_pyramid(int64_t batch, int64_t heads_kv, int64_t seq_k, int64_t head_dim,
                                  DType dtype) {
  DevicePyramid p;
  for (int l = 0; l < kNumPooledLevels; ++l) {
    const int64_t f = kLevelFactors[l + 1];
    const int64_t len = (seq_k + f - 1) / f;
    p.k[l] = DeviceTensor(dtype, {batch, heads_kv, len, head_dim});
    p.v[l] = DeviceTensor(dtype, {batch, heads_kv, len, head_dim});
  }
  return p;
}

PlanView DevicePlan::view() const {
  PlanView p;
  p.counts = counts.view();
  p.blocks = blocks.view();
  p.block_m = block_m;
  p.block_n = block_n;
  p.seq_q = seq_q;
  p.seq_k = seq_k;
  return p;
}

DevicePlan make_device_plan(int64_t batch, int64_t heads_q, int64_t seq_q, int64_t seq_k,
                            const Config& config) {
  const PlanShape s = plan_shape(batch, heads_q, seq_q, seq_k, config);
  DevicePlan p;
  p.counts = DeviceTensor(DType::kInt32, {s.batch, s.heads, s.num_q_blocks, kNumLevels});
  p.blocks = DeviceTensor(DType::kInt32, {s.batch, s.heads, s.num_q_blocks, s.num_k_blocks});
  p.block_m = config.block_m;
  p.block_n = config.block_n;
  p.seq_q = seq_q;
  p.seq_k = seq_k;
  return p;
}

DevicePlan upload_plan(const HostPlan& plan) {
  DevicePlan p;
  p.counts = DeviceTensor(plan.counts);
  p.blocks = DeviceTensor(plan.blocks);
  p.block_m = plan.block_m;
  p.block_n = plan.block_n;
  p.seq_q = plan.seq_q;
  p.seq_k = plan.seq_k;
  return p;
}

}  // namespace psa::test
