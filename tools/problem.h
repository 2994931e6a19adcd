// What the `psa` subcommands share: the workload options, the method a preset selects, and the
// prepared inputs (workload in raster order, its rearrangement, and q, k, v in planning order).
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "psa/psa.h"

namespace psa::tools {

// The embedded default (WORKLOADS.md): 8 x 16 x 16 video tokens, 4 heads of dimension 64.
struct ProblemOptions {
  std::array<int64_t, 3> shape = {8, 16, 16};  // T, H, W
  int64_t heads = 4;
  int64_t head_dim = 64;
  int64_t text_len = 0;
  TextPosition text_position = TextPosition::kStart;
  uint64_t seed = 0;
  std::string preset;        // "model:name" or "model"; empty selects psa::default_config()
  std::string presets_file;  // empty selects the built-in library
};

// Parses "T,H,W" (three positive integers) into `shape`.
Status parse_shape(std::array<int64_t, 3>* shape, const std::string& text);
// The sequence L = text_len + T*H*W must fit the library's 32-bit row indices (2^31 - 1).
Status check_sequence_length(const ProblemOptions& options);

// The attention method a preset selects, with the workload's text tokens filled in.
struct Method {
  std::string label;  // "default" or "model:name"
  Config config;
  RearrangeMethod rearrange = RearrangeMethod::kNone;
  std::array<int64_t, 3> tile = {4, 8, 8};  // kTiles only
  bool dense = false;
};

Status load_presets(PresetLibrary* library, const std::string& presets_file);
Method method_from_preset(const Preset& preset);
Method default_method();
// The method of options.preset (the default when empty), from options.presets_file or the
// built-in library.
Status resolve_method(Method* method, const ProblemOptions& options);
// "topk, block 128x64, ends .10/.15/.15/.35, rearrange gilbert, sim cap .70/.65/.60"
std::string describe_method(const Method& method);

// The workload and its planning-order copies. When the method rearranges, q, k, v hold the
// rearranged tokens and perm / inverse map between the two orders; otherwise they are the
// workload's tensors and perm is empty.
struct Inputs {
  WorkloadSpec spec;
  Workload workload;
  std::vector<int64_t> perm, inverse;
  HostTensor q, k, v;  // planning order
  Config config;       // the method's config with text_len and the planning text position
  double workload_ms = 0.0;
  double rearrange_ms = 0.0;
};

WorkloadSpec workload_spec(const ProblemOptions& options, DType dtype);
// Generates the workload (or reuses `workload` when it is already defined) and rearranges it.
Status prepare_inputs(Inputs* inputs, const ProblemOptions& options, const Method& method,
                      DType dtype = DType::kFloat32);
// out[b, h, i] = in[b, h, perm[i]] along dim 2 of a (B, H, L, D) or (B, H, L) tensor; a copy when
// `perm` is empty. With inputs.inverse it restores raster order; with inputs.perm it rearranges.
Status permute_sequence(HostTensor* out, const HostTensor& in, const std::vector<int64_t>& perm);

// Binary block-sparse attention: topk over levels 1 and 0 only, every level's interval ending at
// `quota`; the rest of `psa` (blocks, text, causal) unchanged.
Config binary_config(const Config& psa, double quota);

// Binary block-sparse attention at PSA's FLOP density, from the same scores: methods are compared
// at equal density. The planner forces blocks on top of a topk quota (each row's best block, text
// blocks, the causal diagonal), so the quota is searched rather than set to PSA's density:
// `plan_density` plans a candidate config and returns its density. Densities rise with the quota;
// the one nearest PSA's is kept, a tie going to the larger (binary is never given less compute
// through rounding).
struct BinaryMatch {
  Config config;
  double density = 0.0;
  bool equal = false;  // within half a key block per row of PSA's density
};
using PlanDensity = std::function<Status(const Config& config, double* density)>;
Status match_binary_density(BinaryMatch* match, const Config& psa, double psa_density,
                            int64_t seq_k, const PlanDensity& plan_density);
// `config` with every level end multiplied by `scale`, clamped to 1 (sweep).
Config scaled_config(const Config& config, double scale);

// Milliseconds elapsed since `start` (std::chrono::steady_clock).
double elapsed_ms(int64_t start_ns);
int64_t now_ns();

}  // namespace psa::tools
