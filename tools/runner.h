// The pipeline of `psa run` on one backend: pyramid, estimator, planner, PSA attention, binary
// block-sparse attention at PSA's density with the same scores, and dense attention. Outputs come
// back to the host in raster order, so that the caller compares them the same way for every
// backend.
#pragma once

#include "problem.h"

namespace psa::tools {

struct StageTimes {
  double rearrange_ms = 0.0;
  double pyramid_ms = 0.0;
  double estimate_ms = 0.0;
  double planner_ms = 0.0;
  double attention_ms = 0.0;
  double binary_planner_ms = 0.0;
  double binary_attention_ms = 0.0;
  double dense_ms = 0.0;
  double plan_ms() const { return estimate_ms + planner_ms; }
};

struct RunOutputs {
  HostPlan plan, binary_plan;  // planning order
  PlanStats stats, binary_stats;
  bool binary_equal_density = false;  // the binary plan is within half a block per row of PSA's
  HostTensor out, lse;                // PSA, raster order: (B, H, L, D), (B, H, L)
  HostTensor binary_out, binary_lse;  // binary block-sparse, raster order
  HostTensor dense_out, dense_lse;    // dense attention on the inputs the backend saw, raster order
  StageTimes times;                   // medians over `repeat` timed runs
  int repeat = 1;
};

// Block importance of the planning-order inputs: scores (B, Hq, Mq, Nk) fp32 for config's blocks.
Status estimate_on_cpu(HostTensor* scores, const Inputs& inputs, const Config& config);
// A plan from those scores, and its statistics.
Status plan_on_cpu(HostPlan* plan, PlanStats* stats, const HostTensor& scores, const Inputs& inputs,
                   const Config& config);

// match_binary_density with plans made on the CPU from `scores`.
Status match_binary_on_cpu(BinaryMatch* match, const HostTensor& scores, const Inputs& inputs,
                           const Config& psa, double psa_density);

// Every stage on the CPU with the library's reference backend; each is timed with std::chrono.
Status run_on_cpu(RunOutputs* outputs, const Inputs& inputs, int repeat);

#if defined(PSA_WITH_CUDA)
// The same pipeline on the GPU in `dtype` (fp16 or bf16), timed with CUDA events after a warm-up
// run. Dense attention on the GPU is the PSA kernel on an all-level-1 plan (SPEC 6: exactly
// dense), since the library has no separate dense CUDA kernel.
Status run_on_cuda(RunOutputs* outputs, const Inputs& inputs, DType dtype, int repeat);
#endif

}  // namespace psa::tools
