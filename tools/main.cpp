// psa: the command-line tool. Subcommands run the pipeline on the embedded video-DiT-like
// workload (run), list presets with their densities (presets), draw a plan's level map (plan) and
// sweep relative error against density for PSA and binary block-sparse attention (sweep).
#include <CLI/CLI.hpp>
#include <cstdio>
#include <string>

#include "commands.h"

namespace {

using psa::tools::ProblemOptions;

// Options every subcommand shares; --shape and --text-position are parsed after CLI11 so that
// their error messages name the expected form.
struct SharedText {
  std::string shape = "8,16,16";
  std::string text_position = "start";
};

void add_problem_options(CLI::App* app, ProblemOptions* p, SharedText* text, bool with_preset) {
  app->add_option("--shape", text->shape, "video tokens T,H,W in raster order")
      ->capture_default_str();
  app->add_option("--heads", p->heads, "attention heads")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app->add_option("--head-dim", p->head_dim, "head dimension")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app->add_option("--text", p->text_len, "text tokens added to the video tokens")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app->add_option("--text-position", text->text_position, "where the text tokens are: start or end")
      ->check(CLI::IsMember({"start", "end"}))
      ->capture_default_str();
  app->add_option("--seed", p->seed, "workload and estimator seed")->capture_default_str();
  if (with_preset) {
    app->add_option("--preset", p->preset,
                    "model:name from the preset library (e.g. Wan2.1_1.3b:psa_balanced); "
                    "default: the plug-and-play default config");
  }
  app->add_option("--presets-file", p->presets_file,
                  "YAML preset file in the original schema (default: the built-in presets)");
}

// Applies the string options to `p`; false (with the message printed) when one is malformed.
bool finish_problem_options(ProblemOptions* p, const SharedText& text) {
  const psa::Status st = psa::tools::parse_shape(&p->shape, text.shape);
  if (!st.ok()) {
    psa::tools::report_error(st);
    return false;
  }
  p->text_position =
      text.text_position == "end" ? psa::TextPosition::kEnd : psa::TextPosition::kStart;
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "psa: Pyramid Sparse Attention on an embedded video-DiT-like workload.\n"
      "The workload is a calibrated stand-in for a video transformer's attention, not model "
      "weights."};
  app.require_subcommand(1);
  app.set_help_all_flag("--help-all", "help for every subcommand");

  psa::tools::RunOptions run;
  SharedText run_text;
  CLI::App* run_app = app.add_subcommand(
      "run",
      "estimate, plan, run PSA, binary block-sparse at equal density and dense attention; "
      "print density, error and times");
  add_problem_options(run_app, &run.problem, &run_text, true);
  run_app->add_option("--device", run.device, "cpu or cuda")
      ->check(CLI::IsMember({"cpu", "cuda"}))
      ->capture_default_str();
  run_app->add_option("--dtype", run.dtype, "auto (fp32 on cpu, bf16 on cuda), fp32, fp16 or bf16")
      ->check(CLI::IsMember({"auto", "fp32", "fp16", "bf16"}))
      ->capture_default_str();
  run_app->add_option("--repeat", run.repeat, "timed runs per stage (the median is reported)")
      ->check(CLI::Range(1, 1000))
      ->capture_default_str();
  run_app->add_flag("--json", run.json, "print one JSON object instead of the table");
  bool no_recall = false;
  run_app->add_flag("--no-recall", no_recall,
                    "skip the recall figure (one extra pass over q.k on the CPU)");

  psa::tools::PresetsOptions presets;
  SharedText presets_text;
  CLI::App* presets_app = app.add_subcommand(
      "presets",
      "list models and presets with their FLOP density on a shape (topk: computed; "
      "thresholdbound: measured on the workload)");
  add_problem_options(presets_app, &presets.problem, &presets_text, false);
  bool no_measure = false;
  presets_app->add_flag("--no-measure", no_measure,
                        "do not run the planner for thresholdbound presets");
  presets_app->add_flag("--json", presets.json, "print a JSON array instead of the table");

  psa::tools::PlanOptions plan;
  SharedText plan_text;
  CLI::App* plan_app =
      app.add_subcommand("plan", "write the level map of one head's plan as a PNG image");
  add_problem_options(plan_app, &plan.problem, &plan_text, true);
  plan_app->add_option("--out,-o", plan.out, "PNG file to write")->capture_default_str();
  plan_app->add_option("--head", plan.head, "query head to draw")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  plan_app->add_flag("--binary", plan.binary,
                     "draw the binary block-sparse plan at PSA's density instead");

  psa::tools::SweepOptions sweep;
  SharedText sweep_text;
  CLI::App* sweep_app = app.add_subcommand(
      "sweep",
      "relative error vs density for PSA and binary block-sparse over a range of "
      "quotas; writes CSV and a PNG plot");
  add_problem_options(sweep_app, &sweep.problem, &sweep_text, true);
  sweep_app->add_option("--csv", sweep.csv, "CSV file to write")->capture_default_str();
  sweep_app->add_option("--png", sweep.png, "PNG plot to write")->capture_default_str();
  sweep_app->add_option("--points", sweep.points, "number of quota settings")
      ->check(CLI::Range(2, 200))
      ->capture_default_str();
  sweep_app
      ->add_option("--min-scale", sweep.min_scale,
                   "smallest factor applied to the preset's level ends")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  sweep_app
      ->add_option("--max-scale", sweep.max_scale,
                   "largest factor applied to the preset's level ends")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();

  CLI11_PARSE(app, argc, argv);

  if (run_app->parsed()) {
    if (!finish_problem_options(&run.problem, run_text)) return psa::tools::kExitError;
    run.recall = !no_recall;
    return psa::tools::run_command(run);
  }
  if (presets_app->parsed()) {
    if (!finish_problem_options(&presets.problem, presets_text)) return psa::tools::kExitError;
    presets.measure = !no_measure;
    return psa::tools::presets_command(presets);
  }
  if (plan_app->parsed()) {
    if (!finish_problem_options(&plan.problem, plan_text)) return psa::tools::kExitError;
    return psa::tools::plan_command(plan);
  }
  if (sweep_app->parsed()) {
    if (!finish_problem_options(&sweep.problem, sweep_text)) return psa::tools::kExitError;
    if (sweep.min_scale >= sweep.max_scale) {
      std::fprintf(stderr, "psa: error: --min-scale (%g) must be below --max-scale (%g)\n",
                   sweep.min_scale, sweep.max_scale);
      return psa::tools::kExitError;
    }
    return psa::tools::sweep_command(sweep);
  }
  return psa::tools::kExitError;
}
