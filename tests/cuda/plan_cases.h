// Plans and operands shared by the CUDA attention tests (forward and backward): seeded level maps
// of a few kinds, their compact plans, and device copies of (B, H, L, D) operands stored either
// contiguously or as (B, L, H, D) storage viewed as (B, H, L, D).
#pragma once

#include <cstdint>
#include <vector>

#include "cuda/cuda_test_util.h"
#include "psa/psa.h"

namespace psa::test {

enum class PlanKind { kMixed, kAllFull, kAllSkip, kOnly8x };

struct LevelMapSpec {
  int64_t batch, heads_q, seq_q, seq_k;
  int block_m, block_n;
  PlanKind plan;
};

// Levels of a (B, Hq, Mq, Nk) map, from a seeded uniform draw: 30% skipped, 20% level 1,
// 15% level 2, 15% level 4, 20% level 8 for kMixed.
HostTensor make_level_map(const LevelMapSpec& spec, uint64_t seed);
// A level map to the compact plan (counts and per-level ascending block lists). Entries past a
// row's total are filled with an out-of-range index, so a kernel that reads them shows it.
HostPlan plan_from_level_map(const HostTensor& levels, const LevelMapSpec& spec);

// Any test case with the fields of LevelMapSpec.
template <typename Case>
LevelMapSpec level_map_spec(const Case& c) {
  return {c.batch, c.heads_q, c.seq_q, c.seq_k, c.block_m, c.block_n, c.plan};
}
template <typename Case>
HostTensor make_level_map(const Case& c, uint64_t seed) {
  return make_level_map(level_map_spec(c), seed);
}
template <typename Case>
HostPlan plan_from_level_map(const HostTensor& levels, const Case& c) {
  return plan_from_level_map(levels, level_map_spec(c));
}

// (B, H, L, D) <-> (B, L, H, D) copies, for the strided cases.
HostTensor swap_heads_and_rows(const HostTensor& t);

// A device copy of `host` (B, H, L, D), stored (B, L, H, D) when `strided`, and its
// (B, H, L, D) view.
struct DeviceOperand {
  DeviceTensor storage;
  TensorView view;
};
DeviceOperand upload(const HostTensor& host, bool strided);
// Poisoned (NaN) storage of that shape and layout.
DeviceOperand allocate(DType dtype, const std::vector<int64_t>& shape, bool strided);
HostTensor download(const DeviceOperand& d, bool strided);

// The pyramid widened to fp32 (the fp64 reference runs on widened inputs).
HostPyramid widen(const HostPyramid& p);
// A device copy of a host pyramid.
DevicePyramid upload_pyramid(const HostPyramid& p);

}  // namespace psa::test
