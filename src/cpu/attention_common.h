// Private helpers of the CPU attention reference (pyramid.cpp, attention.cpp, dense.cpp): strided
// tensors copied to contiguous double, rounding to a storage dtype, the default softmax scale.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "common/half.h"
#include "common/index_math.h"
#include "cpu/cpu_util.h"
#include "psa/tensor.h"

namespace psa::cpu {

// A rank-4 view copied to a contiguous row-major double array of shape (d0, d1, d2, d3). The
// reference reads every input many times; converting once keeps the inner loops free of dtype
// switches and stride arithmetic.
inline std::vector<double> to_dense_double(const TensorView& t) {
  const int64_t d0 = t.shape[0], d1 = t.shape[1], d2 = t.shape[2], d3 = t.shape[3];
  std::vector<double> result(static_cast<size_t>(d0 * d1 * d2 * d3));
  parallel_for(d0 * d1, [&](int64_t slice) {
    const int64_t i0 = slice / d1, i1 = slice % d1;
    double* dst = result.data() + slice * d2 * d3;
    for (int64_t i2 = 0; i2 < d2; ++i2) load_row(dst + i2 * d3, t, i0, i1, i2);
  });
  return result;
}

// Writes row (i0, i1, i2, :) of a rank-4 view from `row` (D doubles), rounding to the view's dtype.
inline void store_row(const TensorView& t, int64_t i0, int64_t i1, int64_t i2, const double* row) {
  const int64_t base = offset_of(t, i0, i1, i2);
  for (int64_t d = 0; d < t.shape[3]; ++d) store(t, base + d * t.stride[3], row[d]);
}

// `value` as it reads back after being stored in `dtype` (float dtypes; others pass through).
inline double round_to_dtype(double value, DType dtype) {
  switch (dtype) {
    case DType::kFloat32: return static_cast<float>(value);
    case DType::kFloat16: return detail::fp16_to_float(detail::float_to_fp16(static_cast<float>(value)));
    case DType::kBFloat16:
      return detail::bf16_to_float(detail::float_to_bf16(static_cast<float>(value)));
    default: return value;
  }
}

// Four partial sums let the additions overlap (a single accumulator serialises them, since the
// compiler may not reorder without -ffast-math); the order is fixed, so results are deterministic.
inline double dot(const double* a, const double* b, int64_t n) {
  double s[4] = {0.0, 0.0, 0.0, 0.0};
  int64_t d = 0;
  for (; d + 4 <= n; d += 4) {
    s[0] += a[d] * b[d];
    s[1] += a[d + 1] * b[d + 1];
    s[2] += a[d + 2] * b[d + 2];
    s[3] += a[d + 3] * b[d + 3];
  }
  for (; d < n; ++d) s[0] += a[d] * b[d];
  return (s[0] + s[1]) + (s[2] + s[3]);
}

// Mean of the real tokens [p*f, min((p+1)*f, L)) of a contiguous (L, D) slice, for every p:
// `pooled` receives (ceil(L/f), D) values (SPEC 2).
void pool_means(double* pooled, const double* tokens, int64_t length, int64_t head_dim,
                int64_t factor);

}  // namespace psa::cpu
