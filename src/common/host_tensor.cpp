#include "psa/host_tensor.h"

#include <cstring>
#include <new>
#include <stdexcept>
#include <string>
#include <utility>

#include "common/format.h"
#include "common/half.h"
#include "common/index_math.h"

namespace psa {

namespace {

std::string describe(DType dtype, const std::vector<int64_t>& shape) {
  return "HostTensor " + detail::format_dims(shape.data(), static_cast<int>(shape.size())) + " " +
         dtype_name(dtype);
}

// The size in bytes of a tensor of `shape`, checked: no negative dimension, no overflow.
Status byte_count(int64_t* bytes, DType dtype, const std::vector<int64_t>& shape) {
  const int64_t element = static_cast<int64_t>(dtype_size(dtype));
  if (element == 0) {
    return invalid_argument("HostTensor: unknown dtype code " +
                            std::to_string(static_cast<int>(dtype)));
  }
  int64_t n = 1;
  for (size_t d = 0; d < shape.size(); ++d) {
    if (shape[d] < 0) {
      return invalid_argument(describe(dtype, shape) + ": dimension " + std::to_string(d) +
                              " must be >= 0, got " + std::to_string(shape[d]));
    }
    if (__builtin_mul_overflow(n, shape[d], &n) || __builtin_mul_overflow(n, element, bytes)) {
      return invalid_argument(describe(dtype, shape) + ": its size in bytes overflows int64");
    }
  }
  *bytes = n * element;
  return Status();
}

}  // namespace

HostTensor::HostTensor(DType dtype, std::initializer_list<int64_t> shape)
    : HostTensor(dtype, std::vector<int64_t>(shape)) {}

HostTensor::HostTensor(DType dtype, const std::vector<int64_t>& shape)
    : dtype_(dtype), shape_(shape) {
  int64_t bytes = 0;
  const Status status = byte_count(&bytes, dtype, shape);
  if (!status.ok()) throw std::length_error(status.message());
  bytes_.assign(static_cast<size_t>(bytes), 0);
}

Status HostTensor::allocate(HostTensor* tensor, DType dtype, const std::vector<int64_t>& shape) {
  if (tensor == nullptr) return invalid_argument("HostTensor::allocate: tensor must not be null");
  int64_t bytes = 0;
  PSA_RETURN_IF_ERROR(byte_count(&bytes, dtype, shape));
  try {
    HostTensor t;
    t.dtype_ = dtype;
    t.shape_ = shape;
    t.bytes_.assign(static_cast<size_t>(bytes), 0);
    *tensor = std::move(t);
  } catch (const std::bad_alloc&) {
    return Status(StatusCode::kOutOfMemory, describe(dtype, shape) + " needs " +
                                                std::to_string(bytes) +
                                                " bytes: more host memory than is available");
  } catch (const std::length_error&) {
    return Status(StatusCode::kOutOfMemory, describe(dtype, shape) + " needs " +
                                                std::to_string(bytes) +
                                                " bytes: more than one host allocation can hold");
  }
  return Status();
}

int64_t HostTensor::numel() const {
  int64_t n = 1;
  for (int64_t s : shape_) n *= s;
  return shape_.empty() ? 0 : n;
}

TensorView HostTensor::view() const {
  return make_view(const_cast<unsigned char*>(bytes_.data()), dtype_,
                   static_cast<int>(shape_.size()), shape_.data());
}

namespace {

double load_element(const void* base, DType dtype, int64_t index) {
  switch (dtype) {
    case DType::kFloat32: return static_cast<const float*>(base)[index];
    case DType::kFloat16: return detail::fp16_to_float(static_cast<const uint16_t*>(base)[index]);
    case DType::kBFloat16: return detail::bf16_to_float(static_cast<const uint16_t*>(base)[index]);
    case DType::kFloat64: return static_cast<const double*>(base)[index];
    case DType::kInt32: return static_cast<const int32_t*>(base)[index];
    case DType::kInt64: return static_cast<double>(static_cast<const int64_t*>(base)[index]);
    case DType::kUInt8: return static_cast<const uint8_t*>(base)[index];
  }
  return 0.0;
}

void store_element(void* base, DType dtype, int64_t index, double value) {
  switch (dtype) {
    case DType::kFloat32: static_cast<float*>(base)[index] = static_cast<float>(value); break;
    case DType::kFloat16:
      static_cast<uint16_t*>(base)[index] = detail::float_to_fp16(static_cast<float>(value));
      break;
    case DType::kBFloat16:
      static_cast<uint16_t*>(base)[index] = detail::float_to_bf16(static_cast<float>(value));
      break;
    case DType::kFloat64: static_cast<double*>(base)[index] = value; break;
    case DType::kInt32: static_cast<int32_t*>(base)[index] = static_cast<int32_t>(value); break;
    case DType::kInt64: static_cast<int64_t*>(base)[index] = static_cast<int64_t>(value); break;
    case DType::kUInt8: static_cast<uint8_t*>(base)[index] = static_cast<uint8_t>(value); break;
  }
}

}  // namespace

double HostTensor::get(int64_t flat_index) const {
  return load_element(bytes_.data(), dtype_, flat_index);
}
void HostTensor::set(int64_t flat_index, double value) {
  store_element(bytes_.data(), dtype_, flat_index, value);
}
void HostTensor::fill(double value) {
  const int64_t n = numel();
  for (int64_t i = 0; i < n; ++i) set(i, value);
}

HostTensor to_host(const TensorView& view, DType dtype) {
  std::vector<int64_t> shape(view.shape, view.shape + view.rank);
  HostTensor result(dtype, shape);
  const int64_t n = result.numel();
  int64_t index[kMaxRank] = {};
  for (int64_t flat = 0; flat < n; ++flat) {
    int64_t offset = 0;
    for (int d = 0; d < view.rank; ++d) offset += index[d] * view.stride[d];
    result.set(flat, load_element(view.data, view.dtype, offset));
    for (int d = view.rank - 1; d >= 0; --d) {
      if (++index[d] < view.shape[d]) break;
      index[d] = 0;
    }
  }
  return result;
}

PyramidView HostPyramid::view() const {
  PyramidView p;
  for (int l = 0; l < kNumPooledLevels; ++l) {
    p.k[l] = k[l].view();
    p.v[l] = v[l].view();
  }
  return p;
}

HostPyramid make_host_pyramid(int64_t batch, int64_t heads_kv, int64_t seq_k, int64_t head_dim,
                              DType dtype) {
  HostPyramid p;
  for (int l = 0; l < kNumPooledLevels; ++l) {
    const int64_t len = detail::pooled_length(seq_k, kLevelFactors[l + 1]);
    p.k[l] = HostTensor(dtype, {batch, heads_kv, len, head_dim});
    p.v[l] = HostTensor(dtype, {batch, heads_kv, len, head_dim});
  }
  return p;
}

PlanView HostPlan::view() const {
  PlanView p;
  p.counts = counts.view();
  p.blocks = blocks.view();
  p.block_m = block_m;
  p.block_n = block_n;
  p.seq_q = seq_q;
  p.seq_k = seq_k;
  return p;
}

HostPlan make_host_plan(int64_t batch, int64_t heads_q, int64_t seq_q, int64_t seq_k,
                        const Config& config) {
  const PlanShape s = plan_shape(batch, heads_q, seq_q, seq_k, config);
  HostPlan p;
  p.counts = HostTensor(DType::kInt32, {s.batch, s.heads, s.num_q_blocks, kNumLevels});
  p.blocks = HostTensor(DType::kInt32, {s.batch, s.heads, s.num_q_blocks, s.num_k_blocks});
  p.block_m = config.block_m;
  p.block_n = config.block_n;
  p.seq_q = seq_q;
  p.seq_k = seq_k;
  return p;
}

}  // namespace psa
