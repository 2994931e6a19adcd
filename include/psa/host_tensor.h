// A small owning host tensor for tools, tests and benchmarks (the library itself never allocates
// caller-visible memory). Contiguous, row-major.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <vector>

#include "psa/ops.h"
#include "psa/plan.h"
#include "psa/tensor.h"

namespace psa {

class HostTensor {
 public:
  HostTensor() = default;
  // Zero-filled. Like std::vector, these throw: std::length_error when a dimension is negative or
  // the size in bytes overflows int64, std::bad_alloc when the memory cannot be had. allocate()
  // returns the same failures as a Status instead.
  HostTensor(DType dtype, std::initializer_list<int64_t> shape);
  HostTensor(DType dtype, const std::vector<int64_t>& shape);
  static Status allocate(HostTensor* tensor, DType dtype, const std::vector<int64_t>& shape);

  TensorView view() const;  // a view of the owned memory (mutable through data)
  template <typename T> T* data() { return reinterpret_cast<T*>(bytes_.data()); }
  template <typename T> const T* data() const { return reinterpret_cast<const T*>(bytes_.data()); }
  DType dtype() const { return dtype_; }
  const std::vector<int64_t>& shape() const { return shape_; }
  int64_t numel() const;
  bool defined() const { return !shape_.empty(); }

  // Element access converting to/from double, for any floating or integer dtype.
  double get(int64_t flat_index) const;
  void set(int64_t flat_index, double value);
  void fill(double value);

 private:
  DType dtype_ = DType::kFloat32;
  std::vector<int64_t> shape_;
  std::vector<unsigned char> bytes_;
};

// Copies any view (any strides, any floating dtype) into a new contiguous host tensor of `dtype`.
HostTensor to_host(const TensorView& view, DType dtype);

// Pyramid and plan storage of the right shapes for a problem, owned on the host.
struct HostPyramid {
  HostTensor k[kNumPooledLevels], v[kNumPooledLevels];
  PyramidView view() const;
};
HostPyramid make_host_pyramid(int64_t batch, int64_t heads_kv, int64_t seq_k, int64_t head_dim,
                              DType dtype);

struct HostPlan {
  HostTensor counts, blocks;
  int block_m = 0, block_n = 0;
  int64_t seq_q = 0, seq_k = 0;
  PlanView view() const;
};
HostPlan make_host_plan(int64_t batch, int64_t heads_q, int64_t seq_q, int64_t seq_k,
                        const Config& config);

}  // namespace psa
