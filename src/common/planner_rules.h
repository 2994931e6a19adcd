// Per-row rules of the estimator and the planner (SPEC.md sections 4 and 5) shared by the CPU
// reference and the CUDA planner, so that both give the same plan for the same scores. Pure
// functions on plain arrays: no std:: containers, callable on host and device.
#pragma once

#include <cstdint>

#include "common/index_math.h"

namespace psa::detail {

// ---- Estimator (SPEC 4.1) --------------------------------------------------------------------
// Query offsets of query head h are drawn with head index h; key offsets of kv head hkv with head
// index kKeyOffsetStream + hkv, so the two never share a Philox counter stream, and every query
// head of a GQA group sees the same sampled keys. Head counts stay far below 2^20.
constexpr int64_t kKeyOffsetStream = int64_t{1} << 20;
PSA_HOST_DEVICE int64_t key_offset_stream(int64_t head_kv) { return kKeyOffsetStream + head_kv; }

// ---- Sorting a row -----------------------------------------------------------------------------
// The planner sorts visible blocks by score descending, ties to the lower J. A NaN score ranks
// last (as -inf), so that the order stays a strict weak ordering whatever the input.
PSA_HOST_DEVICE float score_rank_key(float score) {
  return score != score ? -__builtin_huge_valf() : score;
}
// True when block (score_a, a) comes before block (score_b, b) in the sorted row.
PSA_HOST_DEVICE bool ranks_before(float score_a, int64_t a, float score_b, int64_t b) {
  const float ka = score_rank_key(score_a), kb = score_rank_key(score_b);
  return ka > kb || (ka == kb && a < b);
}

// ---- Level intervals -------------------------------------------------------------------------
// Both modes fill level_ends[l] (l = 0..3 for factors 1, 2, 4, 8): the sorted positions
// [level_ends[l-1], level_ends[l]) get factor 1 << l; positions from level_ends[3] on are skipped.
// `visible` (V) is the number of blocks the row can see; quotas are fractions of V.

// floor(V * e) for e in [0, 1]; the product is non-negative, so truncation is the floor.
PSA_HOST_DEVICE int64_t floor_fraction(int64_t visible, double fraction) {
  return static_cast<int64_t>(static_cast<double>(visible) * fraction);
}

// topk: level l ends at min(V, floor(V * e_l)), level 1 at least at 1, then aligned to a_f.
// Example: V = 20, ends .1/.15/.15/.35, block_n = tile_n = 32 (a = 1, 2, 4, 8):
// level 1 [0, 2), level 2 [2, 4) (3 rounded up to 4), level 4 empty, level 8 [4, 12).
PSA_HOST_DEVICE void topk_level_ends(int64_t* level_ends, int64_t visible, const double* ends,
                                     int64_t block_n, int64_t tile_n) {
  int64_t start = 0;
  for (int l = 0; l < 4; ++l) {
    int64_t end = min64(visible, floor_fraction(visible, ends[l]));
    if (l == 0) end = max64(end, 1);
    end = align_interval_end(start, end, alignment_of(int64_t{1} << l, block_n, tile_n), visible);
    level_ends[l] = end;
    start = end;
  }
}

// thresholdbound, part 1: crossing[l] = #{k in 1..V : E_k <= e_l + kThresholdSlack}, where E_k is
// the sum of the k best scores divided by the row total. `sorted` holds the V visible scores in
// sorted order. Sums run sequentially in double in sorted order, so E_V is exactly 1; a backend
// that wants the same plan must sum in the same order. A row whose total is not a positive finite
// number (all zero, say) carries no ranking information and is treated as uniform, E_k = k / V:
// the limit of a row of equal tiny scores, so the plan does not jump at zero.
constexpr double kThresholdSlack = 1e-6;
constexpr double kMaxFiniteDouble = 1.7976931348623157e308;
PSA_HOST_DEVICE void threshold_crossings(int64_t* crossing, const float* sorted, int64_t visible,
                                         const double* ends) {
  double total = 0.0;
  for (int64_t k = 0; k < visible; ++k) total += static_cast<double>(sorted[k]);
  const bool uniform = !(total > 0.0 && total <= kMaxFiniteDouble);
  for (int l = 0; l < 4; ++l) crossing[l] = 0;
  double cumulative = 0.0;
  for (int64_t k = 0; k < visible; ++k) {
    cumulative += static_cast<double>(sorted[k]);
    const double e_k =
        uniform ? static_cast<double>(k + 1) / static_cast<double>(visible) : cumulative / total;
    for (int l = 0; l < 4; ++l) crossing[l] += (e_k <= ends[l] + kThresholdSlack) ? 1 : 0;
  }
}

// thresholdbound, part 2: level l ends at crossing[l] + 1 (the block that crosses the threshold is
// included) or, with no crossing, at the previous end; level 1 at least at
// min(V, floor(V * min_full_ratio) + 1); then aligned when a_f > 1, else clamped to [start, V].
// Example: sorted row .4 .3 .2 .1, ends .5/.75/.75/.95, min_full_ratio .06, a = 1:
// E = .4 .7 .9 1 -> crossings 1, 2, 2, 3 -> level 1 [0, 2), level 2 [2, 3), level 8 [3, 4).
PSA_HOST_DEVICE void thresholdbound_level_ends(int64_t* level_ends, const int64_t* crossing,
                                               int64_t visible, double min_full_ratio,
                                               int64_t block_n, int64_t tile_n) {
  int64_t start = 0;
  for (int l = 0; l < 4; ++l) {
    int64_t end = crossing[l] > 0 ? crossing[l] + 1 : start;
    end = min64(end, visible);
    if (l == 0) end = max64(end, min64(visible, floor_fraction(visible, min_full_ratio) + 1));
    const int64_t align = alignment_of(int64_t{1} << l, block_n, tile_n);
    end = align > 1 ? align_interval_end(start, end, align, visible)
                    : min64(max64(end, start), visible);
    level_ends[l] = end;
    start = end;
  }
}

// Factor of sorted position p given the interval ends (0 = skipped).
PSA_HOST_DEVICE int level_of_position(const int64_t* level_ends, int64_t position) {
  for (int l = 0; l < 4; ++l) {
    if (position < level_ends[l]) return 1 << l;
  }
  return 0;
}

// ---- Forced blocks ---------------------------------------------------------------------------
// Block `index` of `block` tokens holds a text token: text is the first or the last `text_len` of
// the `length` tokens (clamped to the length). The rule serves key blocks (Lk, block_n) and query
// blocks (Lq, block_m). Example: Lk = 100, block_n = 32, text_len = 40 at the end: tokens
// [60, 100), blocks 1, 2, 3.
PSA_HOST_DEVICE bool block_holds_text(int64_t length, int64_t block, int64_t text_len,
                                      bool text_at_end, int64_t index) {
  const int64_t text = min64(text_len, length);
  if (text <= 0) return false;
  const int64_t first = index * block;
  const int64_t last = min64(first + block, length) - 1;
  return text_at_end ? last >= length - text : first < text;
}

// What forces a visible block to level 1 in every planned row (SPEC 5), the row's best block aside.
struct ForcedBlocks {
  int64_t seq_q = 0, seq_k = 0, block_m = 0, block_n = 0;
  int64_t text_len = 0;
  bool text_at_end = true;
  bool causal = false;
  bool keep_first_block = false;
};

// Visible key block J of query block I is level 1 when J holds a text token (text is attended at
// full resolution), I holds a text token (text attends at full resolution: every block the row
// sees), J crosses the causal diagonal, or J = 0 under keep_first_block. Example: Lq = Lk = 700,
// block_m = 128, block_n = 64, causal, text_len = 32 at the end: query block 5 (rows 640..699)
// holds text, so its 11 visible blocks are all level 1; key block 10 (keys 640..699) is level 1
// in row 5 too, the only row that sees it.
PSA_HOST_DEVICE bool block_forced_full(const ForcedBlocks& f, int64_t qblock, int64_t kblock) {
  return block_holds_text(f.seq_k, f.block_n, f.text_len, f.text_at_end, kblock) ||
         block_holds_text(f.seq_q, f.block_m, f.text_len, f.text_at_end, qblock) ||
         (f.causal && block_on_diagonal(f.seq_q, f.seq_k, f.block_m, f.block_n, qblock, kblock)) ||
         (f.keep_first_block && kblock == 0);
}

// ---- Similarity cap --------------------------------------------------------------------------
// cap_J = max(1, 2*[sim2 > t2], 4*[sim4 > t4], 8*[sim8 > t8]); thresholds (t2, t4, t8).
PSA_HOST_DEVICE int similarity_cap_level(const double* sims, const float* thresholds) {
  int cap = 1;
  for (int i = 0; i < 3; ++i) {
    if (sims[i] > static_cast<double>(thresholds[i])) cap = 2 << i;
  }
  return cap;
}
// A kept block's level becomes min(level, cap); skipped stays skipped.
PSA_HOST_DEVICE int apply_cap(int level, int cap) { return level > cap ? cap : level; }

}  // namespace psa::detail
