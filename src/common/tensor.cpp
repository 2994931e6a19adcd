#include "psa/tensor.h"

#include "common/format.h"

#include <utility>

namespace psa {

size_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::kFloat32: return 4;
    case DType::kFloat16: return 2;
    case DType::kBFloat16: return 2;
    case DType::kFloat64: return 8;
    case DType::kInt32: return 4;
    case DType::kInt64: return 8;
    case DType::kUInt8: return 1;
  }
  return 0;
}

const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::kFloat32: return "float32";
    case DType::kFloat16: return "float16";
    case DType::kBFloat16: return "bfloat16";
    case DType::kFloat64: return "float64";
    case DType::kInt32: return "int32";
    case DType::kInt64: return "int64";
    case DType::kUInt8: return "uint8";
  }
  return "unknown";
}

const char* device_name(Device device) {
  switch (device) {
    case Device::kCpu: return "cpu";
    case Device::kCuda: return "cuda";
  }
  return "unknown";
}

bool is_floating(DType dtype) {
  return dtype == DType::kFloat32 || dtype == DType::kFloat16 || dtype == DType::kBFloat16 ||
         dtype == DType::kFloat64;
}

namespace {
bool valid_rank(int rank) { return rank >= 0 && rank <= kMaxRank; }
}  // namespace

int64_t numel(const TensorView& t) {
  if (!valid_rank(t.rank)) return -1;
  int64_t n = 1;
  for (int d = 0; d < t.rank; ++d) {
    if (t.shape[d] < 0 || __builtin_mul_overflow(n, t.shape[d], &n)) return -1;
  }
  return n;
}

bool is_contiguous(const TensorView& t) {
  const int64_t n = numel(t);
  if (n < 0) return false;
  if (n == 0) return true;  // no element to place (torch.Tensor.is_contiguous says the same)
  int64_t expected = 1;
  for (int d = t.rank - 1; d >= 0; --d) {
    if (t.shape[d] != 1 && t.stride[d] != expected) return false;
    expected *= t.shape[d];  // a partial product of numel(t), which did not overflow
  }
  return true;
}

std::string shape_string(const TensorView& t) {
  if (!valid_rank(t.rank)) {
    return "(rank " + std::to_string(t.rank) + ": not in [0, " + std::to_string(kMaxRank) + "])";
  }
  return detail::format_dims(t.shape, t.rank);
}

TensorView make_view(void* data, DType dtype, int rank, const int64_t* shape, Device device,
                     int device_index) {
  TensorView t;
  t.data = data;
  t.dtype = dtype;
  t.device = device;
  t.device_index = device_index;
  t.rank = rank;
  if (!valid_rank(rank)) return t;
  int64_t stride = 1;
  for (int d = rank - 1; d >= 0; --d) {
    t.shape[d] = shape[d];
    t.stride[d] = stride;
    // Wraps only for shapes whose element count overflows, which every function rejects.
    stride = static_cast<int64_t>(static_cast<uint64_t>(stride) * static_cast<uint64_t>(shape[d]));
  }
  return t;
}

TensorView make_view(void* data, DType dtype, std::initializer_list<int64_t> shape, Device device,
                     int device_index) {
  return make_view(data, dtype, static_cast<int>(shape.size()), shape.begin(), device,
                   device_index);
}

TensorView transpose_view(TensorView t, int a, int b) {
  std::swap(t.shape[a], t.shape[b]);
  std::swap(t.stride[a], t.stride[b]);
  return t;
}

}  // namespace psa
