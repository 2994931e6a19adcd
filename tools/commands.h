// The subcommands of the `psa` tool. Each returns the process exit status: 0 on success, 1 when
// a library call or a file fails (the message goes to stderr), 2 when the CUDA backend was asked
// for but not built.
#pragma once

#include <string>

#include "problem.h"

namespace psa::tools {

constexpr int kExitError = 1;
constexpr int kExitNotBuilt = 2;

struct RunOptions {
  ProblemOptions problem;
  std::string device = "cpu";  // cpu | cuda
  std::string dtype = "auto";  // auto (fp32 on the CPU, bf16 on the GPU) | fp32 | fp16 | bf16
  int repeat = 1;              // timed runs per stage; the median is reported
  bool json = false;
  bool recall = true;  // the kept fraction of dense attention mass (one extra pass over q.k)
};
int run_command(const RunOptions& options);

struct PresetsOptions {
  ProblemOptions problem;  // the shape densities are quoted for; preset and seed as given
  bool measure = true;     // run estimator + planner for thresholdbound presets
  bool json = false;
};
int presets_command(const PresetsOptions& options);

struct PlanOptions {
  ProblemOptions problem;
  std::string out = "psa_plan.png";
  int64_t head = 0;
  int64_t batch = 0;
  bool binary = false;  // draw the binary block-sparse plan at PSA's density instead
};
int plan_command(const PlanOptions& options);

struct SweepOptions {
  ProblemOptions problem;
  std::string csv = "psa_sweep.csv";
  std::string png = "psa_sweep.png";
  int points = 8;
  double min_scale = 0.25;  // factors applied to the preset's level ends
  double max_scale = 3.0;
};
int sweep_command(const SweepOptions& options);

// Prints "psa: error: <status>" to stderr and returns the matching exit status.
int report_error(const Status& status);

}  // namespace psa::tools
