// The configuration of Pyramid Sparse Attention (SPEC.md sections 1 to 5).
#pragma once

#include <array>
#include <cstdint>

#include "psa/status.h"

namespace psa {

// Pool factors of the pyramid levels that a plan can give a key block. Level 0 means "skipped".
constexpr int kNumLevels = 4;
constexpr std::array<int, kNumLevels> kLevelFactors = {1, 2, 4, 8};
// Pyramid levels that hold pooled tokens (factor 2, 4, 8); level 1 is the input itself.
constexpr int kNumPooledLevels = 3;

enum class PlanMode : uint8_t { kTopK, kThresholdBound };
enum class TextPosition : uint8_t { kStart, kEnd };

const char* plan_mode_name(PlanMode mode);
const char* text_position_name(TextPosition position);

struct Config {
  // Query rows per query block and key rows per key block (powers of two).
  int block_m = 128;
  int block_n = 64;
  // Granularity of the original kernel's tile merging; only used by the alignment rule (SPEC 5).
  int tile_n = 32;

  PlanMode mode = PlanMode::kTopK;
  // Cumulative interval ends for levels 1, 2, 4, 8 (e1 <= e2 <= e4 <= e8 <= 1). A level with an
  // empty interval (its end equal to the previous end) is absent. The rest of a row is skipped.
  // Kept in double so that floor(Nk * e) matches the original's Python arithmetic.
  std::array<double, kNumLevels> ends = {0.10, 0.15, 0.15, 0.35};
  // thresholdbound: level 1 ends at least at min(Nk, floor(Nk * min_full_ratio) + 1).
  double min_full_ratio = 0.06;

  // Estimator samples per block; 0 selects the default: 16 per query block and 8 per key block
  // (fewer when a block is smaller), measured in docs/decisions.md.
  int samples_m = 0;
  int samples_n = 0;
  uint64_t seed = 0;
  // Global index of this call's first query head, for a call that holds a slice of a larger head
  // set (sequence parallelism after an all-to-all): the estimator draws the samples of query head
  // h as head h + head_offset and those of its keys as kv head (h + head_offset) / (Hq / Hkv), so
  // every slice gets exactly the plan of a call over all heads.
  int64_t head_offset = 0;

  // Text tokens kept at full resolution: every key block holding one is level 1 in every row.
  int64_t text_len = 0;
  TextPosition text_position = TextPosition::kEnd;

  // Similarity cap (SPEC 5): a kept block's level becomes min(level, cap_J).
  bool sim_cap = false;
  std::array<float, 3> sim_thresholds = {0.7f, 0.65f, 0.6f};  // for pool factors 2, 4, 8

  // Causal with bottom-right alignment: query i sees key j iff j <= i + (Lk - Lq).
  bool causal = false;
  // Force key block 0 to level 1 in every row (attention sink).
  bool keep_first_block = false;

  // 0 selects 1/sqrt(head_dim).
  float softmax_scale = 0.0f;

  // Backward only: bitwise reproducible gradients (dK and dV accumulated across query blocks in a
  // fixed order). false allows an order-dependent accumulation that is faster; the gradients then
  // differ between runs by fp32 rounding.
  bool deterministic = true;

  int effective_samples_m() const { return samples_m > 0 ? samples_m : (block_m < 16 ? block_m : 16); }
  int effective_samples_n() const { return samples_n > 0 ? samples_n : (block_n < 8 ? block_n : 8); }
};

// Checks every field: block sizes powers of two in [16, 256], tile_n <= block_n, ends
// non-decreasing in [0, 1], sample counts in [1, block], thresholds in [-1, 1], text_len >= 0, ...
Status validate_config(const Config& config);

// FLOP density that a topk config gives on a row of `num_k_blocks` blocks (alignment included),
// the figure quoted for a preset on a given shape. Fails for an invalid config or num_k_blocks < 1.
Status topk_row_density(double* density, const Config& config, int64_t num_k_blocks);

}  // namespace psa
