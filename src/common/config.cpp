#include <cmath>
#include <string>

#include "common/index_math.h"
#include "psa/config.h"
#include "psa/plan.h"

namespace psa {

const char* plan_mode_name(PlanMode mode) {
  return mode == PlanMode::kTopK ? "topk" : "thresholdbound";
}
const char* text_position_name(TextPosition position) {
  return position == TextPosition::kStart ? "start" : "end";
}

namespace {
constexpr int kMinBlock = 16;
constexpr int kMaxBlock = 256;  // the estimator's offset shuffle keeps a block of offsets on stack

Status check_block(const char* name, int value) {
  if (!detail::is_power_of_two(value) || value < kMinBlock || value > kMaxBlock) {
    return invalid_argument("config." + std::string(name) + " must be a power of two in [" +
                            std::to_string(kMinBlock) + ", " + std::to_string(kMaxBlock) +
                            "], got " + std::to_string(value));
  }
  return Status();
}
}  // namespace

Status validate_config(const Config& c) {
  PSA_RETURN_IF_ERROR(check_block("block_m", c.block_m));
  PSA_RETURN_IF_ERROR(check_block("block_n", c.block_n));
  if (!detail::is_power_of_two(c.tile_n) || c.tile_n > c.block_n) {
    return invalid_argument("config.tile_n must be a power of two <= block_n (" +
                            std::to_string(c.block_n) + "), got " + std::to_string(c.tile_n));
  }
  double previous = 0.0;
  for (int l = 0; l < kNumLevels; ++l) {
    const double e = c.ends[l];
    if (!(e >= 0.0 && e <= 1.0)) {
      return invalid_argument("config.ends[" + std::to_string(l) + "] (level " +
                              std::to_string(kLevelFactors[l]) + ") must be in [0, 1], got " +
                              std::to_string(e));
    }
    if (e < previous) {
      return invalid_argument("config.ends must be non-decreasing (e1 <= e2 <= e4 <= e8); level " +
                              std::to_string(kLevelFactors[l]) + " ends at " + std::to_string(e) +
                              " before the previous level's end " + std::to_string(previous));
    }
    previous = e;
  }
  if (!(c.min_full_ratio >= 0.0 && c.min_full_ratio <= 1.0)) {
    return invalid_argument("config.min_full_ratio must be in [0, 1], got " +
                            std::to_string(c.min_full_ratio));
  }
  if (c.samples_m < 0 || c.samples_m > c.block_m) {
    return invalid_argument("config.samples_m must be in [0, block_m] (0 = min(16, block_m)), got " +
                            std::to_string(c.samples_m));
  }
  if (c.head_offset < 0) {
    return invalid_argument("config.head_offset must be >= 0, got " + std::to_string(c.head_offset));
  }
  if (c.samples_n < 0 || c.samples_n > c.block_n) {
    return invalid_argument("config.samples_n must be in [0, block_n] (0 = min(8, block_n)), got " +
                            std::to_string(c.samples_n));
  }
  if (c.text_len < 0) {
    return invalid_argument("config.text_len must be >= 0, got " + std::to_string(c.text_len));
  }
  for (int i = 0; i < 3; ++i) {
    const float t = c.sim_thresholds[i];
    if (!(t >= -1.0f && t <= 1.0f)) {
      return invalid_argument("config.sim_thresholds[" + std::to_string(i) + "] (x" +
                              std::to_string(2 << i) + ") must be a cosine in [-1, 1], got " +
                              std::to_string(t));
    }
  }
  if (c.mode != PlanMode::kTopK && c.mode != PlanMode::kThresholdBound) {
    return invalid_argument("config.mode must be topk or thresholdbound, got code " +
                            std::to_string(static_cast<int>(c.mode)));
  }
  if (c.text_position != TextPosition::kStart && c.text_position != TextPosition::kEnd) {
    return invalid_argument("config.text_position must be start or end, got code " +
                            std::to_string(static_cast<int>(c.text_position)));
  }
  if (!(c.softmax_scale >= 0.0f) || !std::isfinite(c.softmax_scale)) {
    return invalid_argument("config.softmax_scale must be finite and >= 0 (0 = 1/sqrt(D)), got " +
                            std::to_string(c.softmax_scale));
  }
  return Status();
}

Status topk_row_density(double* density, const Config& c, int64_t nk) {
  if (density == nullptr) return invalid_argument("density must not be null");
  PSA_RETURN_IF_ERROR(validate_config(c));
  if (nk < 1) return invalid_argument("num_k_blocks must be >= 1, got " + std::to_string(nk));
  int64_t start = 0;
  double sum = 0.0;
  for (int l = 0; l < kNumLevels; ++l) {
    const int64_t f = kLevelFactors[l];
    int64_t end = detail::min64(nk, static_cast<int64_t>(std::floor(static_cast<double>(nk) * c.ends[l])));
    if (l == 0) end = detail::max64(end, 1);
    end = detail::align_interval_end(start, end, detail::alignment_of(f, c.block_n, c.tile_n), nk);
    sum += static_cast<double>(end - start) / static_cast<double>(f);
    start = end;
  }
  *density = sum / static_cast<double>(nk);
  return Status();
}

PlanShape plan_shape(int64_t batch, int64_t heads_q, int64_t seq_q, int64_t seq_k,
                     const Config& config) {
  PlanShape s;
  if (batch < 0 || heads_q < 0 || seq_q < 0 || seq_k < 0 || config.block_m < 1 ||
      config.block_n < 1) {
    return s;
  }
  s.batch = batch;
  s.heads = heads_q;
  s.num_q_blocks = detail::ceil_div_unbounded(seq_q, config.block_m);
  s.num_k_blocks = detail::ceil_div_unbounded(seq_k, config.block_n);
  return s;
}

}  // namespace psa
