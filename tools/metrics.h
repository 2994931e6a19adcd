// Quality of an attention output against dense attention on the same inputs (WORKLOADS.md,
// "Metrics at the attention level").
#pragma once

#include <vector>

#include "psa/psa.h"

namespace psa::tools {

struct Quality {
  double rel_l2 = 0.0;       // ||O - O_dense|| / ||O_dense|| over the whole tensor
  double cosine_mean = 0.0;  // cosine similarity of each output row with dense's, mean over rows
  double cosine_p1 = 0.0;    // ... its 1st percentile (the worst rows)
  double lse_abs_err = 0.0;  // mean |LSE - LSE_dense| over rows (NaN when an LSE is missing)
};

// out, ref: (B, H, L, D); lse, ref_lse: (B, H, L) or undefined. Any floating dtypes.
Quality compare_outputs(const HostTensor& out, const HostTensor& lse, const HostTensor& ref,
                        const HostTensor& ref_lse);

// The fraction of dense attention mass that a plan keeps (recall): for every query row, the sum
// of its dense softmax probabilities over the keys of blocks with a level > 0, averaged over rows.
// q (B, Hq, L, D), k (B, Hkv, L, D) and dense_lse (B, Hq, L) in the plan's (planning) token
// order; each level map is (B, Hq, Mq, Nk) uint8. One pass over q.k serves every map.
Status attention_recall(std::vector<double>* recall, const HostTensor& q, const HostTensor& k,
                        const HostTensor& dense_lse, const std::vector<const HostTensor*>& levels,
                        int block_m, int block_n, float softmax_scale);

// The plan's level map (B, Hq, Mq, Nk) uint8 on the host.
Status plan_levels(HostTensor* levels, const HostPlan& plan);

// The q-th quantile (0..1) of `values` (sorted copy, nearest rank below).
double quantile(std::vector<double> values, double q);

}  // namespace psa::tools
