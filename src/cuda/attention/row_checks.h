// Layout rules shared by the attention launchers (forward and backward): the kernels copy rows as
// 16-byte chunks, so a tensor they gather from or write rows to needs unit stride on D and every
// other stride a multiple of 8 elements from a 16-byte aligned base.
#pragma once

#include <cstdint>
#include <string>

#include "psa/status.h"
#include "psa/tensor.h"

namespace psa::cuda {

// cp.async moves 16-byte chunks: 8 elements of 16 bits.
constexpr int64_t kChunkElements = 8;

// kUnsupported naming `name` and the offending stride when `t` breaks the rule above.
Status check_rows_aligned(const TensorView& t, const std::string& name);

// Smallest l with 2^l >= x (x a power of two: its log2).
int log2_int(int x);

}  // namespace psa::cuda
