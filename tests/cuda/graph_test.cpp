// The whole call (pyramid, estimator, planner, attention) captured into a CUDA graph (issue 8
// item 4): the capture runs in cudaStreamCaptureModeGlobal, so any synchronising or otherwise
// capture-unsafe call in the library (cudaMalloc, cudaMemcpy, a stream or device synchronise)
// invalidates it and the test fails at cudaStreamEndCapture. The graph is then replayed on new
// inputs copied into the captured buffers; every result must equal, bit for bit, the same stages
// run without the graph on the same stream, and match the CPU reference: scores to the estimator
// tolerance, the plan exactly (the CPU planner on the GPU's scores), the output within 2x the
// error of a same-precision CPU run against an fp64 reference (as in attention_test.cpp).
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <ostream>
#include <string>
#include <vector>

#include "common/test_util.h"
#include "cuda/cuda_test_util.h"
#include "cuda/plan_cases.h"
#include "psa/psa.h"

namespace psa::test {
namespace {

#define PSA_ASSERT_OK(expr)                             \
  do {                                                  \
    const ::psa::Status status_ = (expr);               \
    ASSERT_TRUE(status_.ok()) << status_.to_string();   \
  } while (0)

struct GraphCase {
  const char* name;
  int64_t frames, height, width, text_len;
  int64_t heads, heads_kv, head_dim;
  bool thresholdbound;  // thresholdbound with the similarity cap and block_n 128; else the default
};
void PrintTo(const GraphCase& c, std::ostream* os) { *os << c.name; }

// Small video-like problems from the workload generator, lengths ragged against the blocks
// (4 x 9 x 11 = 396 = 3 * 128 + 12; 30 + 3 x 8 x 10 = 270).
const GraphCase kCases[] = {
    {"DefaultD128Gqa", 4, 9, 11, 0, 4, 2, 128, false},
    {"ThresholdSimCapD64Text", 3, 8, 10, 30, 2, 2, 64, true},
};

Config case_config(const GraphCase& c) {
  Config config = default_config();
  if (c.thresholdbound) {
    config.block_n = 128;
    config.mode = PlanMode::kThresholdBound;
    config.ends = {0.5, 0.6, 0.7, 0.8};
    config.sim_cap = true;
  }
  config.text_len = c.text_len;
  config.text_position = TextPosition::kStart;
  return config;
}

Workload make_workload(const GraphCase& c, uint64_t seed) {
  WorkloadSpec spec;
  spec.frames = c.frames;
  spec.height = c.height;
  spec.width = c.width;
  spec.text_len = c.text_len;
  spec.text_position = TextPosition::kStart;
  spec.heads = c.heads;
  spec.heads_kv = c.heads_kv;
  spec.head_dim = c.head_dim;
  spec.seed = seed;
  spec.dtype = DType::kBFloat16;
  Workload wl;
  const Status st = generate_workload(&wl, spec);
  EXPECT_TRUE(st.ok()) << st.to_string();
  return wl;
}

size_t bytes_of(const HostTensor& t) {
  return static_cast<size_t>(t.numel()) * dtype_size(t.dtype());
}

// Every buffer of the call, allocated once: the graph holds their addresses.
struct CallBuffers {
  DeviceTensor q, k, v, scores, workspace, out, lse;
  DevicePyramid pyramid;
  DevicePlan plan;
  size_t workspace_bytes = 0;
};

// The four stages on `stream`, the way psa.attention runs them.
Status enqueue_call(const CallBuffers& b, const Config& config, cudaStream_t stream) {
  PSA_RETURN_IF_ERROR(build_pyramid(b.pyramid.view(), b.k.view(), b.v.view(), stream));
  PSA_RETURN_IF_ERROR(estimate_importance(b.scores.view(), b.q.view(), b.k.view(), config, stream));
  PSA_RETURN_IF_ERROR(plan_from_scores(b.plan.view(), b.scores.view(), b.k.view(), config,
                                       b.workspace.data(), b.workspace_bytes, stream));
  return attention_forward(b.out.view(), b.lse.view(), b.q.view(), b.k.view(), b.v.view(),
                           b.pyramid.view(), b.plan.view(), config, stream);
}

// 0xFF bytes (NaN, -1) in every output of the call, so that a stage that writes nothing shows.
void poison_outputs(const CallBuffers& b, cudaStream_t stream) {
  auto poison = [&](const DeviceTensor& t) {
    const TensorView v = t.view();
    ASSERT_EQ(cudaMemsetAsync(t.data(), 0xFF, static_cast<size_t>(numel(v)) * dtype_size(v.dtype),
                              stream),
              cudaSuccess);
  };
  for (int l = 0; l < kNumPooledLevels; ++l) {
    poison(b.pyramid.k[l]);
    poison(b.pyramid.v[l]);
  }
  poison(b.scores);
  poison(b.plan.counts);
  poison(b.plan.blocks);
  poison(b.out);
  poison(b.lse);
}

void copy_inputs(const CallBuffers& b, const Workload& wl, cudaStream_t stream) {
  ASSERT_EQ(cudaMemcpyAsync(b.q.data(), wl.q.view().data, bytes_of(wl.q), cudaMemcpyHostToDevice,
                            stream), cudaSuccess);
  ASSERT_EQ(cudaMemcpyAsync(b.k.data(), wl.k.view().data, bytes_of(wl.k), cudaMemcpyHostToDevice,
                            stream), cudaSuccess);
  ASSERT_EQ(cudaMemcpyAsync(b.v.data(), wl.v.view().data, bytes_of(wl.v), cudaMemcpyHostToDevice,
                            stream), cudaSuccess);
  ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
}

struct CallResult {
  HostTensor scores, counts, blocks, out, lse;
};
CallResult download_results(const CallBuffers& b) {
  return {b.scores.download(), b.plan.counts.download(), b.plan.blocks.download(),
          b.out.download(), b.lse.download()};
}

void expect_bitwise_equal(const HostTensor& a, const HostTensor& b, const char* what,
                          uint64_t seed) {
  ASSERT_EQ(a.numel(), b.numel()) << what;
  EXPECT_EQ(std::memcmp(a.view().data, b.view().data, bytes_of(a)), 0)
      << what << ": the graph replay differs from the direct run; " << replay_hint(seed);
}

// The graph's results against the CPU reference on the same inputs.
void expect_matches_cpu(const CallResult& got, const Workload& wl, const Config& config,
                        uint64_t seed) {
  const int64_t batch = wl.q.shape()[0], heads = wl.q.shape()[1], seq = wl.q.shape()[2];
  const int64_t heads_kv = wl.k.shape()[1], dim = wl.q.shape()[3];
  // Scores: fp32 dot products summed in another order; 1e-4 relative as in aux_kernels_test.cpp.
  HostTensor scores(DType::kFloat32, got.scores.shape());
  poison(scores);
  PSA_ASSERT_OK(estimate_importance(scores.view(), wl.q.view(), wl.k.view(), config));
  ASSERT_GT(l2_norm(scores), 0.0) << replay_hint(seed);
  for (int64_t i = 0; i < scores.numel(); ++i) {
    const double a = got.scores.get(i), b = scores.get(i);
    ASSERT_LE(std::fabs(a - b), 1e-4 * std::fabs(b) + 1e-7)
        << "score " << i << ": got " << a << ", want " << b << "; " << replay_hint(seed);
  }
  // The plan: the CPU planner on the GPU's scores gives it exactly.
  HostPlan plan = make_host_plan(batch, heads, seq, seq, config);
  poison(plan.counts);
  poison(plan.blocks);
  PSA_ASSERT_OK(plan_from_scores(plan.view(), got.scores.view(), wl.k.view(), config));
  const int64_t nk = plan.blocks.shape()[3];
  int64_t kept = 0;
  for (int64_t i = 0; i < plan.counts.numel(); ++i) {
    const int32_t want = plan.counts.data<int32_t>()[i];
    kept += want;
    ASSERT_EQ(got.counts.data<int32_t>()[i], want)
        << "counts of row " << i / kNumLevels << "; " << replay_hint(seed);
  }
  ASSERT_GT(kept, 0) << "the plan is empty; " << replay_hint(seed);
  for (int64_t row = 0; row < plan.counts.numel() / kNumLevels; ++row) {
    int64_t total = 0;
    for (int l = 0; l < kNumLevels; ++l) total += plan.counts.data<int32_t>()[row * kNumLevels + l];
    for (int64_t e = 0; e < total; ++e) {
      ASSERT_EQ(got.blocks.data<int32_t>()[row * nk + e], plan.blocks.data<int32_t>()[row * nk + e])
          << "blocks of row " << row << ", entry " << e << "; " << replay_hint(seed);
    }
  }
  // The output on that plan: fp64 reference on widened inputs vs the same-precision CPU run.
  HostPyramid pyramid = make_host_pyramid(batch, heads_kv, seq, dim, DType::kBFloat16);
  PSA_ASSERT_OK(build_pyramid(pyramid.view(), wl.k.view(), wl.v.view()));
  const HostTensor q32 = to_host(wl.q.view(), DType::kFloat32);
  const HostTensor k32 = to_host(wl.k.view(), DType::kFloat32);
  const HostTensor v32 = to_host(wl.v.view(), DType::kFloat32);
  const HostPyramid pyramid32 = widen(pyramid);
  HostTensor ref(DType::kFloat32, wl.q.shape()), cpu16(DType::kBFloat16, wl.q.shape());
  poison(ref);
  poison(cpu16);
  PSA_ASSERT_OK(attention_forward(ref.view(), TensorView{}, q32.view(), k32.view(), v32.view(),
                                  pyramid32.view(), plan.view(), config));
  PSA_ASSERT_OK(attention_forward(cpu16.view(), TensorView{}, wl.q.view(), wl.k.view(),
                                  wl.v.view(), pyramid.view(), plan.view(), config));
  ASSERT_GT(l2_norm(ref), 0.0) << "reference is zero; " << replay_hint(seed);
  ASSERT_FALSE(has_nan(got.out)) << replay_hint(seed);
  const double cpu_error = rel_l2(cpu16, ref), gpu_error = rel_l2(got.out, ref);
  EXPECT_LE(gpu_error, 2.0 * cpu_error)
      << "GPU rel L2 " << gpu_error << " vs same-precision CPU " << cpu_error << "; "
      << replay_hint(seed);
}

class CudaGraphTest : public ::testing::TestWithParam<GraphCase> {};

TEST_P(CudaGraphTest, CapturedCallReplaysOnNewInputs) {
  PSA_SKIP_WITHOUT_GPU();
  const GraphCase& c = GetParam();
  const uint64_t seed = test_seed(0x67a9000u + static_cast<uint64_t>(c.head_dim + c.text_len));
  const Config config = case_config(c);
  const Workload inputs[2] = {make_workload(c, seed), make_workload(c, seed + 1)};
  const int64_t seq = inputs[0].q.shape()[2];

  CallBuffers b;
  b.q = DeviceTensor(DType::kBFloat16, inputs[0].q.shape());
  b.k = DeviceTensor(DType::kBFloat16, inputs[0].k.shape());
  b.v = DeviceTensor(DType::kBFloat16, inputs[0].v.shape());
  b.pyramid = make_device_pyramid(1, c.heads_kv, seq, c.head_dim, DType::kBFloat16);
  b.plan = make_device_plan(1, c.heads, seq, seq, config);
  const PlanShape shape = plan_shape(1, c.heads, seq, seq, config);
  b.scores = DeviceTensor(DType::kFloat32,
                          {1, c.heads, shape.num_q_blocks, shape.num_k_blocks});
  b.workspace_bytes = plan_workspace_bytes(shape, Device::kCuda);
  b.workspace = DeviceTensor(
      DType::kUInt8, {static_cast<int64_t>(std::max<size_t>(b.workspace_bytes, 1))});
  b.out = DeviceTensor(DType::kBFloat16, inputs[0].q.shape());
  b.lse = DeviceTensor(DType::kFloat32, {1, c.heads, seq});

  cudaStream_t stream = nullptr;
  PSA_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  ASSERT_NO_FATAL_FAILURE(copy_inputs(b, inputs[0], stream));

  cudaGraph_t graph = nullptr;
  PSA_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
  const Status captured = enqueue_call(b, config, stream);
  const cudaError_t end = cudaStreamEndCapture(stream, &graph);
  ASSERT_TRUE(captured.ok()) << captured.to_string();
  ASSERT_EQ(end, cudaSuccess) << "the call is not capturable: " << cudaGetErrorString(end);
  size_t num_nodes = 0;
  PSA_CUDA_CHECK(cudaGraphGetNodes(graph, nullptr, &num_nodes));
  EXPECT_GE(num_nodes, 4u) << "one kernel at least per stage";
  cudaGraphExec_t exec = nullptr;
  PSA_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));

  HostTensor previous_out;
  for (int set = 0; set < 2; ++set) {
    SCOPED_TRACE(set == 0 ? "inputs of the capture" : "new inputs copied into the buffers");
    ASSERT_NO_FATAL_FAILURE(copy_inputs(b, inputs[set], stream));
    ASSERT_NO_FATAL_FAILURE(poison_outputs(b, stream));
    PSA_CUDA_CHECK(cudaGraphLaunch(exec, stream));
    PSA_CUDA_CHECK(cudaStreamSynchronize(stream));
    const CallResult replay = download_results(b);

    ASSERT_NO_FATAL_FAILURE(poison_outputs(b, stream));
    PSA_ASSERT_OK(enqueue_call(b, config, stream));
    PSA_CUDA_CHECK(cudaStreamSynchronize(stream));
    const CallResult direct = download_results(b);

    expect_bitwise_equal(replay.scores, direct.scores, "scores", seed);
    expect_bitwise_equal(replay.counts, direct.counts, "plan counts", seed);
    expect_bitwise_equal(replay.blocks, direct.blocks, "plan blocks", seed);
    expect_bitwise_equal(replay.out, direct.out, "out", seed);
    expect_bitwise_equal(replay.lse, direct.lse, "lse", seed);
    ASSERT_NO_FATAL_FAILURE(expect_matches_cpu(replay, inputs[set], config, seed + set));
    if (set == 1) {
      EXPECT_GT(rel_l2(replay.out, previous_out), 0.0)
          << "the replay on new inputs returned the old output; " << replay_hint(seed);
    }
    previous_out = replay.out;
  }
  PSA_CUDA_CHECK(cudaGraphExecDestroy(exec));
  PSA_CUDA_CHECK(cudaGraphDestroy(graph));
  PSA_CUDA_CHECK(cudaStreamDestroy(stream));
}

INSTANTIATE_TEST_SUITE_P(Cases, CudaGraphTest, ::testing::ValuesIn(kCases),
                         [](const ::testing::TestParamInfo<GraphCase>& info) {
                           return std::string(info.param.name);
                         });

}  // namespace
}  // namespace psa::test
