// Small helpers of the CPU reference: strided element access in any dtype, and a parallel loop.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#include "common/half.h"
#include "psa/tensor.h"

namespace psa::cpu {

// Element offset of (i0, i1, i2, i3) in a rank-4 view (fewer indices for lower ranks).
inline int64_t offset_of(const TensorView& t, int64_t i0, int64_t i1 = 0, int64_t i2 = 0,
                         int64_t i3 = 0) {
  return i0 * t.stride[0] + i1 * t.stride[1] + i2 * t.stride[2] + i3 * t.stride[3];
}

inline double load(const TensorView& t, int64_t offset) {
  switch (t.dtype) {
    case DType::kFloat32: return static_cast<const float*>(t.data)[offset];
    case DType::kFloat16: return detail::fp16_to_float(static_cast<const uint16_t*>(t.data)[offset]);
    case DType::kBFloat16: return detail::bf16_to_float(static_cast<const uint16_t*>(t.data)[offset]);
    case DType::kFloat64: return static_cast<const double*>(t.data)[offset];
    case DType::kInt32: return static_cast<const int32_t*>(t.data)[offset];
    case DType::kInt64: return static_cast<double>(static_cast<const int64_t*>(t.data)[offset]);
    case DType::kUInt8: return static_cast<const uint8_t*>(t.data)[offset];
  }
  return 0.0;
}

inline void store(const TensorView& t, int64_t offset, double value) {
  switch (t.dtype) {
    case DType::kFloat32: static_cast<float*>(t.data)[offset] = static_cast<float>(value); break;
    case DType::kFloat16:
      static_cast<uint16_t*>(t.data)[offset] = detail::float_to_fp16(static_cast<float>(value));
      break;
    case DType::kBFloat16:
      static_cast<uint16_t*>(t.data)[offset] = detail::float_to_bf16(static_cast<float>(value));
      break;
    case DType::kFloat64: static_cast<double*>(t.data)[offset] = value; break;
    case DType::kInt32: static_cast<int32_t*>(t.data)[offset] = static_cast<int32_t>(value); break;
    case DType::kInt64: static_cast<int64_t*>(t.data)[offset] = static_cast<int64_t>(value); break;
    case DType::kUInt8: static_cast<uint8_t*>(t.data)[offset] = static_cast<uint8_t>(value); break;
  }
}

// Copies row (i0, i1, i2, :) of a rank-4 view into `row` (D values) as double.
inline void load_row(double* row, const TensorView& t, int64_t i0, int64_t i1, int64_t i2) {
  const int64_t base = offset_of(t, i0, i1, i2);
  for (int64_t d = 0; d < t.shape[3]; ++d) row[d] = load(t, base + d * t.stride[3]);
}

// Runs fn(i) for i in [0, n) on up to hardware_concurrency threads (dynamic scheduling).
// fn must be safe to call concurrently for distinct i. An exception thrown by fn (a failed
// allocation) stops the remaining work and is rethrown here, in the caller's thread, where the
// API turns it into a Status; escaping a worker thread it would terminate the process.
template <typename Fn>
void parallel_for(int64_t n, Fn&& fn) {
  const int64_t workers =
      std::min<int64_t>(n, std::max(1u, std::thread::hardware_concurrency()));
  if (workers <= 1) {
    for (int64_t i = 0; i < n; ++i) fn(i);
    return;
  }
  std::atomic<int64_t> next{0};
  std::mutex error_mutex;
  std::exception_ptr error;
  auto fail = [&](std::exception_ptr e) {
    next.store(n);
    const std::lock_guard<std::mutex> lock(error_mutex);
    if (!error) error = e;
  };
  std::vector<std::thread> threads;
  threads.reserve(static_cast<size_t>(workers));
  for (int64_t w = 0; w < workers; ++w) {
    try {
      threads.emplace_back([&] {
        try {
          for (int64_t i = next.fetch_add(1); i < n; i = next.fetch_add(1)) fn(i);
        } catch (...) {
          fail(std::current_exception());
        }
      });
    } catch (...) {  // no thread could be started: the ones running finish the work
      if (threads.empty()) fail(std::current_exception());
      break;
    }
  }
  for (auto& t : threads) t.join();
  if (error) std::rethrow_exception(error);
}

}  // namespace psa::cpu
