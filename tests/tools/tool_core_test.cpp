// The parts of the `psa` tool behind its subcommands, called directly: what a table of numbers
// from the tool claims must hold for the plans it made.
#include <gtest/gtest.h>

#include <cmath>

#include "common/test_util.h"
#include "problem.h"
#include "runner.h"

namespace psa::tools {
namespace {

// `psa run --preset CogVideo_5b:psa_balanced --text 226` printed PSA density 0.211 next to a
// binary baseline of 0.317 and called the comparison "at equal density": the binary quota ignored
// the text blocks the planner forces on top of it.
TEST(BinaryBaseline, GetsPsaDensityWhenTextBlocksAreForced) {
  for (const char* position : {"start", "end"}) {
    ProblemOptions options;
    options.shape = {4, 16, 16};
    options.text_len = 226;
    options.text_position = std::string(position) == "end" ? TextPosition::kEnd
                                                           : TextPosition::kStart;
    options.preset = "CogVideo_5b:psa_balanced";
    Method method;
    ASSERT_TRUE(resolve_method(&method, options).ok());
    Inputs inputs;
    ASSERT_TRUE(prepare_inputs(&inputs, options, method).ok());
    HostTensor scores;
    ASSERT_TRUE(estimate_on_cpu(&scores, inputs, inputs.config).ok());
    HostPlan plan;
    PlanStats stats;
    ASSERT_TRUE(plan_on_cpu(&plan, &stats, scores, inputs, inputs.config).ok());

    BinaryMatch match;
    const Status st = match_binary_on_cpu(&match, scores, inputs, inputs.config, stats.density);
    ASSERT_TRUE(st.ok()) << st.to_string();
    HostPlan binary_plan;
    PlanStats binary_stats;
    ASSERT_TRUE(plan_on_cpu(&binary_plan, &binary_stats, scores, inputs, match.config).ok());
    EXPECT_DOUBLE_EQ(binary_stats.density, match.density) << position;
    for (double level_fraction : {binary_stats.level_fraction[2], binary_stats.level_fraction[3],
                                  binary_stats.level_fraction[4]}) {
      EXPECT_EQ(level_fraction, 0.0) << "a binary plan has levels 1 and 0 only";
    }
    // Equal density: within half a key block per row.
    const int64_t nk = (inputs.q.shape()[2] + inputs.config.block_n - 1) / inputs.config.block_n;
    EXPECT_LE(std::abs(match.density - stats.density), 0.5 / static_cast<double>(nk))
        << "text at the " << position << ": PSA " << stats.density << ", binary "
        << match.density;
    EXPECT_TRUE(match.equal) << position;
  }
}

// A PSA density below anything binary block-sparse can plan (each row keeps its forced blocks)
// is reported as not matched rather than compared.
TEST(BinaryBaseline, SaysWhenItCannotGoAsLowAsPsa) {
  ProblemOptions options;
  options.shape = {2, 8, 16};
  options.text_len = 100;
  Method method = default_method();
  Inputs inputs;
  ASSERT_TRUE(prepare_inputs(&inputs, options, method).ok());
  HostTensor scores;
  ASSERT_TRUE(estimate_on_cpu(&scores, inputs, inputs.config).ok());
  BinaryMatch match;
  ASSERT_TRUE(match_binary_on_cpu(&match, scores, inputs, inputs.config, 0.01).ok());
  EXPECT_FALSE(match.equal);
  EXPECT_GT(match.density, 0.01);
}

}  // namespace
}  // namespace psa::tools
