#include <cstdio>
#include <string>

#include "commands.h"
#include "metrics.h"
#include "plot.h"
#include "png_writer.h"
#include "runner.h"

namespace psa::tools {

int plan_command(const PlanOptions& options) {
  Method method;
  Status st = resolve_method(&method, options.problem);
  if (!st.ok()) return report_error(st);
  if (method.dense) {
    return report_error(invalid_argument("--preset " + options.problem.preset +
                                         " is dense attention: every block is level 1"));
  }
  if (options.head >= options.problem.heads) {
    return report_error(invalid_argument("--head must be in [0, " +
                                         std::to_string(options.problem.heads) + "), got " +
                                         std::to_string(options.head)));
  }
  Inputs inputs;
  st = prepare_inputs(&inputs, options.problem, method);
  if (!st.ok()) return report_error(st);

  HostTensor scores, levels;
  HostPlan plan;
  PlanStats stats;
  st = estimate_on_cpu(&scores, inputs, inputs.config);
  if (st.ok()) st = plan_on_cpu(&plan, &stats, scores, inputs, inputs.config);
  Config drawn = inputs.config;
  if (st.ok() && options.binary) {
    BinaryMatch match;
    st = match_binary_on_cpu(&match, scores, inputs, inputs.config, stats.density);
    drawn = match.config;
    if (st.ok()) st = plan_on_cpu(&plan, &stats, scores, inputs, drawn);
  }
  if (st.ok()) st = plan_levels(&levels, plan);
  if (!st.ok()) return report_error(st);

  // Level map (B, Hq, Mq, Nk): the slice of batch 0 and the chosen head.
  LevelMapFigure figure;
  figure.rows = levels.shape()[2];
  figure.cols = levels.shape()[3];
  const int64_t offset = options.head * figure.rows * figure.cols;
  figure.levels.assign(levels.data<uint8_t>() + offset,
                       levels.data<uint8_t>() + offset + figure.rows * figure.cols);
  const double head_density = stats.density_per_head[static_cast<size_t>(options.head)];
  const std::string kind = options.binary ? "binary block-sparse" : "PSA";
  char title[160], subtitle[256];
  std::snprintf(title, sizeof(title), "%s plan, head %lld of %lld: density %.3f", kind.c_str(),
                static_cast<long long>(options.head), static_cast<long long>(options.problem.heads),
                head_density);
  const ProblemOptions& p = options.problem;
  std::snprintf(
      subtitle, sizeof(subtitle),
      "%s | %lldx%lldx%lld + %lld text, seed %llu | block %dx%d, %s order", method.label.c_str(),
      static_cast<long long>(p.shape[0]), static_cast<long long>(p.shape[1]),
      static_cast<long long>(p.shape[2]), static_cast<long long>(p.text_len),
      static_cast<unsigned long long>(p.seed), drawn.block_m, drawn.block_n,
      method.rearrange == RearrangeMethod::kNone ? "raster"
                                                 : rearrange_method_name(method.rearrange));
  figure.title = title;
  figure.subtitle = subtitle;
  st = write_png(render_level_map(figure), options.out);
  if (!st.ok()) return report_error(st);
  std::printf(
      "wrote %s: %s plan of head %lld, %lld query blocks x %lld key blocks, head density "
      "%.4f (all heads %.4f)\n",
      options.out.c_str(), kind.c_str(), static_cast<long long>(options.head),
      static_cast<long long>(figure.rows), static_cast<long long>(figure.cols), head_density,
      stats.density);
  return 0;
}

}  // namespace psa::tools
