#include <algorithm>
#include <vector>

#include "metrics.h"
#include "runner.h"

namespace psa::tools {

namespace {

double median(std::vector<double> values) { return quantile(std::move(values), 0.5); }

// Runs `stage` `repeat` times and stores the median time in *ms.
template <typename Stage>
Status timed(double* ms, int repeat, Stage stage) {
  std::vector<double> times;
  for (int r = 0; r < repeat; ++r) {
    const int64_t start = now_ns();
    PSA_RETURN_IF_ERROR(stage());
    times.push_back(elapsed_ms(start));
  }
  *ms = median(times);
  return Status();
}

}  // namespace

Status estimate_on_cpu(HostTensor* scores, const Inputs& inputs, const Config& config) {
  const std::vector<int64_t>& s = inputs.q.shape();
  const PlanShape ps = plan_shape(s[0], s[1], s[2], inputs.k.shape()[2], config);
  *scores = HostTensor(DType::kFloat32, {ps.batch, ps.heads, ps.num_q_blocks, ps.num_k_blocks});
  return estimate_importance(scores->view(), inputs.q.view(), inputs.k.view(), config);
}

Status plan_on_cpu(HostPlan* plan, PlanStats* stats, const HostTensor& scores, const Inputs& inputs,
                   const Config& config) {
  const std::vector<int64_t>& s = inputs.q.shape();
  *plan = make_host_plan(s[0], s[1], s[2], inputs.k.shape()[2], config);
  PSA_RETURN_IF_ERROR(plan_from_scores(plan->view(), scores.view(), inputs.k.view(), config));
  return plan_statistics(stats, plan->view());
}

Status match_binary_on_cpu(BinaryMatch* match, const HostTensor& scores, const Inputs& inputs,
                           const Config& psa, double psa_density) {
  return match_binary_density(match, psa, psa_density, inputs.k.shape()[2],
                              [&](const Config& config, double* density) {
                                HostPlan plan;
                                PlanStats stats;
                                PSA_RETURN_IF_ERROR(
                                    plan_on_cpu(&plan, &stats, scores, inputs, config));
                                *density = stats.density;
                                return Status();
                              });
}

Status run_on_cpu(RunOutputs* outputs, const Inputs& inputs, int repeat) {
  repeat = std::max(repeat, 1);
  outputs->repeat = repeat;
  StageTimes& t = outputs->times;
  const int64_t batch = inputs.q.shape()[0], heads = inputs.q.shape()[1];
  const int64_t seq = inputs.q.shape()[2], dim = inputs.q.shape()[3];
  const int64_t heads_kv = inputs.k.shape()[1];
  const Config& config = inputs.config;
  t.rearrange_ms = inputs.rearrange_ms;  // done on the host by prepare_inputs

  HostPyramid pyramid = make_host_pyramid(batch, heads_kv, seq, dim, inputs.k.dtype());
  PSA_RETURN_IF_ERROR(timed(&t.pyramid_ms, repeat, [&] {
    return build_pyramid(pyramid.view(), inputs.k.view(), inputs.v.view());
  }));

  const PlanShape ps = plan_shape(batch, heads, seq, seq, config);
  HostTensor scores(DType::kFloat32, {ps.batch, ps.heads, ps.num_q_blocks, ps.num_k_blocks});
  PSA_RETURN_IF_ERROR(timed(&t.estimate_ms, repeat, [&] {
    return estimate_importance(scores.view(), inputs.q.view(), inputs.k.view(), config);
  }));

  outputs->plan = make_host_plan(batch, heads, seq, seq, config);
  PSA_RETURN_IF_ERROR(timed(&t.planner_ms, repeat, [&] {
    return plan_from_scores(outputs->plan.view(), scores.view(), inputs.k.view(), config);
  }));
  PSA_RETURN_IF_ERROR(plan_statistics(&outputs->stats, outputs->plan.view()));

  HostTensor out(inputs.q.dtype(), inputs.q.shape());
  HostTensor lse(DType::kFloat32, {batch, heads, seq});
  PSA_RETURN_IF_ERROR(timed(&t.attention_ms, repeat, [&] {
    return attention_forward(out.view(), lse.view(), inputs.q.view(), inputs.k.view(),
                             inputs.v.view(), pyramid.view(), outputs->plan.view(), config);
  }));

  // Binary block-sparse at the density PSA measured, on the same scores.
  BinaryMatch match;
  PSA_RETURN_IF_ERROR(match_binary_on_cpu(&match, scores, inputs, config, outputs->stats.density));
  const Config& binary = match.config;
  outputs->binary_equal_density = match.equal;
  outputs->binary_plan = make_host_plan(batch, heads, seq, seq, binary);
  PSA_RETURN_IF_ERROR(timed(&t.binary_planner_ms, repeat, [&] {
    return plan_from_scores(outputs->binary_plan.view(), scores.view(), inputs.k.view(), binary);
  }));
  PSA_RETURN_IF_ERROR(plan_statistics(&outputs->binary_stats, outputs->binary_plan.view()));
  HostTensor binary_out(inputs.q.dtype(), inputs.q.shape());
  HostTensor binary_lse(DType::kFloat32, {batch, heads, seq});
  PSA_RETURN_IF_ERROR(timed(&t.binary_attention_ms, repeat, [&] {
    return attention_forward(binary_out.view(), binary_lse.view(), inputs.q.view(), inputs.k.view(),
                             inputs.v.view(), pyramid.view(), outputs->binary_plan.view(), binary);
  }));

  // Dense attention in raster order on the workload itself: no permutation involved.
  const Workload& w = inputs.workload;
  outputs->dense_out = HostTensor(w.q.dtype(), w.q.shape());
  outputs->dense_lse = HostTensor(DType::kFloat32, {batch, heads, seq});
  PSA_RETURN_IF_ERROR(timed(&t.dense_ms, repeat, [&] {
    return dense_attention_forward(outputs->dense_out.view(), outputs->dense_lse.view(), w.q.view(),
                                   w.k.view(), w.v.view(), config.causal, config.softmax_scale);
  }));

  PSA_RETURN_IF_ERROR(permute_sequence(&outputs->out, out, inputs.inverse));
  PSA_RETURN_IF_ERROR(permute_sequence(&outputs->lse, lse, inputs.inverse));
  PSA_RETURN_IF_ERROR(permute_sequence(&outputs->binary_out, binary_out, inputs.inverse));
  PSA_RETURN_IF_ERROR(permute_sequence(&outputs->binary_lse, binary_lse, inputs.inverse));
  return Status();
}

}  // namespace psa::tools
