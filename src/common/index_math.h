// Index math shared by the CPU reference and the CUDA kernels (SPEC.md sections 1 to 6), so that
// the two cannot drift: block ranges, pooled ranges and counts, causal visibility, alignment.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define PSA_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define PSA_HOST_DEVICE inline
#endif

namespace psa::detail {

PSA_HOST_DEVICE int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
// ceil(a / b) for a >= 0, b > 0 up to a = INT64_MAX, where a + b - 1 would overflow: for sizes
// that have not been validated yet.
PSA_HOST_DEVICE int64_t ceil_div_unbounded(int64_t a, int64_t b) { return a / b + (a % b != 0); }
PSA_HOST_DEVICE int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
PSA_HOST_DEVICE int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }
PSA_HOST_DEVICE bool is_power_of_two(int64_t x) { return x > 0 && (x & (x - 1)) == 0; }

// softmax_scale, where 0 selects 1/sqrt(D) (SPEC 1).
inline double effective_scale(float softmax_scale, int64_t head_dim) {
  return softmax_scale != 0.0f ? static_cast<double>(softmax_scale)
                               : 1.0 / std::sqrt(static_cast<double>(head_dim));
}

// Number of real rows of block `index` of size `block` in a sequence of `length`.
PSA_HOST_DEVICE int64_t block_rows(int64_t length, int64_t block, int64_t index) {
  return min64(block, length - index * block);
}

// Pooled tokens of factor f over a sequence of length L: ceil(L / f).
PSA_HOST_DEVICE int64_t pooled_length(int64_t length, int64_t factor) {
  return ceil_div(length, factor);
}
// c_p: how many real tokens pooled token p of factor f stands for (f, except possibly the last).
PSA_HOST_DEVICE int64_t pooled_count(int64_t length, int64_t factor, int64_t p) {
  return min64(factor, length - p * factor);
}
// The last real token that pooled token p of factor f covers.
PSA_HOST_DEVICE int64_t pooled_last_token(int64_t length, int64_t factor, int64_t p) {
  return min64((p + 1) * factor, length) - 1;
}
// Pooled tokens of factor f that lie inside key block J: [first, first + count).
// block_n is a multiple of f (both powers of two, block_n >= 8 >= f), so blocks never split a group.
PSA_HOST_DEVICE int64_t block_pooled_first(int64_t block_n, int64_t factor, int64_t block) {
  return block * block_n / factor;
}
PSA_HOST_DEVICE int64_t block_pooled_count(int64_t length, int64_t block_n, int64_t factor,
                                           int64_t block) {
  return ceil_div(block_rows(length, block_n, block), factor);
}

// ---- Causal visibility (bottom-right aligned, as FlashAttention) -----------------------------
// Query i sees key j iff j <= i + (Lk - Lq).
PSA_HOST_DEVICE int64_t causal_shift(int64_t seq_q, int64_t seq_k) { return seq_k - seq_q; }
PSA_HOST_DEVICE bool key_visible(int64_t i, int64_t j, int64_t shift) { return j <= i + shift; }

// Key block J is visible to query block I when at least one of its keys is visible to the last
// (most permissive) query of I.
PSA_HOST_DEVICE bool block_visible(int64_t seq_q, int64_t seq_k, int64_t block_m, int64_t block_n,
                                   int64_t qblock, int64_t kblock) {
  const int64_t last_q = min64((qblock + 1) * block_m, seq_q) - 1;
  return kblock * block_n <= last_q + causal_shift(seq_q, seq_k);
}
// Key block J is wholly visible to query block I when its last key is visible to the first query.
PSA_HOST_DEVICE bool block_fully_visible(int64_t seq_q, int64_t seq_k, int64_t block_m,
                                         int64_t block_n, int64_t qblock, int64_t kblock) {
  const int64_t first_q = qblock * block_m;
  const int64_t last_k = min64((kblock + 1) * block_n, seq_k) - 1;
  return last_k <= first_q + causal_shift(seq_q, seq_k);
}
// A diagonal block is visible but not wholly visible: it crosses the causal boundary and is
// forced to level 1 by the planner (SPEC 5).
PSA_HOST_DEVICE bool block_on_diagonal(int64_t seq_q, int64_t seq_k, int64_t block_m,
                                       int64_t block_n, int64_t qblock, int64_t kblock) {
  return block_visible(seq_q, seq_k, block_m, block_n, qblock, kblock) &&
         !block_fully_visible(seq_q, seq_k, block_m, block_n, qblock, kblock);
}

// ---- Planner alignment (SPEC 5) ----------------------------------------------------------------
// a_f = ceil(f / (block_n / tile_n)); 1 when block_n / tile_n >= f.
PSA_HOST_DEVICE int64_t alignment_of(int64_t factor, int64_t block_n, int64_t tile_n) {
  const int64_t tiles_per_block = block_n / tile_n;
  return ceil_div(factor, tiles_per_block);
}
// The interval [start, end) of a level rounded so that its length is a multiple of `align`:
// rounded up; when that passes `limit` it is clamped to `limit` and rounded down. Returns the end.
PSA_HOST_DEVICE int64_t align_interval_end(int64_t start, int64_t end, int64_t align,
                                           int64_t limit) {
  int64_t count = max64(end - start, 0);
  count = ceil_div(count, align) * align;
  if (start + count > limit) count = ((limit - start) / align) * align;
  return start + max64(count, 0);
}

// Level value (0, 1, 2, 4, 8) <-> index in counts (-, 0, 1, 2, 3).
PSA_HOST_DEVICE int level_index(int level) {
  return level == 1 ? 0 : level == 2 ? 1 : level == 4 ? 2 : level == 8 ? 3 : -1;
}
PSA_HOST_DEVICE int level_factor(int index) { return 1 << index; }
PSA_HOST_DEVICE bool is_valid_level(int level) { return level == 0 || level_index(level) >= 0; }

}  // namespace psa::detail
