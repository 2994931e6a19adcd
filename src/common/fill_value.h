// The bit pattern of one element holding a given value, for the outputs the library writes
// without computing them: an empty problem's O = 0, LSE = -inf and zero gradients. Shared by the
// CPU fill and the CUDA fill's launcher, so that both store the same bits.
#pragma once

#include <cstdint>
#include <cstring>

#include "common/half.h"
#include "psa/tensor.h"

namespace psa::detail {

// `value` rounded to `dtype` (fp16 and bf16 to nearest even) as the low bytes of the result.
inline uint64_t element_bits(DType dtype, double value) {
  switch (dtype) {
    case DType::kFloat32: {
      const float f = static_cast<float>(value);
      uint32_t bits = 0;
      std::memcpy(&bits, &f, sizeof bits);
      return bits;
    }
    case DType::kFloat64: {
      uint64_t bits = 0;
      std::memcpy(&bits, &value, sizeof bits);
      return bits;
    }
    case DType::kFloat16: return float_to_fp16(static_cast<float>(value));
    case DType::kBFloat16: return float_to_bf16(static_cast<float>(value));
    case DType::kInt32: return static_cast<uint32_t>(static_cast<int32_t>(value));
    case DType::kInt64: return static_cast<uint64_t>(static_cast<int64_t>(value));
    case DType::kUInt8: return static_cast<uint8_t>(value);
  }
  return 0;
}

}  // namespace psa::detail
