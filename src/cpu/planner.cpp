// The planner on the CPU (SPEC.md section 5): scores or a caller's level map to a plan, the
// similarity cap, plan -> level map, and plan statistics. The per-row rules live in
// common/planner_rules.h, shared with the CUDA planner.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "common/index_math.h"
#include "common/planner_rules.h"
#include "cpu/cpu_backend.h"
#include "cpu/cpu_util.h"

namespace psa::cpu {

namespace {

std::string position_string(int64_t b, int64_t h, int64_t i, int64_t j) {
  return "[" + std::to_string(b) + ", " + std::to_string(h) + ", " + std::to_string(i) + ", " +
         std::to_string(j) + "]";
}

// Where a row's counts (4 entries) and blocks (Nk entries) live in the plan tensors.
struct RowSlots {
  int32_t* counts;
  int64_t counts_stride;
  int32_t* blocks;
  int64_t blocks_stride;
};

RowSlots row_slots(const PlanView& plan, int64_t b, int64_t h, int64_t i) {
  RowSlots s;
  s.counts = static_cast<int32_t*>(plan.counts.data) + offset_of(plan.counts, b, h, i);
  s.counts_stride = plan.counts.stride[3];
  s.blocks = static_cast<int32_t*>(plan.blocks.data) + offset_of(plan.blocks, b, h, i);
  s.blocks_stride = plan.blocks.stride[3];
  return s;
}

// Writes a row from its level per key block (Nk values in {0, 1, 2, 4, 8}): the level-1 blocks
// ascending, then level 2, 4, 8. Entries past the row's total are set to -1, so that a plan is
// fully determined by its inputs.
void write_row(const RowSlots& slots, const uint8_t* levels, int64_t num_k_blocks) {
  int64_t n = 0;
  for (int l = 0; l < kNumLevels; ++l) {
    const int factor = kLevelFactors[l];
    int64_t count = 0;
    for (int64_t j = 0; j < num_k_blocks; ++j) {
      if (levels[j] != factor) continue;
      slots.blocks[n * slots.blocks_stride] = static_cast<int32_t>(j);
      ++n;
      ++count;
    }
    slots.counts[l * slots.counts_stride] = static_cast<int32_t>(count);
  }
  for (; n < num_k_blocks; ++n) slots.blocks[n * slots.blocks_stride] = -1;
}

// The cap of every key block, (B, Hkv, Nk), when config.sim_cap is set; empty otherwise.
Status compute_caps(std::vector<uint8_t>& caps, const TensorView& k, const Config& config) {
  caps.clear();
  if (!config.sim_cap) return Status();
  const int64_t num_k_blocks = detail::ceil_div(k.shape[2], config.block_n);
  caps.resize(static_cast<size_t>(k.shape[0] * k.shape[1] * num_k_blocks));
  const TensorView view =
      make_view(caps.data(), DType::kUInt8, {k.shape[0], k.shape[1], num_k_blocks});
  return similarity_cap(view, k, config);
}

}  // namespace

Status similarity_cap(TensorView cap, const TensorView& k, const Config& config) {
  const int64_t batch = k.shape[0], heads_kv = k.shape[1], seq_k = k.shape[2], dim = k.shape[3];
  const int64_t block_n = config.block_n;
  const int64_t num_k_blocks = detail::ceil_div(seq_k, block_n);
  parallel_for(batch * heads_kv, [&](int64_t bh) {
    const int64_t b = bh / heads_kv, h = bh % heads_kv;
    std::vector<double> first(static_cast<size_t>(dim)), last(static_cast<size_t>(dim));
    for (int64_t kj = 0; kj < num_k_blocks; ++kj) {
      const int64_t begin = kj * block_n, end = std::min(begin + block_n, seq_k);
      double sims[kNumPooledLevels];
      for (int l = 0; l < kNumPooledLevels; ++l) {
        const int64_t f = kLevelFactors[l + 1];
        // Groups start at multiples of f (block_n is one); a short last group compares its first
        // and last real token, a one-token group has cosine 1, a zero vector cosine 0.
        double sum = 0.0;
        int64_t groups = 0;
        for (int64_t g = begin; g < end; g += f) {
          const int64_t g_last = std::min(g + f, end) - 1;
          ++groups;
          if (g_last == g) {
            sum += 1.0;
            continue;
          }
          load_row(first.data(), k, b, h, g);
          load_row(last.data(), k, b, h, g_last);
          double dot = 0.0, n1 = 0.0, n2 = 0.0;
          for (int64_t d = 0; d < dim; ++d) {
            dot += first[d] * last[d];
            n1 += first[d] * first[d];
            n2 += last[d] * last[d];
          }
          const double norms = std::sqrt(n1) * std::sqrt(n2);
          sum += norms > 0.0 ? dot / norms : 0.0;
        }
        sims[l] = sum / static_cast<double>(groups);
      }
      const int level = detail::similarity_cap_level(sims, config.sim_thresholds.data());
      store(cap, offset_of(cap, b, h, kj), static_cast<double>(level));
    }
  });
  return Status();
}

Status plan_from_scores(PlanView plan, const TensorView& scores, const TensorView& k,
                        const Config& config) {
  const int64_t batch = scores.shape[0], heads_q = scores.shape[1];
  const int64_t num_q_blocks = scores.shape[2], num_k_blocks = scores.shape[3];
  const int64_t seq_q = plan.seq_q, seq_k = plan.seq_k;
  const int64_t block_m = config.block_m, block_n = config.block_n;
  std::vector<uint8_t> caps;
  PSA_RETURN_IF_ERROR(compute_caps(caps, k, config));
  const int64_t group = config.sim_cap ? heads_q / k.shape[1] : 1;
  detail::ForcedBlocks forced;
  forced.seq_q = seq_q;
  forced.seq_k = seq_k;
  forced.block_m = block_m;
  forced.block_n = block_n;
  forced.text_len = config.text_len;
  forced.text_at_end = config.text_position == TextPosition::kEnd;
  forced.causal = config.causal;
  forced.keep_first_block = config.keep_first_block;

  parallel_for(batch * heads_q, [&](int64_t bh) {
    const int64_t b = bh / heads_q, h = bh % heads_q;
    const uint8_t* cap_row =
        config.sim_cap ? caps.data() + (b * (heads_q / group) + h / group) * num_k_blocks : nullptr;
    std::vector<float> row(static_cast<size_t>(num_k_blocks));
    std::vector<int64_t> order;  // visible blocks, then sorted
    std::vector<float> sorted;   // their scores in sorted order
    std::vector<uint8_t> levels(static_cast<size_t>(num_k_blocks));
    for (int64_t qi = 0; qi < num_q_blocks; ++qi) {
      auto visible = [&](int64_t kj) {
        return !config.causal || detail::block_visible(seq_q, seq_k, block_m, block_n, qi, kj);
      };
      const int64_t base = offset_of(scores, b, h, qi);
      order.clear();
      for (int64_t kj = 0; kj < num_k_blocks; ++kj) {
        row[kj] = static_cast<float>(load(scores, base + kj * scores.stride[3]));
        if (visible(kj)) order.push_back(kj);
      }
      const int64_t num_visible = static_cast<int64_t>(order.size());
      std::fill(levels.begin(), levels.end(), uint8_t{0});
      if (num_visible > 0) {
        std::sort(order.begin(), order.end(),
                  [&](int64_t a, int64_t c) { return detail::ranks_before(row[a], a, row[c], c); });
        int64_t level_ends[kNumLevels];
        if (config.mode == PlanMode::kTopK) {
          detail::topk_level_ends(level_ends, num_visible, config.ends.data(), block_n,
                                  config.tile_n);
        } else {
          sorted.resize(order.size());
          for (size_t p = 0; p < order.size(); ++p) sorted[p] = row[order[p]];
          int64_t crossing[kNumLevels];
          detail::threshold_crossings(crossing, sorted.data(), num_visible, config.ends.data());
          detail::thresholdbound_level_ends(level_ends, crossing, num_visible,
                                            config.min_full_ratio, block_n, config.tile_n);
        }
        for (int64_t p = 0; p < level_ends[kNumLevels - 1]; ++p) {
          levels[order[p]] = static_cast<uint8_t>(detail::level_of_position(level_ends, p));
        }
        if (cap_row != nullptr) {
          for (int64_t kj = 0; kj < num_k_blocks; ++kj) {
            levels[kj] = static_cast<uint8_t>(detail::apply_cap(levels[kj], cap_row[kj]));
          }
        }
        // Forced level-1 blocks, after the quotas and the cap: text columns and text rows, the
        // diagonal, the attention sink, and the row's best block. Only visible blocks can be
        // forced.
        for (int64_t kj = 0; kj < num_k_blocks; ++kj) {
          if (visible(kj) && detail::block_forced_full(forced, qi, kj)) levels[kj] = 1;
        }
        levels[order[0]] = 1;
      }
      write_row(row_slots(plan, b, h, qi), levels.data(), num_k_blocks);
    }
  });
  return Status();
}

Status plan_from_levels(PlanView plan, const TensorView& levels, const TensorView& k,
                        const Config& config) {
  const int64_t batch = levels.shape[0], heads_q = levels.shape[1];
  const int64_t num_q_blocks = levels.shape[2], num_k_blocks = levels.shape[3];
  // Validate the whole map before writing anything.
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t h = 0; h < heads_q; ++h) {
      for (int64_t i = 0; i < num_q_blocks; ++i) {
        for (int64_t j = 0; j < num_k_blocks; ++j) {
          const int value = static_cast<int>(load(levels, offset_of(levels, b, h, i, j)));
          if (!detail::is_valid_level(value)) {
            return invalid_argument("levels" + position_string(b, h, i, j) +
                                    " must be one of 0, 1, 2, 4, 8, got " + std::to_string(value));
          }
        }
      }
    }
  }
  std::vector<uint8_t> caps;
  PSA_RETURN_IF_ERROR(compute_caps(caps, k, config));
  const int64_t group = config.sim_cap ? heads_q / k.shape[1] : 1;
  parallel_for(batch * heads_q, [&](int64_t bh) {
    const int64_t b = bh / heads_q, h = bh % heads_q;
    const uint8_t* cap_row =
        config.sim_cap ? caps.data() + (b * (heads_q / group) + h / group) * num_k_blocks : nullptr;
    std::vector<uint8_t> row(static_cast<size_t>(num_k_blocks));
    for (int64_t i = 0; i < num_q_blocks; ++i) {
      for (int64_t j = 0; j < num_k_blocks; ++j) {
        int level = static_cast<int>(load(levels, offset_of(levels, b, h, i, j)));
        if (cap_row != nullptr) level = detail::apply_cap(level, cap_row[j]);
        row[j] = static_cast<uint8_t>(level);
      }
      write_row(row_slots(plan, b, h, i), row.data(), num_k_blocks);
    }
  });
  return Status();
}

Status plan_to_levels(TensorView levels, const PlanView& plan) {
  const int64_t num_k_blocks = plan.num_k_blocks();
  for (int64_t b = 0; b < plan.batch(); ++b) {
    for (int64_t h = 0; h < plan.heads(); ++h) {
      for (int64_t i = 0; i < plan.num_q_blocks(); ++i) {
        for (int64_t j = 0; j < num_k_blocks; ++j) store(levels, offset_of(levels, b, h, i, j), 0);
        const RowSlots slots = row_slots(plan, b, h, i);
        int64_t n = 0;
        for (int l = 0; l < kNumLevels; ++l) {
          const int64_t count = slots.counts[l * slots.counts_stride];
          for (int64_t c = 0; c < count; ++c, ++n) {
            const int64_t j = slots.blocks[n * slots.blocks_stride];
            store(levels, offset_of(levels, b, h, i, j), kLevelFactors[l]);
          }
        }
      }
    }
  }
  return Status();
}

Status plan_statistics(PlanStats* stats, const PlanView& plan) {
  const int64_t batch = plan.batch(), heads = plan.heads(), num_q_blocks = plan.num_q_blocks();
  const double num_k_blocks = static_cast<double>(plan.num_k_blocks());
  PlanStats result;
  result.density_per_head.assign(static_cast<size_t>(heads), 0.0);
  // level_count[0..4]: (row, block) pairs at level 0, 1, 2, 4, 8.
  double level_count[5] = {};
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t h = 0; h < heads; ++h) {
      for (int64_t i = 0; i < num_q_blocks; ++i) {
        const RowSlots slots = row_slots(plan, b, h, i);
        double row_density = 0.0, kept = 0.0;
        for (int l = 0; l < kNumLevels; ++l) {
          const double count = slots.counts[l * slots.counts_stride];
          row_density += count / kLevelFactors[l];
          level_count[l + 1] += count;
          kept += count;
        }
        level_count[0] += num_k_blocks - kept;
        result.density_per_head[static_cast<size_t>(h)] += row_density / num_k_blocks;
      }
    }
  }
  const double rows_per_head = static_cast<double>(batch * num_q_blocks);
  const double pairs = static_cast<double>(heads) * rows_per_head * num_k_blocks;
  if (pairs > 0.0) {
    double total_density = 0.0;
    for (double& d : result.density_per_head) {
      total_density += d;
      d /= rows_per_head;
    }
    result.density = total_density / (static_cast<double>(heads) * rows_per_head);
    for (int l = 0; l < 5; ++l) result.level_fraction[l] = level_count[l] / pairs;
  }
  *stats = result;
  return Status();
}

}  // namespace psa::cpu
