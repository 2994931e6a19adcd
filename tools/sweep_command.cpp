#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "commands.h"
#include "metrics.h"
#include "plot.h"
#include "png_writer.h"
#include "runner.h"

namespace psa::tools {

namespace {

struct SweepPoint {
  double scale = 0.0;
  Config config;
  PlanStats psa_stats, binary_stats;
  Quality psa, binary;
  double psa_ms = 0.0, binary_ms = 0.0;
};

Status attend(HostTensor* out, HostTensor* lse, const Inputs& inputs, const HostPyramid& pyramid,
              const HostPlan& plan, const Config& config, double* ms) {
  const std::vector<int64_t>& s = inputs.q.shape();
  *out = HostTensor(inputs.q.dtype(), s);
  *lse = HostTensor(DType::kFloat32, {s[0], s[1], s[2]});
  const int64_t start = now_ns();
  PSA_RETURN_IF_ERROR(attention_forward(out->view(), lse->view(), inputs.q.view(), inputs.k.view(),
                                        inputs.v.view(), pyramid.view(), plan.view(), config));
  *ms = elapsed_ms(start);
  return Status();
}

Status write_csv(const std::string& path, const std::vector<SweepPoint>& points) {
  FILE* file = std::fopen(path.c_str(), "w");
  if (file == nullptr) {
    return Status(StatusCode::kIoError, "cannot open '" + path + "' for writing");
  }
  std::fprintf(file,
               "scale,e1,e2,e4,e8,psa_density,psa_rel_l2,psa_cosine,psa_cosine_p1,"
               "binary_density,binary_rel_l2,binary_cosine,binary_cosine_p1,psa_ms,binary_ms\n");
  for (const SweepPoint& p : points) {
    const auto& e = p.config.ends;
    std::fprintf(file,
                 "%.6g,%.6g,%.6g,%.6g,%.6g,%.6f,%.6g,%.8f,%.8f,%.6f,%.6g,%.8f,%.8f,%.3f,%.3f\n",
                 p.scale, e[0], e[1], e[2], e[3], p.psa_stats.density, p.psa.rel_l2,
                 p.psa.cosine_mean, p.psa.cosine_p1, p.binary_stats.density, p.binary.rel_l2,
                 p.binary.cosine_mean, p.binary.cosine_p1, p.psa_ms, p.binary_ms);
  }
  const bool closed = std::fclose(file) == 0;
  if (!closed) return Status(StatusCode::kIoError, "failed to write '" + path + "'");
  return Status();
}

}  // namespace

int sweep_command(const SweepOptions& options) {
  Method method;
  Status st = resolve_method(&method, options.problem);
  if (!st.ok()) return report_error(st);
  if (method.dense) {
    return report_error(invalid_argument("--preset " + options.problem.preset +
                                         " is dense attention; a sweep needs a PSA preset"));
  }
  Inputs inputs;
  st = prepare_inputs(&inputs, options.problem, method);
  if (!st.ok()) return report_error(st);

  // Everything that does not depend on the quotas is computed once, in planning order (dense
  // attention commutes with a token permutation, so the comparison needs no un-permuting).
  const std::vector<int64_t>& s = inputs.q.shape();
  HostPyramid pyramid = make_host_pyramid(s[0], inputs.k.shape()[1], s[2], s[3], inputs.k.dtype());
  HostTensor scores, dense_out(inputs.q.dtype(), s), dense_lse(DType::kFloat32, {s[0], s[1], s[2]});
  st = build_pyramid(pyramid.view(), inputs.k.view(), inputs.v.view());
  if (st.ok()) st = estimate_on_cpu(&scores, inputs, inputs.config);
  if (st.ok()) {
    st = dense_attention_forward(dense_out.view(), dense_lse.view(), inputs.q.view(),
                                 inputs.k.view(), inputs.v.view(), inputs.config.causal,
                                 inputs.config.softmax_scale);
  }
  if (!st.ok()) return report_error(st);

  // Geometric spacing of the factor: densities span an order of magnitude, so equal ratios
  // between neighbours spread the points evenly on the interesting low-density end.
  std::vector<SweepPoint> points;
  const double ratio = options.max_scale / options.min_scale;
  for (int i = 0; i < options.points; ++i) {
    SweepPoint p;
    p.scale = options.min_scale * std::pow(ratio, double(i) / double(options.points - 1));
    p.config = scaled_config(inputs.config, p.scale);
    HostPlan plan, binary_plan;
    HostTensor out, lse;
    st = plan_on_cpu(&plan, &p.psa_stats, scores, inputs, p.config);
    if (st.ok()) st = attend(&out, &lse, inputs, pyramid, plan, p.config, &p.psa_ms);
    if (!st.ok()) return report_error(st);
    p.psa = compare_outputs(out, lse, dense_out, dense_lse);
    BinaryMatch match;
    st = match_binary_on_cpu(&match, scores, inputs, p.config, p.psa_stats.density);
    const Config& binary = match.config;
    if (st.ok()) st = plan_on_cpu(&binary_plan, &p.binary_stats, scores, inputs, binary);
    if (st.ok()) st = attend(&out, &lse, inputs, pyramid, binary_plan, binary, &p.binary_ms);
    if (!st.ok()) return report_error(st);
    p.binary = compare_outputs(out, lse, dense_out, dense_lse);
    std::fprintf(stderr,
                 "sweep %d/%d: scale %.3f  PSA density %.4f rel L2 %.4f | binary density %.4f "
                 "rel L2 %.4f\n",
                 i + 1, options.points, p.scale, p.psa_stats.density, p.psa.rel_l2,
                 p.binary_stats.density, p.binary.rel_l2);
    points.push_back(p);
  }

  st = write_csv(options.csv, points);
  if (!st.ok()) return report_error(st);

  const ProblemOptions& po = options.problem;
  LinePlot plot;
  char title[200];
  std::snprintf(title, sizeof(title),
                "relative L2 error vs density: %s, %lldx%lldx%lld, %lld heads",
                method.label.c_str(), static_cast<long long>(po.shape[0]),
                static_cast<long long>(po.shape[1]), static_cast<long long>(po.shape[2]),
                static_cast<long long>(po.heads));
  plot.title = title;
  plot.x_label = "FLOP density (fraction of dense attention)";
  plot.y_label = "relative L2 error vs dense";
  Series psa_series{"PSA (levels 1/2/4/8)", {33, 102, 172}, false, {}, {}};
  Series binary_series{"binary block-sparse", {214, 96, 77}, true, {}, {}};
  for (const SweepPoint& p : points) {
    psa_series.x.push_back(p.psa_stats.density);
    psa_series.y.push_back(p.psa.rel_l2);
    binary_series.x.push_back(p.binary_stats.density);
    binary_series.y.push_back(p.binary.rel_l2);
  }
  plot.series = {psa_series, binary_series};
  st = write_png(render_line_plot(plot), options.png);
  if (!st.ok()) return report_error(st);
  std::printf("wrote %s and %s (%d points, PSA density %.4f to %.4f)\n", options.csv.c_str(),
              options.png.c_str(), options.points, points.front().psa_stats.density,
              points.back().psa_stats.density);
  return 0;
}

}  // namespace psa::tools
