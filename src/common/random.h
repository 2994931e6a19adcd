// Counter-based random numbers (Philox4x32-10) shared by host and device, so that the estimator's
// sampled offsets are the same on every backend and never touch a global RNG (SPEC 4.1).
#pragma once

#include <cstdint>

#include "common/index_math.h"

namespace psa::detail {

struct Philox4x32 {
  uint32_t v[4];
};

// One Philox4x32-10 block for a 128-bit counter and a 64-bit key.
PSA_HOST_DEVICE Philox4x32 philox4x32(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3,
                                      uint32_t k0, uint32_t k1) {
  constexpr uint32_t kMul0 = 0xD2511F53u, kMul1 = 0xCD9E8D57u;
  constexpr uint32_t kWeyl0 = 0x9E3779B9u, kWeyl1 = 0xBB67AE85u;
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = static_cast<uint64_t>(kMul0) * c0;
    const uint64_t p1 = static_cast<uint64_t>(kMul1) * c2;
    const uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
    const uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
    const uint32_t n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
    c0 = n0; c1 = lo1; c2 = n2; c3 = lo0;
    k0 += kWeyl0; k1 += kWeyl1;
  }
  return {{c0, c1, c2, c3}};
}

// Draw i of (seed, batch, head): the first word of Philox block (i, batch, head, 0). Draws are
// independent of each other, so a CTA can compute them in parallel.
PSA_HOST_DEVICE uint32_t offset_draw(uint64_t seed, int64_t batch, int64_t head, int i) {
  const uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  return philox4x32(static_cast<uint32_t>(i), static_cast<uint32_t>(batch),
                    static_cast<uint32_t>(head), 0u, k0, k1)
      .v[0];
}

// Turns `count` draws into distinct offsets in [0, block) by a partial Fisher-Yates shuffle of
// `pool` (block entries of scratch). Uniform index by multiply-shift: e.g. draw 0x80000000, 64
// remaining -> (0x80000000 * 64) >> 32 = 32.
PSA_HOST_DEVICE void shuffle_offsets(int32_t* offsets, int32_t* pool, const uint32_t* draws,
                                     int block, int count) {
  for (int j = 0; j < block; ++j) pool[j] = j;
  for (int i = 0; i < count; ++i) {
    const uint32_t remaining = static_cast<uint32_t>(block - i);
    const int j = i + static_cast<int>((static_cast<uint64_t>(draws[i]) * remaining) >> 32);
    const int32_t tmp = pool[i];
    pool[i] = pool[j];
    pool[j] = tmp;
    offsets[i] = pool[i];
  }
}

// Draws `count` distinct offsets in [0, block) for (seed, batch, head): draws 0..count-1, then
// the shuffle. block <= 256 (validate_config): the pool and the draws fit on the stack.
PSA_HOST_DEVICE void sample_offsets(int32_t* offsets, uint64_t seed, int64_t batch, int64_t head,
                                    int block, int count) {
  int32_t pool[256];
  uint32_t draws[256];
  for (int i = 0; i < count; ++i) draws[i] = offset_draw(seed, batch, head, i);
  shuffle_offsets(offsets, pool, draws, block, count);
}

}  // namespace psa::detail
