// The CPU fill: every element of a view of any strides set to one value (common/fill_value.h).
#include <cstdint>
#include <cstring>

#include "common/fill_value.h"
#include "cpu/cpu_backend.h"

namespace psa::cpu {

namespace {

template <typename Bits>
void fill_elements(const TensorView& t, Bits bits) {
  // The view as rank 4: leading dimensions of one element.
  int64_t shape[kMaxRank], stride[kMaxRank];
  const int pad = kMaxRank - t.rank;
  for (int d = 0; d < kMaxRank; ++d) {
    shape[d] = d < pad ? 1 : t.shape[d - pad];
    stride[d] = d < pad ? 0 : t.stride[d - pad];
  }
  auto* base = static_cast<Bits*>(t.data);
  for (int64_t i0 = 0; i0 < shape[0]; ++i0) {
    for (int64_t i1 = 0; i1 < shape[1]; ++i1) {
      for (int64_t i2 = 0; i2 < shape[2]; ++i2) {
        Bits* row = base + i0 * stride[0] + i1 * stride[1] + i2 * stride[2];
        for (int64_t i3 = 0; i3 < shape[3]; ++i3) row[i3 * stride[3]] = bits;
      }
    }
  }
}

}  // namespace

Status fill(TensorView t, double value) {
  if (numel(t) <= 0) return Status();
  const uint64_t bits = detail::element_bits(t.dtype, value);
  switch (dtype_size(t.dtype)) {
    case 1: fill_elements<uint8_t>(t, static_cast<uint8_t>(bits)); break;
    case 2: fill_elements<uint16_t>(t, static_cast<uint16_t>(bits)); break;
    case 4: fill_elements<uint32_t>(t, static_cast<uint32_t>(bits)); break;
    case 8: fill_elements<uint64_t>(t, bits); break;
    default: return invalid_argument("fill: unknown dtype");
  }
  return Status();
}

}  // namespace psa::cpu
