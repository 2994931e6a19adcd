// The plan: for every (batch, query head, query block), which key blocks are attended at which
// level (SPEC.md section 3).
#pragma once

#include <array>
#include <cstdint>
#include <vector>

#include "psa/config.h"
#include "psa/tensor.h"

namespace psa {

// A compact plan in caller-owned memory (host or device, both int32, contiguous):
//   counts: (B, Hq, Mq, 4)  number of key blocks at levels 1, 2, 4, 8 of each row;
//   blocks: (B, Hq, Mq, Nk) key-block indices of the row: the level-1 blocks in ascending order,
//           then the level-2 blocks in ascending order, then level 4, then level 8. Entries past
//           the row's total count are unspecified.
// Skipped blocks are simply absent. A kernel walks a row without decoding a level map.
struct PlanView {
  TensorView counts;
  TensorView blocks;
  int block_m = 0;
  int block_n = 0;
  int64_t seq_q = 0;  // Lq the plan was made for
  int64_t seq_k = 0;  // Lk the plan was made for

  int64_t batch() const { return counts.shape[0]; }
  int64_t heads() const { return counts.shape[1]; }
  int64_t num_q_blocks() const { return counts.shape[2]; }
  int64_t num_k_blocks() const { return blocks.shape[3]; }
};

// Shapes a caller allocates for a plan of this problem: Mq = ceil(Lq / block_m), Nk = ceil(Lk /
// block_n). All zero when a size is negative or a block size is not positive (validate_config
// says what is wrong), so that nothing divides by zero before the config is checked.
struct PlanShape {
  int64_t batch = 0, heads = 0, num_q_blocks = 0, num_k_blocks = 0;
};
PlanShape plan_shape(int64_t batch, int64_t heads_q, int64_t seq_q, int64_t seq_k,
                     const Config& config);

// Plan statistics (SPEC.md section 9). Density of a row is sum over kept blocks of 1/level,
// divided by Nk; a head's density is the mean over its rows and batches.
struct PlanStats {
  double density = 0.0;                       // mean over all rows
  std::array<double, 5> level_fraction = {};  // fraction of (row, block) pairs at level 0, 1, 2, 4, 8
  std::vector<double> density_per_head;       // (Hq), mean over batches and rows
};

}  // namespace psa
