// The embedded video-DiT-like workload (WORKLOADS.md, "The embedded default").
//
// Per batch element, every token gets a content vector of kChannels values:
//   video token (t, y, x): a smooth space-time random field (random Fourier features: a sum of
//     cosine plane waves with Gaussian-distributed frequencies, i.e. a Gaussian process with a
//     squared-exponential kernel) at two scales, plus a little white noise;
//   text token: its own i.i.d. Gaussian content.
// Per head, random projections map content to q, k, v. q and k get a per-head positional
// direction (shared by q and k, the way trained models make RoPE produce distance decay), are
// RMS-normalised per row, multiplied by a per-head gain, and rotated by a 3D RoPE whose head
// dimension split defaults to Wan's 44/42/42 of 128. Text tokens are left unrotated, which is the
// same as giving them position (0, 0, 0).
//
// Head kinds (fixed per key/value head, shared by its query heads under GQA):
//   local:   strong positional direction and a high gain, so RoPE distance decay dominates;
//   content: no positional direction, q and k projections correlated, moderate gain: attention
//            follows content similarity and reaches far;
//   sink:    a few tokens whose keys point along a direction confined to the lowest-frequency
//            RoPE pairs (nearly position-invariant), which every query also carries, so those
//            keys align with every query wherever it is.
//
// All randomness is Philox keyed by (spec.seed, stream id, indices): no global RNG state.
#include "psa/workload.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/random.h"
#include "cpu/cpu_util.h"

namespace psa {

namespace {

constexpr double kPi = 3.14159265358979323846;

// ---- Content field ---------------------------------------------------------------------------
constexpr int kChannels = 32;      // content vector size per token
constexpr int kWavesPerScale = 6;  // plane waves per channel and scale
// Correlation lengths (standard deviation of the kernel) in tokens / frames: a fine scale of a
// few tokens and frames (texture, edges) and a coarse scale (objects, background regions).
constexpr double kFineSpace = 2.0, kFineTime = 1.5;
constexpr double kCoarseSpace = 6.0, kCoarseTime = 4.0;
constexpr double kFineWeight = 0.6;   // variance share of the fine scale; coarse gets the rest
constexpr double kWhiteNoise = 0.25;  // std of the per-token white noise (field has unit var)

// ---- Heads -----------------------------------------------------------------------------------
constexpr double kRopeBase = 10000.0;
// Head kinds cycle through this pattern from a seeded offset: half local, a third content, one
// sink in six, e.g. offset 2 with 4 heads gives local, sink, local, content.
constexpr HeadKind kKindPattern[] = {HeadKind::kLocal, HeadKind::kContent, HeadKind::kLocal,
                                     HeadKind::kSink,  HeadKind::kLocal,   HeadKind::kContent};
constexpr int kKindPatternSize = 6;

struct KindParams {
  double position;        // weight of the positional direction relative to the content projection
  double logit_range;     // gain^2 * sqrt(D): the largest |logit| at softmax_scale 1/sqrt(D)
  double qk_correlation;  // correlation of the q and k projections of the same content
  double sink_query;      // weight of the sink direction in every query (sink heads)
};
// Tuned so that the mean over heads of the local-mass statistic is about 0.7. Measured: 8x16x16,
// 4 heads of 64: 0.68 at seed 0, 0.62 to 0.78 over seeds 0..19 (mean 0.71); 16x30x52, 12 heads
// of 128, seed 0: 0.68 (local heads 0.86 to 0.98, content 0.34, sink 0.55).
constexpr KindParams kLocalParams{4.0, 48.0, 0.6, 0.0};
constexpr KindParams kContentParams{0.0, 7.0, 0.9, 0.0};
constexpr KindParams kSinkParams{1.5, 20.0, 0.6, 1.0};
// Sink heads: 1 to kMaxSinkTokens sink tokens; their pre-normalisation key is dominated by the
// sink direction (weight kSinkKeyWeight against a content part of RMS about 1).
constexpr int kMaxSinkTokens = 3;
constexpr double kSinkKeyWeight = 4.0;
// A RoPE pair counts as low-frequency (position-invariant) when its angle over the whole extent
// of its axis stays below this, e.g. theta = 2.1e-4 over 16 frames: 0.003 rad.
constexpr double kInvariantAngle = 0.3;

// The longest sequence the attention API accepts (2^31 - 1 rows, 32-bit row indices): a longer
// workload could not be run.
constexpr int64_t kMaxSequence = (int64_t{1} << 31) - 1;

// ---- Calibration statistic -------------------------------------------------------------------
constexpr int kSampledQueries = 64;
constexpr double kLocalFraction = 0.15;

// Philox streams, one per kind of draw, so that changing one never shifts another.
enum Stream : uint32_t {
  kStreamField = 1,
  kStreamWhiteNoise,
  kStreamText,
  kStreamKeyProjection,
  kStreamValueProjection,
  kStreamQueryProjection,
  kStreamPosition,
  kStreamSinkDirection,
  kStreamSinkTokens,
  kStreamHeadKind,
  kStreamQuerySample,
};

// Four 32-bit draws for (stream, a, b, c) under spec.seed.
detail::Philox4x32 draw(uint64_t seed, uint32_t stream, uint64_t a, uint32_t b, uint32_t c) {
  return detail::philox4x32(static_cast<uint32_t>(a), static_cast<uint32_t>(a >> 32), b,
                            c ^ (stream << 24), static_cast<uint32_t>(seed),
                            static_cast<uint32_t>(seed >> 32));
}
// Uniform in [0, 1) with 53 random bits from two 32-bit words.
double to_unit(uint32_t hi, uint32_t lo) {
  const uint64_t bits = (static_cast<uint64_t>(hi) << 21) ^ lo;
  return static_cast<double>(bits & ((1ull << 53) - 1)) / static_cast<double>(1ull << 53);
}
double uniform(uint64_t seed, uint32_t stream, uint64_t a, uint32_t b = 0, uint32_t c = 0) {
  const detail::Philox4x32 r = draw(seed, stream, a, b, c);
  return to_unit(r.v[0], r.v[1]);
}
// Standard normal (Box-Muller) from one Philox block.
double normal(uint64_t seed, uint32_t stream, uint64_t a, uint32_t b = 0, uint32_t c = 0) {
  const detail::Philox4x32 r = draw(seed, stream, a, b, c);
  const double u1 = 1.0 - to_unit(r.v[0], r.v[1]);
  const double u2 = to_unit(r.v[2], r.v[3]);
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * kPi * u2);
}

const KindParams& params_of(HeadKind kind) {
  switch (kind) {
    case HeadKind::kLocal:
      return kLocalParams;
    case HeadKind::kContent:
      return kContentParams;
    case HeadKind::kSink:
      return kSinkParams;
  }
  return kLocalParams;
}

HeadKind kind_of_kv_head(uint64_t seed, int64_t kv_head) {
  const uint32_t offset = draw(seed, kStreamHeadKind, 0, 0, 0).v[0] % kKindPatternSize;
  return kKindPattern[(offset + static_cast<uint64_t>(kv_head)) % kKindPatternSize];
}

// The geometry every stage shares.
struct Layout {
  int64_t frames, height, width, video, text, length, text_base, video_base;
  int64_t heads, heads_kv, dim;
  std::array<int64_t, 3> split;  // t, y, x shares of the head dimension
  bool is_text(int64_t i) const { return i >= text_base && i < text_base + text; }
  // (t, y, x) of video token i (i in [video_base, video_base + video)).
  void coords(int64_t i, int64_t* t, int64_t* y, int64_t* x) const {
    const int64_t r = i - video_base;
    *x = r % width;
    *y = (r / width) % height;
    *t = r / (width * height);
  }
};

// Per RoPE pair p (D/2 of them): its axis (0 t, 1 y, 2 x), angular frequency, and the cosine and
// sine of its angle at every position along that axis, (D/2, max extent), since the angles are
// the same for every head.
struct Rope {
  std::vector<int> axis;
  std::vector<double> theta;
  int64_t max_extent = 0;
  std::vector<float> cos_table, sin_table;
};

Rope make_rope(const Layout& lay) {
  Rope rope;
  for (int a = 0; a < 3; ++a) {
    const int64_t pairs = lay.split[a] / 2;
    for (int64_t j = 0; j < pairs; ++j) {
      rope.axis.push_back(a);
      rope.theta.push_back(
          std::pow(kRopeBase, -2.0 * static_cast<double>(j) / static_cast<double>(lay.split[a])));
    }
  }
  rope.max_extent = std::max({lay.frames, lay.height, lay.width});
  const size_t entries = rope.theta.size() * static_cast<size_t>(rope.max_extent);
  rope.cos_table.resize(entries);
  rope.sin_table.resize(entries);
  for (size_t p = 0; p < rope.theta.size(); ++p) {
    for (int64_t pos = 0; pos < rope.max_extent; ++pos) {
      const double angle = rope.theta[p] * static_cast<double>(pos);
      rope.cos_table[p * static_cast<size_t>(rope.max_extent) + static_cast<size_t>(pos)] =
          static_cast<float>(std::cos(angle));
      rope.sin_table[p * static_cast<size_t>(rope.max_extent) + static_cast<size_t>(pos)] =
          static_cast<float>(std::sin(angle));
    }
  }
  return rope;
}

// Rotates row (D values) of video token i in place; text tokens stay unrotated.
void apply_rope(float* row, int64_t i, const Layout& lay, const Rope& rope) {
  if (lay.is_text(i)) return;
  int64_t pos[3];
  lay.coords(i, &pos[0], &pos[1], &pos[2]);
  for (size_t p = 0; p < rope.theta.size(); ++p) {
    const size_t at =
        p * static_cast<size_t>(rope.max_extent) + static_cast<size_t>(pos[rope.axis[p]]);
    const float c = rope.cos_table[at], s = rope.sin_table[at];
    const float x0 = row[2 * p], x1 = row[2 * p + 1];
    row[2 * p] = x0 * c - x1 * s;
    row[2 * p + 1] = x0 * s + x1 * c;
  }
}

// Scales row to RMS `gain` (norm gain * sqrt(D)).
void rms_normalise(float* row, int64_t dim, double gain) {
  double sum = 0.0;
  for (int64_t d = 0; d < dim; ++d) sum += static_cast<double>(row[d]) * row[d];
  const double rms = std::sqrt(sum / static_cast<double>(dim));
  const double scale = rms > 0.0 ? gain / rms : 0.0;
  for (int64_t d = 0; d < dim; ++d) row[d] = static_cast<float>(row[d] * scale);
}

// content: (L, kChannels) for batch element b.
void make_content(std::vector<float>& content, const Layout& lay, uint64_t seed, int64_t b) {
  content.assign(static_cast<size_t>(lay.length * kChannels), 0.0f);
  // Wave (channel ch, scale s, wave w): frequency (t, y, x) ~ N(0, 1/len^2), phase ~ U(0, 2 pi);
  // sqrt(2 weight / waves) * cos(.) summed gives a unit-variance field of that kernel.
  struct Wave {
    double ft, fy, fx, phase, amp;
  };
  std::vector<Wave> waves;
  waves.reserve(static_cast<size_t>(kChannels * 2 * kWavesPerScale));
  for (int ch = 0; ch < kChannels; ++ch) {
    for (int s = 0; s < 2; ++s) {
      const double space = s == 0 ? kFineSpace : kCoarseSpace;
      const double time = s == 0 ? kFineTime : kCoarseTime;
      const double weight = s == 0 ? kFineWeight : 1.0 - kFineWeight;
      for (int w = 0; w < kWavesPerScale; ++w) {
        const uint64_t id = (static_cast<uint64_t>(b) * kChannels + ch) * 2 + s;
        const uint32_t sub = static_cast<uint32_t>(w);
        waves.push_back({normal(seed, kStreamField, id, sub, 0) / time,
                         normal(seed, kStreamField, id, sub, 1) / space,
                         normal(seed, kStreamField, id, sub, 2) / space,
                         2.0 * kPi * uniform(seed, kStreamField, id, sub, 3),
                         std::sqrt(2.0 * weight / kWavesPerScale)});
      }
    }
  }
  cpu::parallel_for(lay.length, [&](int64_t i) {
    float* row = content.data() + i * kChannels;
    // Draws are keyed by (batch, text index) and (batch, raster index), so that a token's content
    // does not depend on where the other kind of token sits.
    if (lay.is_text(i)) {
      const uint64_t token = static_cast<uint64_t>(b * lay.text + (i - lay.text_base));
      for (int ch = 0; ch < kChannels; ++ch) {
        row[ch] = static_cast<float>(normal(seed, kStreamText, token, static_cast<uint32_t>(ch)));
      }
      return;
    }
    const uint64_t token = static_cast<uint64_t>(b * lay.video + (i - lay.video_base));
    int64_t t, y, x;
    lay.coords(i, &t, &y, &x);
    for (int ch = 0; ch < kChannels; ++ch) {
      double value =
          kWhiteNoise * normal(seed, kStreamWhiteNoise, token, static_cast<uint32_t>(ch));
      for (int k = 0; k < 2 * kWavesPerScale; ++k) {
        const Wave& wv = waves[static_cast<size_t>(ch * 2 * kWavesPerScale + k)];
        value += wv.amp * std::cos(wv.ft * t + wv.fy * y + wv.fx * x + wv.phase);
      }
      row[ch] = static_cast<float>(value);
    }
  });
}

// A (kChannels, D) Gaussian matrix (the transpose of a (D, kChannels) projection) scaled by
// 1/sqrt(kChannels), for (stream, head). Stored channel-major so that project() runs over d.
std::vector<float> projection(uint64_t seed, uint32_t stream, int64_t head, int64_t dim) {
  std::vector<float> w(static_cast<size_t>(dim * kChannels));
  const double scale = 1.0 / std::sqrt(static_cast<double>(kChannels));
  for (int64_t e = 0; e < dim * kChannels; ++e) {
    w[static_cast<size_t>(e)] = static_cast<float>(
        scale * normal(seed, stream, static_cast<uint64_t>(e), static_cast<uint32_t>(head)));
  }
  return w;
}

// out (D) = W c with W stored as (kChannels, D); the inner loop over d vectorises.
void project(float* out, const std::vector<float>& w, const float* c, int64_t dim) {
  for (int64_t d = 0; d < dim; ++d) out[d] = 0.0f;
  for (int ch = 0; ch < kChannels; ++ch) {
    const float* wr = w.data() + ch * dim;
    const float cv = c[ch];
    for (int64_t d = 0; d < dim; ++d) out[d] += wr[d] * cv;
  }
}

// q . k over D with kLanes independent partial sums, so that the loop vectorises without
// reassociating one long floating-point chain.
float dot_product(const float* a, const float* b, int64_t dim) {
  constexpr int kLanes = 8;
  float lanes[kLanes] = {};
  int64_t d = 0;
  for (; d + kLanes <= dim; d += kLanes) {
    for (int j = 0; j < kLanes; ++j) lanes[j] += a[d + j] * b[d + j];
  }
  float sum = 0.0f;
  for (; d < dim; ++d) sum += a[d] * b[d];
  for (int j = 0; j < kLanes; ++j) sum += lanes[j];
  return sum;
}

// Everything fixed per key/value head: its kind, projections and directions.
struct KvHead {
  HeadKind kind;
  double gain;
  std::vector<float> wk, wv;
  std::vector<float> position;  // (D) positional direction, unit RMS
  std::vector<float> sink;      // (D) sink direction (low-frequency pairs only), unit RMS
  std::vector<int64_t> sink_tokens;
};

KvHead make_kv_head(const Layout& lay, const Rope& rope, uint64_t seed, int64_t g) {
  KvHead head;
  head.kind = kind_of_kv_head(seed, g);
  const KindParams& kp = params_of(head.kind);
  head.gain = std::sqrt(kp.logit_range / std::sqrt(static_cast<double>(lay.dim)));
  head.wk = projection(seed, kStreamKeyProjection, g, lay.dim);
  head.wv = projection(seed, kStreamValueProjection, g, lay.dim);
  head.position.resize(static_cast<size_t>(lay.dim));
  head.sink.assign(static_cast<size_t>(lay.dim), 0.0f);
  for (int64_t d = 0; d < lay.dim; ++d) {
    head.position[static_cast<size_t>(d)] = static_cast<float>(
        normal(seed, kStreamPosition, static_cast<uint64_t>(d), static_cast<uint32_t>(g)));
  }
  if (head.kind != HeadKind::kSink) return head;

  const int64_t extent[3] = {lay.frames, lay.height, lay.width};
  bool any = false;
  for (size_t p = 0; p < rope.theta.size(); ++p) {
    if (rope.theta[p] * static_cast<double>(extent[rope.axis[p]] - 1) > kInvariantAngle) continue;
    any = true;
    for (int e = 0; e < 2; ++e) {
      head.sink[2 * p + e] = static_cast<float>(
          normal(seed, kStreamSinkDirection, 2 * p + e, static_cast<uint32_t>(g)));
    }
  }
  if (!any) head.sink = head.position;  // no invariant pair (enormous grids): any direction
  rms_normalise(head.sink.data(), lay.dim, 1.0);
  const detail::Philox4x32 r = draw(seed, kStreamSinkTokens, static_cast<uint64_t>(g), 0, 0);
  const int count = 1 + static_cast<int>(r.v[0] % kMaxSinkTokens);
  for (int s = 0; s < count; ++s) {
    const int64_t token =
        lay.video_base + static_cast<int64_t>(to_unit(r.v[1 + s], r.v[0]) * lay.video);
    head.sink_tokens.push_back(std::min(token, lay.video_base + lay.video - 1));
  }
  return head;
}

// Writes `row` (D floats) into head h, token i of tensor t (B, H, L, D) for batch b.
void store_row(HostTensor& t, int64_t b, int64_t h, int64_t i, const float* row) {
  const TensorView view = t.view();
  const int64_t base = cpu::offset_of(view, b, h, i);
  for (int64_t d = 0; d < view.shape[3]; ++d) cpu::store(view, base + d, row[d]);
}

// Mean over sampled video queries of batch 0 of the softmax mass (over video keys) on the 15%
// of video keys nearest in space-time.
void local_mass_statistic(WorkloadStats* stats, const Workload& wl, const Layout& lay,
                          uint64_t seed) {
  const int64_t near_count =
      std::max<int64_t>(1, static_cast<int64_t>(std::ceil(kLocalFraction * lay.video)));
  const int64_t samples = std::min<int64_t>(kSampledQueries, lay.video);
  std::vector<int64_t> queries(static_cast<size_t>(samples));
  for (int64_t s = 0; s < samples; ++s) {
    queries[static_cast<size_t>(s)] =
        static_cast<int64_t>(uniform(seed, kStreamQuerySample, static_cast<uint64_t>(s)) *
                             static_cast<double>(lay.video));
  }
  // near[s * video + r]: video key r is among the nearest 15% of sampled query s (ties in
  // distance broken by the lower raster index, so the set is deterministic).
  std::vector<uint8_t> near(static_cast<size_t>(samples * lay.video), 0);
  cpu::parallel_for(samples, [&](int64_t s) {
    const int64_t qr = queries[static_cast<size_t>(s)];
    int64_t qt, qy, qx;
    lay.coords(lay.video_base + qr, &qt, &qy, &qx);
    std::vector<std::pair<int64_t, int64_t>> order(static_cast<size_t>(lay.video));
    for (int64_t r = 0; r < lay.video; ++r) {
      int64_t t, y, x;
      lay.coords(lay.video_base + r, &t, &y, &x);
      order[static_cast<size_t>(r)] = {
          (t - qt) * (t - qt) + (y - qy) * (y - qy) + (x - qx) * (x - qx), r};
    }
    std::nth_element(order.begin(), order.begin() + (near_count - 1), order.end());
    for (int64_t n = 0; n < near_count; ++n) {
      near[static_cast<size_t>(s * lay.video + order[static_cast<size_t>(n)].second)] = 1;
    }
  });

  const TensorView qv = wl.q.view(), kv = wl.k.view();
  const int64_t group = lay.heads / lay.heads_kv;
  const double scale = 1.0 / std::sqrt(static_cast<double>(lay.dim));
  std::vector<double> mass(static_cast<size_t>(lay.heads * samples), 0.0);
  // Keys of each kv head as fp32, (video, D), read back from the output so that the figure
  // describes the tensors actually returned (after dtype rounding).
  std::vector<std::vector<float>> keys(static_cast<size_t>(lay.heads_kv));
  cpu::parallel_for(lay.heads_kv, [&](int64_t g) {
    auto& kg = keys[static_cast<size_t>(g)];
    kg.resize(static_cast<size_t>(lay.video * lay.dim));
    for (int64_t r = 0; r < lay.video; ++r) {
      const int64_t base = cpu::offset_of(kv, 0, g, lay.video_base + r);
      for (int64_t d = 0; d < lay.dim; ++d) {
        kg[static_cast<size_t>(r * lay.dim + d)] = static_cast<float>(cpu::load(kv, base + d));
      }
    }
  });
  cpu::parallel_for(lay.heads * samples, [&](int64_t hs) {
    const int64_t h = hs / samples, s = hs % samples;
    const auto& kg = keys[static_cast<size_t>(h / group)];
    std::vector<float> q(static_cast<size_t>(lay.dim));
    const int64_t qbase =
        cpu::offset_of(qv, 0, h, lay.video_base + queries[static_cast<size_t>(s)]);
    for (int64_t d = 0; d < lay.dim; ++d)
      q[static_cast<size_t>(d)] = static_cast<float>(cpu::load(qv, qbase + d));
    std::vector<double> logits(static_cast<size_t>(lay.video));
    double max_logit = -1e300;
    for (int64_t r = 0; r < lay.video; ++r) {
      const float dot = dot_product(q.data(), kg.data() + r * lay.dim, lay.dim);
      logits[static_cast<size_t>(r)] = scale * dot;
      max_logit = std::max(max_logit, logits[static_cast<size_t>(r)]);
    }
    double total = 0.0, local = 0.0;
    for (int64_t r = 0; r < lay.video; ++r) {
      const double p = std::exp(logits[static_cast<size_t>(r)] - max_logit);
      total += p;
      if (near[static_cast<size_t>(s * lay.video + r)]) local += p;
    }
    mass[static_cast<size_t>(hs)] = local / total;
  });

  stats->local_mass.assign(static_cast<size_t>(lay.heads), 0.0);
  stats->mean_local_mass = 0.0;
  for (int64_t h = 0; h < lay.heads; ++h) {
    double sum = 0.0;
    for (int64_t s = 0; s < samples; ++s) sum += mass[static_cast<size_t>(h * samples + s)];
    stats->local_mass[static_cast<size_t>(h)] = sum / static_cast<double>(samples);
    stats->mean_local_mass += stats->local_mass[static_cast<size_t>(h)];
  }
  stats->mean_local_mass /= static_cast<double>(lay.heads);
}

// Wan's 44/42/42 of 128 scaled to `dim`: y and x get 2 * floor(42 dim / 256) each, t the rest,
// e.g. dim 64 -> 24/20/20, dim 128 -> 44/42/42.
std::array<int64_t, 3> default_rope_split(int64_t dim) {
  const int64_t yx = 2 * ((42 * dim) / 256);
  return {dim - 2 * yx, yx, yx};
}

bool mul_overflows(int64_t a, int64_t b, int64_t* out) { return __builtin_mul_overflow(a, b, out); }

Status validate_spec(const WorkloadSpec& spec, int64_t* video, int64_t* total) {
  auto positive = [](int64_t v, const char* name) -> Status {
    if (v < 1)
      return invalid_argument(std::string("workload ") + name + " must be >= 1, got " +
                              std::to_string(v));
    return Status::ok_status();
  };
  PSA_RETURN_IF_ERROR(positive(spec.batch, "batch"));
  PSA_RETURN_IF_ERROR(positive(spec.frames, "frames"));
  PSA_RETURN_IF_ERROR(positive(spec.height, "height"));
  PSA_RETURN_IF_ERROR(positive(spec.width, "width"));
  PSA_RETURN_IF_ERROR(positive(spec.heads, "heads"));
  PSA_RETURN_IF_ERROR(positive(spec.head_dim, "head_dim"));
  if (spec.heads_kv < 0 || (spec.heads_kv > 0 && spec.heads % spec.heads_kv != 0)) {
    return invalid_argument("workload heads_kv must be 0 (same as heads) or divide heads = " +
                            std::to_string(spec.heads) + ", got " + std::to_string(spec.heads_kv));
  }
  if (spec.text_len < 0) {
    return invalid_argument("workload text_len must be >= 0, got " + std::to_string(spec.text_len));
  }
  if (spec.head_dim % 2 != 0) {
    return invalid_argument("workload head_dim must be even (RoPE rotates pairs), got " +
                            std::to_string(spec.head_dim));
  }
  if (spec.dtype != DType::kFloat32 && spec.dtype != DType::kFloat16 &&
      spec.dtype != DType::kBFloat16) {
    return invalid_argument(
        std::string("workload dtype must be float32, float16 or bfloat16, got ") +
        dtype_name(spec.dtype));
  }
  const auto& rs = spec.rope_split;
  if (rs[0] != 0 || rs[1] != 0 || rs[2] != 0) {
    if (rs[0] < 0 || rs[1] < 0 || rs[2] < 0 || rs[0] % 2 || rs[1] % 2 || rs[2] % 2 ||
        rs[0] + rs[1] + rs[2] != spec.head_dim) {
      return invalid_argument(
          "workload rope_split must be three even non-negative sizes summing "
          "to head_dim = " +
          std::to_string(spec.head_dim) + ", got (" + std::to_string(rs[0]) + ", " +
          std::to_string(rs[1]) + ", " + std::to_string(rs[2]) + ")");
    }
  }
  int64_t plane = 0, elements = 0, rows = 0;
  if (mul_overflows(spec.height, spec.width, &plane) || mul_overflows(plane, spec.frames, video) ||
      __builtin_add_overflow(*video, spec.text_len, total) ||
      mul_overflows(spec.batch, spec.heads, &rows) || mul_overflows(rows, *total, &rows) ||
      mul_overflows(rows, spec.head_dim, &elements)) {
    return invalid_argument(
        "workload size overflows int64: batch * heads * (text_len + frames * "
        "height * width) * head_dim");
  }
  if (*total > kMaxSequence) {
    return invalid_argument("workload sequence length text_len + frames * height * width = " +
                            std::to_string(*total) + " exceeds " +
                            std::to_string(kMaxSequence) +
                            ", the longest sequence psa attends (32-bit row indices)");
  }
  return Status::ok_status();
}

}  // namespace

const char* head_kind_name(HeadKind kind) {
  switch (kind) {
    case HeadKind::kLocal:
      return "local";
    case HeadKind::kContent:
      return "content";
    case HeadKind::kSink:
      return "sink";
  }
  return "unknown";
}

namespace {

// The workload of a validated spec with `video` video tokens and `total` tokens in all.
Status generate_validated(Workload* workload, const WorkloadSpec& spec, int64_t video,
                          int64_t total) {
  Layout lay;
  lay.frames = spec.frames;
  lay.height = spec.height;
  lay.width = spec.width;
  lay.video = video;
  lay.text = spec.text_len;
  lay.length = total;
  lay.text_base = spec.text_position == TextPosition::kStart ? 0 : video;
  lay.video_base = spec.text_position == TextPosition::kStart ? spec.text_len : 0;
  lay.heads = spec.heads;
  lay.heads_kv = spec.heads_kv > 0 ? spec.heads_kv : spec.heads;
  lay.dim = spec.head_dim;
  const auto& rs = spec.rope_split;
  lay.split = (rs[0] == 0 && rs[1] == 0 && rs[2] == 0) ? default_rope_split(spec.head_dim) : rs;
  const Rope rope = make_rope(lay);
  const uint64_t seed = spec.seed;
  const int64_t group = lay.heads / lay.heads_kv;

  Workload wl;
  auto allocate = [&](HostTensor* t, const char* name, int64_t heads) {
    const Status s =
        HostTensor::allocate(t, spec.dtype, {spec.batch, heads, lay.length, lay.dim});
    return s.ok() ? s
                  : Status(s.code(), "generate_workload: " + std::string(name) + ": " + s.message());
  };
  PSA_RETURN_IF_ERROR(allocate(&wl.q, "q", lay.heads));
  PSA_RETURN_IF_ERROR(allocate(&wl.k, "k", lay.heads_kv));
  PSA_RETURN_IF_ERROR(allocate(&wl.v, "v", lay.heads_kv));

  std::vector<KvHead> kv_heads;
  for (int64_t g = 0; g < lay.heads_kv; ++g) kv_heads.push_back(make_kv_head(lay, rope, seed, g));
  // Query projections: correlated with the key projection of their kv head by qk_correlation,
  // so that similar content gives a large q . k.
  std::vector<std::vector<float>> wq(static_cast<size_t>(lay.heads));
  for (int64_t h = 0; h < lay.heads; ++h) {
    const KvHead& kvh = kv_heads[static_cast<size_t>(h / group)];
    const double rho = params_of(kvh.kind).qk_correlation;
    const std::vector<float> noise = projection(seed, kStreamQueryProjection, h, lay.dim);
    auto& w = wq[static_cast<size_t>(h)];
    w.resize(noise.size());
    for (size_t e = 0; e < w.size(); ++e) {
      w[e] = static_cast<float>(rho * kvh.wk[e] + std::sqrt(1.0 - rho * rho) * noise[e]);
    }
  }

  std::vector<float> content;
  for (int64_t b = 0; b < spec.batch; ++b) {
    make_content(content, lay, seed, b);
    // Keys and values, one task per kv head.
    cpu::parallel_for(lay.heads_kv, [&](int64_t g) {
      const KvHead& kvh = kv_heads[static_cast<size_t>(g)];
      const KindParams& kp = params_of(kvh.kind);
      std::vector<float> row(static_cast<size_t>(lay.dim));
      for (int64_t i = 0; i < lay.length; ++i) {
        const float* c = content.data() + i * kChannels;
        project(row.data(), kvh.wv, c, lay.dim);
        store_row(wl.v, b, g, i, row.data());

        project(row.data(), kvh.wk, c, lay.dim);
        const bool sink =
            std::find(kvh.sink_tokens.begin(), kvh.sink_tokens.end(), i) != kvh.sink_tokens.end();
        if (!lay.is_text(i)) {
          for (int64_t d = 0; d < lay.dim; ++d) {
            row[static_cast<size_t>(d)] += static_cast<float>(
                kp.position * kvh.position[static_cast<size_t>(d)] +
                (sink ? kSinkKeyWeight * kvh.sink[static_cast<size_t>(d)] : 0.0));
          }
        }
        rms_normalise(row.data(), lay.dim, kvh.gain);
        apply_rope(row.data(), i, lay, rope);
        store_row(wl.k, b, g, i, row.data());
      }
    });
    // Queries, one task per query head.
    cpu::parallel_for(lay.heads, [&](int64_t h) {
      const KvHead& kvh = kv_heads[static_cast<size_t>(h / group)];
      const KindParams& kp = params_of(kvh.kind);
      std::vector<float> row(static_cast<size_t>(lay.dim));
      for (int64_t i = 0; i < lay.length; ++i) {
        project(row.data(), wq[static_cast<size_t>(h)], content.data() + i * kChannels, lay.dim);
        if (!lay.is_text(i)) {
          for (int64_t d = 0; d < lay.dim; ++d) {
            row[static_cast<size_t>(d)] +=
                static_cast<float>(kp.position * kvh.position[static_cast<size_t>(d)] +
                                   kp.sink_query * kvh.sink[static_cast<size_t>(d)]);
          }
        }
        rms_normalise(row.data(), lay.dim, kvh.gain);
        apply_rope(row.data(), i, lay, rope);
        store_row(wl.q, b, h, i, row.data());
      }
    });
  }

  wl.stats.head_kinds.resize(static_cast<size_t>(lay.heads));
  for (int64_t h = 0; h < lay.heads; ++h) {
    wl.stats.head_kinds[static_cast<size_t>(h)] = kv_heads[static_cast<size_t>(h / group)].kind;
  }
  local_mass_statistic(&wl.stats, wl, lay, seed);
  *workload = std::move(wl);
  return Status::ok_status();
}

}  // namespace

Status generate_workload(Workload* workload, const WorkloadSpec& spec) {
  if (workload == nullptr) return invalid_argument("generate_workload: workload must not be null");
  int64_t video = 0, total = 0;
  PSA_RETURN_IF_ERROR(validate_spec(spec, &video, &total));
  // q, k, v are allocated with a Status; the working buffers besides them (the content field,
  // per-thread rows) may still run out of memory on a large shape.
  try {
    return generate_validated(workload, spec, video, total);
  } catch (const std::bad_alloc&) {
  } catch (const std::length_error&) {
  }
  return Status(StatusCode::kOutOfMemory,
                "generate_workload: a workload of " + std::to_string(total) + " tokens, " +
                    std::to_string(spec.heads) + " heads of " + std::to_string(spec.head_dim) +
                    " needs more host memory than is available");
}

std::string describe_workload(const WorkloadSpec& spec, const WorkloadStats& stats) {
  const int64_t heads_kv = spec.heads_kv > 0 ? spec.heads_kv : spec.heads;
  const auto& rs = spec.rope_split;
  const std::array<int64_t, 3> split =
      (rs[0] == 0 && rs[1] == 0 && rs[2] == 0) ? default_rope_split(spec.head_dim) : rs;
  using std::to_string;
  std::string s = "workload: batch " + to_string(spec.batch) + ", video " +
                  to_string(spec.frames) + " x " + to_string(spec.height) + " x " +
                  to_string(spec.width) + " = " +
                  to_string(spec.frames * spec.height * spec.width) + " tokens, text " +
                  to_string(spec.text_len) + " (" + text_position_name(spec.text_position) +
                  "), heads " + to_string(spec.heads) + " (kv " + to_string(heads_kv) +
                  "), head_dim " + to_string(spec.head_dim) + ", " + dtype_name(spec.dtype) +
                  ", rope t/y/x " + to_string(split[0]) + "/" + to_string(split[1]) + "/" +
                  to_string(split[2]) + ", seed " + to_string(spec.seed) + "\n";
  s += "head kinds:";
  for (HeadKind kind : stats.head_kinds) s += std::string(" ") + head_kind_name(kind);
  s += "\n";
  char buf[32];
  s += "attention mass on the 15% of keys nearest in space-time, per head:";
  for (double m : stats.local_mass) {
    std::snprintf(buf, sizeof buf, " %.2f", m);
    s += buf;
  }
  std::snprintf(buf, sizeof buf, "%.3f", stats.mean_local_mass);
  s += std::string("; mean ") + buf + " (real video DiTs: about 0.7)\n";
  s += "This is a synthetic stand-in for a video DiT's self-attention, not ground truth: use it "
       "to watch the planner and compare methods at equal density, not to claim model quality.\n";
  return s;
}

}  // namespace psa
