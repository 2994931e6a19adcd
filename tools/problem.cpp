#include "problem.h"

#include <cmath>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <sstream>

namespace psa::tools {

Status parse_shape(std::array<int64_t, 3>* shape, const std::string& text) {
  const Status bad = invalid_argument(
      "--shape must be three positive integers T,H,W (e.g. 8,16,16), got '" + text + "'");
  std::vector<std::string> items;
  size_t begin = 0;
  while (true) {
    const size_t comma = text.find(',', begin);
    items.push_back(text.substr(begin, comma == std::string::npos ? comma : comma - begin));
    if (comma == std::string::npos) break;
    begin = comma + 1;
  }
  if (items.size() != 3) return bad;
  std::array<int64_t, 3> parsed = {};
  for (size_t i = 0; i < 3; ++i) {
    const std::string& item = items[i];
    if (item.empty() || item.size() > 9 ||
        !std::all_of(item.begin(), item.end(), [](char c) { return c >= '0' && c <= '9'; })) {
      return bad;
    }
    parsed[i] = std::stoll(item);
    if (parsed[i] <= 0) return bad;
  }
  *shape = parsed;
  return Status();
}

Status check_sequence_length(const ProblemOptions& options) {
  constexpr int64_t kMaxSequence = (int64_t{1} << 31) - 1;
  const auto& s = options.shape;
  int64_t plane = 0, video = 0, total = 0;
  const bool overflow = __builtin_mul_overflow(s[1], s[2], &plane) ||
                        __builtin_mul_overflow(plane, s[0], &video) ||
                        __builtin_add_overflow(video, options.text_len, &total);
  if (overflow || total > kMaxSequence) {
    return invalid_argument(
        "--shape " + std::to_string(s[0]) + "," + std::to_string(s[1]) + "," +
        std::to_string(s[2]) + " with --text " + std::to_string(options.text_len) + " gives " +
        (overflow ? std::string("more than 2^63") : "L = " + std::to_string(total)) +
        " tokens; psa attends at most 2^31 - 1 = " + std::to_string(kMaxSequence));
  }
  return Status();
}

Status load_presets(PresetLibrary* library, const std::string& presets_file) {
  if (presets_file.empty()) return PresetLibrary::load_builtin(library);
  return PresetLibrary::load_file(library, presets_file);
}

Method method_from_preset(const Preset& preset) {
  Method m;
  m.label = preset.model + ":" + preset.name;
  m.config = preset.config;
  m.rearrange = preset.use_rearrange ? preset.rearrange : RearrangeMethod::kNone;
  m.tile = {preset.tile_size[0], preset.tile_size[1], preset.tile_size[2]};
  m.dense = preset.dense;
  return m;
}

Method default_method() {
  Method m;
  m.label = "default";
  m.config = default_config();
  return m;
}

Status resolve_method(Method* method, const ProblemOptions& options) {
  if (options.preset.empty() && options.presets_file.empty()) {
    *method = default_method();
    return Status();
  }
  // A file given is read even without --preset, so that a path that cannot be read says so.
  PresetLibrary library;
  PSA_RETURN_IF_ERROR(load_presets(&library, options.presets_file));
  if (options.preset.empty()) {
    return invalid_argument("--presets-file " + options.presets_file +
                            " needs --preset model:name to choose one of its presets (psa "
                            "presets --presets-file " + options.presets_file + " lists them)");
  }
  const Preset* preset = nullptr;
  PSA_RETURN_IF_ERROR(library.find(&preset, options.preset));
  *method = method_from_preset(*preset);
  return Status();
}

namespace {

// ".10" style for a fraction: short enough for a one-line summary.
std::string fraction(double v) {
  char buffer[16];
  std::snprintf(buffer, sizeof(buffer), "%.2f", v);
  const std::string s = buffer;
  return s.rfind("0.", 0) == 0 ? s.substr(1) : s;
}

}  // namespace

std::string describe_method(const Method& method) {
  if (method.dense) return "dense attention (baseline)";
  const Config& c = method.config;
  std::ostringstream os;
  os << plan_mode_name(c.mode) << ", block " << c.block_m << "x" << c.block_n << ", ends "
     << fraction(c.ends[0]) << "/" << fraction(c.ends[1]) << "/" << fraction(c.ends[2]) << "/"
     << fraction(c.ends[3]) << ", rearrange " << rearrange_method_name(method.rearrange);
  if (c.sim_cap) {
    os << ", sim cap " << fraction(c.sim_thresholds[0]) << "/" << fraction(c.sim_thresholds[1])
       << "/" << fraction(c.sim_thresholds[2]);
  }
  return os.str();
}

WorkloadSpec workload_spec(const ProblemOptions& options, DType dtype) {
  WorkloadSpec spec;
  spec.frames = options.shape[0];
  spec.height = options.shape[1];
  spec.width = options.shape[2];
  spec.heads = options.heads;
  spec.head_dim = options.head_dim;
  spec.text_len = options.text_len;
  spec.text_position = options.text_position;
  spec.seed = options.seed;
  spec.dtype = dtype;
  return spec;
}

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

double elapsed_ms(int64_t start_ns) { return static_cast<double>(now_ns() - start_ns) * 1e-6; }

Status prepare_inputs(Inputs* inputs, const ProblemOptions& options, const Method& method,
                      DType dtype) {
  inputs->spec = workload_spec(options, dtype);
  if (!inputs->workload.q.defined()) {
    const int64_t start = now_ns();
    PSA_RETURN_IF_ERROR(generate_workload(&inputs->workload, inputs->spec));
    inputs->workload_ms = elapsed_ms(start);
  }

  inputs->config = method.config;
  inputs->config.text_len = options.text_len;
  inputs->config.text_position = options.text_position;
  inputs->config.seed = options.seed;  // one --seed drives the workload and the estimator's draws
  inputs->perm.clear();
  inputs->inverse.clear();
  if (method.rearrange == RearrangeMethod::kNone) {
    inputs->q = inputs->workload.q;
    inputs->k = inputs->workload.k;
    inputs->v = inputs->workload.v;
    inputs->rearrange_ms = 0.0;
    return Status();
  }

  const int64_t start = now_ns();
  RearrangeSpec rs;
  rs.method = method.rearrange;
  rs.frames = options.shape[0];
  rs.height = options.shape[1];
  rs.width = options.shape[2];
  rs.tile_t = method.tile[0];
  rs.tile_h = method.tile[1];
  rs.tile_w = method.tile[2];
  rs.text_len = options.text_len;
  rs.text_position = options.text_position;
  const int64_t n = rs.num_tokens();
  inputs->perm.assign(static_cast<size_t>(n), 0);
  inputs->inverse.assign(static_cast<size_t>(n), 0);
  PSA_RETURN_IF_ERROR(make_permutation(inputs->perm.data(), rs));
  PSA_RETURN_IF_ERROR(invert_permutation(inputs->inverse.data(), inputs->perm.data(), n));
  inputs->config.text_position = rearranged_text_position(rs);

  const Workload& w = inputs->workload;
  inputs->q = HostTensor(w.q.dtype(), w.q.shape());
  inputs->k = HostTensor(w.k.dtype(), w.k.shape());
  inputs->v = HostTensor(w.v.dtype(), w.v.shape());
  PSA_RETURN_IF_ERROR(permute_tokens(inputs->q.view(), w.q.view(), inputs->perm.data()));
  PSA_RETURN_IF_ERROR(permute_tokens(inputs->k.view(), w.k.view(), inputs->perm.data()));
  PSA_RETURN_IF_ERROR(permute_tokens(inputs->v.view(), w.v.view(), inputs->perm.data()));
  inputs->rearrange_ms = elapsed_ms(start);
  return Status();
}

Status permute_sequence(HostTensor* out, const HostTensor& in, const std::vector<int64_t>& perm) {
  if (perm.empty()) {
    *out = in;
    return Status();
  }
  const std::vector<int64_t>& s = in.shape();
  if (s.size() != 3 && s.size() != 4) {
    return invalid_argument("permute_sequence: expected a (B, H, L, D) or (B, H, L) tensor");
  }
  *out = HostTensor(in.dtype(), s);
  // A (B, H, L) tensor is viewed as (B, H, L, 1) so that the rank-4 token permutation applies.
  const int64_t last = s.size() == 4 ? s[3] : 1;
  const TensorView src =
      make_view(const_cast<HostTensor&>(in).data<void>(), in.dtype(), {s[0], s[1], s[2], last});
  const TensorView dst = make_view(out->data<void>(), out->dtype(), {s[0], s[1], s[2], last});
  return permute_tokens(dst, src, perm.data());
}

Config binary_config(const Config& psa, double quota) {
  Config c = psa;
  c.mode = PlanMode::kTopK;
  const double e = std::clamp(quota, 0.0, 1.0);
  c.ends = {e, e, e, e};
  c.sim_cap = false;  // caps only lower pooled levels; binary plans have none
  return c;
}

Status match_binary_density(BinaryMatch* match, const Config& psa, double psa_density,
                            int64_t seq_k, const PlanDensity& plan_density) {
  const double nk = std::ceil(static_cast<double>(seq_k) / psa.block_n);
  // A row keeps floor(V * quota) blocks of the V it sees (V <= Nk), so the density steps at
  // quotas k / V; two distinct steps are at least 1 / Nk^2 apart, and bisecting down to half that
  // leaves the two densities on either side of PSA's (Nk = 32: 11 plans).
  const double resolution = 0.5 / (nk * nk);
  double lo = 0.0, hi = 1.0, d_lo = 0.0, d_hi = 0.0;
  PSA_RETURN_IF_ERROR(plan_density(binary_config(psa, lo), &d_lo));
  PSA_RETURN_IF_ERROR(plan_density(binary_config(psa, hi), &d_hi));
  double quota = 0.0, density = 0.0;
  if (d_lo >= psa_density) {
    quota = lo, density = d_lo;  // the forced blocks alone reach PSA's density
  } else if (d_hi <= psa_density) {
    quota = hi, density = d_hi;
  } else {
    // Invariant: d_lo <= psa_density < d_hi.
    while (hi - lo > resolution) {
      const double mid = 0.5 * (lo + hi);
      double d_mid = 0.0;
      PSA_RETURN_IF_ERROR(plan_density(binary_config(psa, mid), &d_mid));
      if (d_mid <= psa_density) {
        lo = mid, d_lo = d_mid;
      } else {
        hi = mid, d_hi = d_mid;
      }
    }
    const bool below_is_nearer = psa_density - d_lo < d_hi - psa_density;
    quota = below_is_nearer ? lo : hi;
    density = below_is_nearer ? d_lo : d_hi;
  }
  // Densities are sums of block fractions; the slack absorbs their rounding.
  constexpr double kDensitySlack = 1e-9;
  match->config = binary_config(psa, quota);
  match->density = density;
  match->equal = std::abs(density - psa_density) <= 0.5 / nk + kDensitySlack;
  return Status();
}

Config scaled_config(const Config& config, double scale) {
  Config c = config;
  for (double& e : c.ends) e = std::min(1.0, e * scale);
  return c;
}

}  // namespace psa::tools
