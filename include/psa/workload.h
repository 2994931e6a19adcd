// The embedded video-DiT-like workload (WORKLOADS.md): q, k, v with smooth space-time content,
// per-head projections, RMS-normalised q and k, a 3D rotary embedding, and a mix of local,
// content and sink heads. A stand-in for a real model, not ground truth: it lets the planner and
// the methods be compared at equal density without model weights.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "psa/config.h"
#include "psa/host_tensor.h"
#include "psa/status.h"

namespace psa {

enum class HeadKind : uint8_t { kLocal, kContent, kSink };
const char* head_kind_name(HeadKind kind);

struct WorkloadSpec {
  int64_t batch = 1;
  int64_t frames = 8, height = 16, width = 16;  // video tokens T x H x W in raster order
  int64_t heads = 4;
  int64_t heads_kv = 0;  // 0: same as heads
  int64_t head_dim = 64;
  int64_t text_len = 0;
  TextPosition text_position = TextPosition::kStart;
  // Split of the head dimension between the t, y, x rotary frequencies (even numbers summing to
  // head_dim); all zero selects Wan's proportions 44/42/42 of 128 scaled to head_dim.
  std::array<int64_t, 3> rope_split = {0, 0, 0};
  uint64_t seed = 0;
  DType dtype = DType::kFloat32;
};

struct WorkloadStats {
  std::vector<HeadKind> head_kinds;       // (heads)
  // Per head: mean over sampled queries of the attention mass on the 15% of keys nearest in
  // space-time (the calibration target is about 0.7 on average).
  std::vector<double> local_mass;
  double mean_local_mass = 0.0;
};

struct Workload {
  HostTensor q, k, v;  // (B, H, L, D), (B, Hkv, L, D) in spec.dtype, L = text_len + T*H*W
  WorkloadStats stats;
};

Status generate_workload(Workload* workload, const WorkloadSpec& spec);
// A few lines describing the workload and its calibration figures.
std::string describe_workload(const WorkloadSpec& spec, const WorkloadStats& stats);

}  // namespace psa
