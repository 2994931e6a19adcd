// Plans and operands shared by the CUDA attention tests (plan_cases.h).
#include "cuda/plan_cases.h"

#include <cstring>
#include <limits>

#include "common/test_util.h"

namespace psa::test {

HostTensor make_level_map(const LevelMapSpec& c, uint64_t seed) {
  const int64_t mq = (c.seq_q + c.block_m - 1) / c.block_m;
  const int64_t nk = (c.seq_k + c.block_n - 1) / c.block_n;
  HostTensor u(DType::kFloat32, {c.batch, c.heads_q, mq, nk});
  fill_uniform(u, seed, 0.0, 1.0);
  HostTensor levels(DType::kUInt8, {c.batch, c.heads_q, mq, nk});
  for (int64_t i = 0; i < levels.numel(); ++i) {
    const double x = u.get(i);
    int level = 0;
    switch (c.plan) {
      case PlanKind::kMixed:
        level = x < 0.30 ? 0 : x < 0.50 ? 1 : x < 0.65 ? 2 : x < 0.80 ? 4 : 8;
        break;
      case PlanKind::kAllFull: level = 1; break;
      case PlanKind::kAllSkip: level = 0; break;
      case PlanKind::kOnly8x: level = 8; break;
    }
    levels.set(i, level);
  }
  return levels;
}

HostPlan plan_from_level_map(const HostTensor& levels, const LevelMapSpec& c) {
  Config config;
  config.block_m = c.block_m;
  config.block_n = c.block_n;
  HostPlan plan = make_host_plan(c.batch, c.heads_q, c.seq_q, c.seq_k, config);
  const int64_t nk = levels.shape()[3];
  const int64_t rows = levels.numel() / nk;
  auto* counts = plan.counts.data<int32_t>();
  auto* blocks = plan.blocks.data<int32_t>();
  for (int64_t row = 0; row < rows; ++row) {
    int64_t n = 0;
    for (int l = 0; l < kNumLevels; ++l) {
      int32_t count = 0;
      for (int64_t j = 0; j < nk; ++j) {
        if (levels.get(row * nk + j) == kLevelFactors[l]) {
          blocks[row * nk + n++] = static_cast<int32_t>(j);
          ++count;
        }
      }
      counts[row * kNumLevels + l] = count;
    }
    for (; n < nk; ++n) blocks[row * nk + n] = std::numeric_limits<int32_t>::max();
  }
  return plan;
}

HostTensor swap_heads_and_rows(const HostTensor& t) {
  const auto& s = t.shape();
  HostTensor r(t.dtype(), {s[0], s[2], s[1], s[3]});
  const size_t elem = dtype_size(t.dtype());
  const auto* src = t.data<unsigned char>();
  auto* dst = r.data<unsigned char>();
  for (int64_t b = 0; b < s[0]; ++b)
    for (int64_t h = 0; h < s[1]; ++h)
      for (int64_t l = 0; l < s[2]; ++l) {
        const int64_t from = ((b * s[1] + h) * s[2] + l) * s[3];
        const int64_t to = ((b * s[2] + l) * s[1] + h) * s[3];
        std::memcpy(dst + to * elem, src + from * elem, static_cast<size_t>(s[3]) * elem);
      }
  return r;
}

DeviceOperand upload(const HostTensor& host, bool strided) {
  DeviceOperand d;
  if (strided) {
    d.storage = DeviceTensor(swap_heads_and_rows(host));
    d.view = transpose_view(d.storage.view(), 1, 2);
  } else {
    d.storage = DeviceTensor(host);
    d.view = d.storage.view();
  }
  return d;
}
DeviceOperand allocate(DType dtype, const std::vector<int64_t>& shape, bool strided) {
  DeviceOperand d;
  if (strided) {
    d.storage = DeviceTensor(dtype, {shape[0], shape[2], shape[1], shape[3]});
    d.view = transpose_view(d.storage.view(), 1, 2);
  } else {
    d.storage = DeviceTensor(dtype, shape);
    d.view = d.storage.view();
  }
  d.storage.poison();
  return d;
}
HostTensor download(const DeviceOperand& d, bool strided) {
  HostTensor h = d.storage.download();
  return strided ? swap_heads_and_rows(h) : h;
}

HostPyramid widen(const HostPyramid& p) {
  HostPyramid r;
  for (int l = 0; l < kNumPooledLevels; ++l) {
    r.k[l] = to_host(p.k[l].view(), DType::kFloat32);
    r.v[l] = to_host(p.v[l].view(), DType::kFloat32);
  }
  return r;
}

DevicePyramid upload_pyramid(const HostPyramid& p) {
  DevicePyramid d;
  for (int l = 0; l < kNumPooledLevels; ++l) {
    d.k[l] = DeviceTensor(p.k[l]);
    d.v[l] = DeviceTensor(p.v[l]);
  }
  return d;
}

}  // namespace psa::test
