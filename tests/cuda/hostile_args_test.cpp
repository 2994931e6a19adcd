// Hostile arguments with device memory (tests/cpu/hostile_args_test.cpp has the full table on the
// host): outputs that overlap themselves, each other or an input are refused before any kernel
// is launched, where they would race; a config with an out-of-range enum is refused on CUDA too.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "cuda/cuda_test_util.h"

namespace psa::test {
namespace {

constexpr int64_t kB = 1, kH = 2, kL = 256, kD = 64;

Config cuda_config() {
  Config c;
  c.block_m = 64;
  c.block_n = 64;
  c.tile_n = 32;
  return c;
}

void expect_overlap(const Status& s, std::initializer_list<const char*> names) {
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.to_string();
  EXPECT_NE(s.message().find("overlap"), std::string::npos) << s.message();
  for (const char* name : names) {
    EXPECT_NE(s.message().find(name), std::string::npos)
        << "message \"" << s.message() << "\" should name " << name;
  }
}

// q, k, v, a pyramid and an all-level-1 plan on the device: a valid forward, to break one thing.
struct DeviceProblem {
  Config config = cuda_config();
  DeviceTensor q{DType::kBFloat16, {kB, kH, kL, kD}}, k{DType::kBFloat16, {kB, kH, kL, kD}},
      v{DType::kBFloat16, {kB, kH, kL, kD}};
  DeviceTensor out{DType::kBFloat16, {kB, kH, kL, kD}}, lse{DType::kFloat32, {kB, kH, kL}};
  DevicePyramid pyramid = make_device_pyramid(kB, kH, kL, kD, DType::kBFloat16);
  DevicePlan plan;

  DeviceProblem() {
    for (DeviceTensor* t : {&q, &k, &v}) t->poison();
    const PlanShape s = plan_shape(kB, kH, kL, kL, config);
    HostTensor levels(DType::kUInt8, {s.batch, s.heads, s.num_q_blocks, s.num_k_blocks});
    levels.fill(1.0);
    HostPlan host = make_host_plan(kB, kH, kL, kL, config);
    EXPECT_TRUE(plan_from_levels(host.view(), levels.view(), TensorView{}, config).ok());
    plan = upload_plan(host);
  }
  Status forward(const TensorView& o, const TensorView& l) {
    return attention_forward(o, l, q.view(), k.view(), v.view(), pyramid.view(), plan.view(),
                             config);
  }
};

TEST(CudaHostile, ValidForwardIsAccepted) {
  PSA_SKIP_WITHOUT_GPU();
  DeviceProblem p;
  const Status s = p.forward(p.out.view(), p.lse.view());
  EXPECT_TRUE(s.ok()) << s.to_string();
  PSA_CUDA_CHECK(cudaDeviceSynchronize());
}

TEST(CudaHostile, OutputBroadcastAlongTheSequence) {
  PSA_SKIP_WITHOUT_GPU();
  DeviceProblem p;
  TensorView out = p.out.view();
  out.stride[2] = 0;
  expect_overlap(p.forward(out, p.lse.view()), {"out"});
}

TEST(CudaHostile, OutputOverwritesAnInput) {
  PSA_SKIP_WITHOUT_GPU();
  DeviceProblem p;
  expect_overlap(p.forward(p.v.view(), p.lse.view()), {"out", "v"});
}

TEST(CudaHostile, LseInsideOut) {
  PSA_SKIP_WITHOUT_GPU();
  DeviceProblem p;
  TensorView lse = p.lse.view();
  lse.data = p.out.data();
  expect_overlap(p.forward(p.out.view(), lse), {"lse", "out"});
}

TEST(CudaHostile, PermuteTokensPartialOverlap) {
  PSA_SKIP_WITHOUT_GPU();
  DeviceTensor buffer(DType::kBFloat16, {kB, kH, kL + 1, kD});
  HostTensor perm(DType::kInt64, {kL});
  for (int64_t i = 0; i < kL; ++i) perm.data<int64_t>()[i] = kL - 1 - i;
  const DeviceTensor d_perm(perm);
  const TensorView in = make_view(buffer.data(), DType::kBFloat16, {kB, kH, kL, kD},
                                  Device::kCuda);
  // One row further on: out's row i is in's row i + 1 of the same head.
  TensorView out = in;
  out.data = static_cast<uint16_t*>(buffer.data()) + kD;
  expect_overlap(permute_tokens(out, in, static_cast<const int64_t*>(d_perm.data())),
                 {"out", "in"});
}

TEST(CudaHostile, PlanCountsInsideBlocks) {
  PSA_SKIP_WITHOUT_GPU();
  const Config c = cuda_config();
  DevicePlan plan = make_device_plan(kB, kH, kL, kL, c);
  const PlanShape s = plan_shape(kB, kH, kL, kL, c);
  DeviceTensor scores(DType::kFloat32, {s.batch, s.heads, s.num_q_blocks, s.num_k_blocks});
  PlanView view = plan.view();
  view.counts.data = view.blocks.data;
  DeviceTensor workspace(DType::kUInt8,
                         {static_cast<int64_t>(plan_workspace_bytes(s, Device::kCuda)) + 1});
  expect_overlap(plan_from_scores(view, scores.view(), TensorView{}, c, workspace.data(),
                                  plan_workspace_bytes(s, Device::kCuda)),
                 {"plan.counts", "plan.blocks"});
}

TEST(CudaHostile, ConfigModeOutOfRange) {
  PSA_SKIP_WITHOUT_GPU();
  DeviceProblem p;
  p.config.mode = static_cast<PlanMode>(7);
  const Status s = p.forward(p.out.view(), p.lse.view());
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.to_string();
  EXPECT_NE(s.message().find("config.mode"), std::string::npos) << s.message();
}

}  // namespace
}  // namespace psa::test
