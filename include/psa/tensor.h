// Framework-free tensor descriptors: a pointer, a dtype, a device, a shape and strides (in elements).
// psa never owns the memory a TensorView points to.
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <string>

namespace psa {

enum class DType : uint8_t { kFloat32, kFloat16, kBFloat16, kFloat64, kInt32, kInt64, kUInt8 };
enum class Device : uint8_t { kCpu, kCuda };

constexpr int kMaxRank = 4;

struct TensorView {
  void* data = nullptr;
  DType dtype = DType::kFloat32;
  Device device = Device::kCpu;
  int device_index = 0;
  int rank = 0;
  int64_t shape[kMaxRank] = {};
  int64_t stride[kMaxRank] = {};  // in elements, may be any non-negative value

  bool empty() const { return data == nullptr && rank == 0; }
  int64_t size(int dim) const { return shape[dim]; }
};

// A CUDA stream as an opaque handle (cudaStream_t), so that public headers need no CUDA headers.
using Stream = void*;

size_t dtype_size(DType dtype);
const char* dtype_name(DType dtype);
const char* device_name(Device device);
bool is_floating(DType dtype);

// The number of elements; -1 when the view is malformed (rank outside [0, kMaxRank], a negative
// dimension) or the count overflows int64.
int64_t numel(const TensorView& t);
// Row-major without gaps (always, for a view without elements); false for a malformed view.
bool is_contiguous(const TensorView& t);
// "(2, 8, 4096, 128)"; "(rank 12: not in [0, 4])" for a rank no view can have.
std::string shape_string(const TensorView& t);

// A row-major (contiguous) view of `data` with the given shape. A rank outside [0, kMaxRank] gives
// a view of that rank with no dimensions filled in, which every function rejects by name.
TensorView make_view(void* data, DType dtype, std::initializer_list<int64_t> shape,
                     Device device = Device::kCpu, int device_index = 0);
TensorView make_view(void* data, DType dtype, int rank, const int64_t* shape,
                     Device device = Device::kCpu, int device_index = 0);

// The same memory with dims `a` and `b` swapped (no copy): (B, L, H, D) <-> (B, H, L, D).
TensorView transpose_view(TensorView t, int a, int b);

}  // namespace psa
