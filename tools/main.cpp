// psa: the command-line tool. Subcommands run the pipeline on the embedded video-DiT-like
// workload (run), list presets with their densities (presets), draw a plan's level map (plan) and
// sweep relative error against density for PSA and binary block-sparse attention (sweep).
#include <CLI/CLI.hpp>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <new>
#include <stdexcept>
#include <string>

#include "commands.h"

namespace {

using psa::tools::ProblemOptions;

constexpr const char* kSubcommands[] = {"run", "presets", "plan", "sweep"};
// Largest --heads, --head-dim, --text, --head: the library indexes rows and heads with int32.
constexpr int64_t kMaxCount = (int64_t{1} << 31) - 1;

// Validators whose messages say what was expected in plain words; CLI11 prefixes the option name:
// "--heads: must be an integer in [1, 2147483647], got '0'".
CLI::Validator integer_in(int64_t lo, int64_t hi) {
  const std::string expected =
      "an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]";
  return CLI::Validator(
      [lo, hi, expected](std::string& text) -> std::string {
        char* end = nullptr;
        errno = 0;
        const long long value = std::strtoll(text.c_str(), &end, 10);
        if (text.empty() || *end != '\0' || errno == ERANGE || value < lo || value > hi) {
          return "must be " + expected + ", got '" + text + "'";
        }
        return std::string();
      },
      expected);
}

// A seed: digits only, so that "-1" is refused instead of wrapping to 2^64 - 1.
CLI::Validator seed_value() {
  const std::string expected = "an integer in [0, 2^64 - 1]";
  return CLI::Validator(
      [expected](std::string& text) -> std::string {
        const bool digits = !text.empty() && text.find_first_not_of("0123456789") == std::string::npos;
        errno = 0;
        if (digits) std::strtoull(text.c_str(), nullptr, 10);
        if (!digits || errno == ERANGE) return "must be " + expected + ", got '" + text + "'";
        return std::string();
      },
      expected);
}

CLI::Validator positive_number() {
  return CLI::Validator(
      [](std::string& text) -> std::string {
        char* end = nullptr;
        const double value = std::strtod(text.c_str(), &end);
        if (text.empty() || *end != '\0' || !(value > 0.0) || value == HUGE_VAL) {
          return "must be a positive number, got '" + text + "'";
        }
        return std::string();
      },
      "a positive number");
}

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
      ->check(integer_in(1, kMaxCount))
      ->capture_default_str();
  app->add_option("--head-dim", p->head_dim, "head dimension")
      ->check(integer_in(1, kMaxCount))
      ->capture_default_str();
  app->add_option("--text", p->text_len, "text tokens added to the video tokens")
      ->check(integer_in(0, kMaxCount))
      ->capture_default_str();
  app->add_option("--text-position", text->text_position, "where the text tokens are: start or end")
      ->check(CLI::IsMember({"start", "end"}))
      ->capture_default_str();
  app->add_option("--seed", p->seed, "workload and estimator seed")
      ->check(seed_value())
      ->capture_default_str();
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
  psa::Status st = psa::tools::parse_shape(&p->shape, text.shape);
  if (st.ok()) st = psa::tools::check_sequence_length(*p);
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
      ->check(integer_in(1, 1000))
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
      ->check(integer_in(0, kMaxCount))
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
      ->check(integer_in(2, 200))
      ->capture_default_str();
  sweep_app
      ->add_option("--min-scale", sweep.min_scale,
                   "smallest factor applied to the preset's level ends")
      ->check(positive_number())
      ->capture_default_str();
  sweep_app
      ->add_option("--max-scale", sweep.max_scale,
                   "largest factor applied to the preset's level ends")
      ->check(positive_number())
      ->capture_default_str();

  // CLI11 answers a word that is no subcommand with "A subcommand is required".
  if (argc > 1 && argv[1][0] != '-') {
    bool known = false;
    for (const char* name : kSubcommands) known = known || std::string(argv[1]) == name;
    if (!known) {
      return app.exit(CLI::ParseError("unknown subcommand '" + std::string(argv[1]) +
                                          "'; expected run, presets, plan or sweep",
                                      CLI::ExitCodes::ExtrasError));
    }
  }
  CLI11_PARSE(app, argc, argv);

  auto dispatch = [&]() -> int {
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
  };
  // The library returns memory failures as a Status; the tool's own buffers (outputs, references,
  // copies) throw, and a problem too large for this machine ends here with a message.
  try {
    return dispatch();
  } catch (const std::bad_alloc&) {
  } catch (const std::length_error&) {
  }
  return psa::tools::report_error(psa::Status(
      psa::StatusCode::kOutOfMemory,
      "the problem needs more host memory than is available; try a smaller --shape or --heads"));
}
