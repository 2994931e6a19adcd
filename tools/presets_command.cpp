#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "commands.h"
#include "runner.h"

namespace psa::tools {

namespace {

struct PresetRow {
  std::string model, name;
  Method method;
  int warmup_steps = 0;
  double density = 1.0;
  std::string how;  // "topk" (computed from the quotas), "measured", "dense", "skipped"
};

// Density of `row` on the workload's shape: computed for topk and dense presets, measured by
// running the estimator and planner for thresholdbound ones (their density depends on the data).
Status fill_density(PresetRow* row, Inputs* inputs, const PresetsOptions& options) {
  const Method& m = row->method;
  if (m.dense) {
    row->density = 1.0;
    row->how = "dense";
    return Status();
  }
  const int64_t seq = options.problem.text_len + options.problem.shape[0] *
                                                     options.problem.shape[1] *
                                                     options.problem.shape[2];
  if (m.config.mode == PlanMode::kTopK) {
    const int64_t nk = (seq + m.config.block_n - 1) / m.config.block_n;
    PSA_RETURN_IF_ERROR(topk_row_density(&row->density, m.config, nk));
    row->how = "topk";
    return Status();
  }
  if (!options.measure) {
    row->density = -1.0;
    row->how = "skipped";
    return Status();
  }
  PSA_RETURN_IF_ERROR(prepare_inputs(inputs, options.problem, m));
  HostTensor scores;
  HostPlan plan;
  PlanStats stats;
  PSA_RETURN_IF_ERROR(estimate_on_cpu(&scores, *inputs, inputs->config));
  PSA_RETURN_IF_ERROR(plan_on_cpu(&plan, &stats, scores, *inputs, inputs->config));
  row->density = stats.density;
  row->how = "measured";
  return Status();
}

std::string ends_text(const Config& c) {
  char buffer[64];
  std::snprintf(buffer, sizeof(buffer), "%.2f/%.2f/%.2f/%.2f", c.ends[0], c.ends[1], c.ends[2],
                c.ends[3]);
  return buffer;
}

}  // namespace

int presets_command(const PresetsOptions& options) {
  PresetLibrary library;
  Status st = load_presets(&library, options.problem.presets_file);
  if (!st.ok()) return report_error(st);

  std::vector<PresetRow> rows;
  PresetRow plug;
  plug.model = "(default)";
  plug.name = "default";
  plug.method = default_method();
  rows.push_back(plug);
  for (const ModelPresets& model : library.models()) {
    for (const Preset& preset : model.presets) {
      PresetRow row;
      row.model = model.model;
      row.name = preset.name + (preset.name == model.default_attention ? "*" : "");
      row.method = method_from_preset(preset);
      row.warmup_steps = preset.warmup_steps;
      rows.push_back(row);
    }
  }
  Inputs inputs;  // one workload, generated on first use and shared by every measured preset
  for (PresetRow& row : rows) {
    st = fill_density(&row, &inputs, options);
    if (!st.ok()) return report_error(st);
  }

  const ProblemOptions& p = options.problem;
  const int64_t seq = p.text_len + p.shape[0] * p.shape[1] * p.shape[2];
  if (options.json) {
    nlohmann::json j = nlohmann::json::array();
    for (const PresetRow& row : rows) {
      const Config& c = row.method.config;
      nlohmann::json e = {{"model", row.model},
                          {"preset", row.name},
                          {"dense", row.method.dense},
                          {"mode", plan_mode_name(c.mode)},
                          {"block_m", c.block_m},
                          {"block_n", c.block_n},
                          {"ends", c.ends},
                          {"rearrange", rearrange_method_name(row.method.rearrange)},
                          {"sim_cap", c.sim_cap},
                          {"warmup_steps", row.warmup_steps},
                          {"density_source", row.how},
                          {"seq_len", seq}};
      e["density"] = row.density >= 0.0 ? nlohmann::json(row.density) : nlohmann::json(nullptr);
      j.push_back(e);
    }
    std::cout << j.dump(2) << std::endl;
    return 0;
  }

  std::printf(
      "presets on %lldx%lldx%lld video + %lld text tokens (L = %lld), %lld heads x %lld, "
      "seed %llu\n",
      static_cast<long long>(p.shape[0]), static_cast<long long>(p.shape[1]),
      static_cast<long long>(p.shape[2]), static_cast<long long>(p.text_len),
      static_cast<long long>(seq), static_cast<long long>(p.heads),
      static_cast<long long>(p.head_dim), static_cast<unsigned long long>(p.seed));
  std::printf(
      "density: topk = from the quotas on this shape's Nk; measured = estimator + planner "
      "run on the workload (thresholdbound depends on the data)\n");
  std::printf("* marks a model's default_attention\n\n");
  std::printf("%-22s %-14s %-15s %7s %-23s %-8s %-4s %6s %8s\n", "model", "preset", "mode",
              "block", "ends (1/2/4/8)", "rearr.", "sim", "warmup", "density");
  std::string previous_model;
  for (const PresetRow& row : rows) {
    const Config& c = row.method.config;
    const std::string model = row.model == previous_model ? "" : row.model;
    previous_model = row.model;
    const std::string block = std::to_string(c.block_m) + "x" + std::to_string(c.block_n);
    char density[32];
    if (row.density >= 0.0) {
      std::snprintf(density, sizeof(density), "%.4f", row.density);
    } else {
      std::snprintf(density, sizeof(density), "-");
    }
    if (row.method.dense) {
      std::printf("%-22s %-14s %-15s %7s %-23s %-8s %-4s %6d %8s %s\n", model.c_str(),
                  row.name.c_str(), "dense", "-", "-", "-", "-", row.warmup_steps, density,
                  row.how.c_str());
    } else {
      std::printf("%-22s %-14s %-15s %7s %-23s %-8s %-4s %6d %8s %s\n", model.c_str(),
                  row.name.c_str(), plan_mode_name(c.mode), block.c_str(), ends_text(c).c_str(),
                  rearrange_method_name(row.method.rearrange), c.sim_cap ? "on" : "off",
                  row.warmup_steps, density, row.how.c_str());
    }
  }
  return 0;
}

}  // namespace psa::tools
