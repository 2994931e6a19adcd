// The CUDA attention backward against the CPU reference (SPEC.md section 7) over a sweep of dtypes,
// head dims, block sizes, GQA ratios, Lq != Lk, ragged lengths, causal on and off, plan kinds
// (mixed, all-full, all-skip, only-8x), strided (B, L, H, D) layouts, an expanded (zero-stride)
// output gradient, and the deterministic and order-dependent accumulations.
//
// Tolerance (STYLE.md): the reference is the CPU backward in fp64 on the inputs widened to fp32,
// fed by its own forward. The same CPU backward run in the 16-bit dtype has the error of rounding
// its outputs (and of the 16-bit forward output inside rowsum(dout * out)). The GPU additionally
// rounds P and dS to the 16-bit type before the tensor-core products, one unit roundoff u (bf16
// 2^-8, fp16 2^-11) per product term; summed with random signs, that keeps the relative L2 error
// of dQ, dK and dV within about u. The bound: GPU error <= 2 x (same-precision CPU error) + u.
#include <gtest/gtest.h>

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

enum class Dout { kDense, kExpanded };

struct BackwardCase {
  const char* name;
  int64_t batch, heads_q, heads_kv, seq_q, seq_k, head_dim;
  DType dtype;
  int block_m, block_n;
  bool causal;
  PlanKind plan;
  bool strided;  // q, k, v, out, dout, dq, dk, dv stored as (B, L, H, D)
  Dout dout = Dout::kDense;
  bool deterministic = true;
};
void PrintTo(const BackwardCase& c, std::ostream* os) { *os << c.name; }

const BackwardCase kCases[] = {
    {"Bf16D128Bm128Bn64MixedGqa", 2, 4, 2, 389, 389, 128, DType::kBFloat16, 128, 64, false,
     PlanKind::kMixed, false},
    {"Fp16D128Bm128Bn64MixedCausal", 1, 4, 4, 389, 389, 128, DType::kFloat16, 128, 64, true,
     PlanKind::kMixed, false},
    {"Bf16D64Bm64Bn32MixedGqa3LqLtLk", 1, 6, 2, 200, 333, 64, DType::kBFloat16, 64, 32, false,
     PlanKind::kMixed, false},
    {"Fp16D64Bm128Bn128MixedCausalLqLtLk", 1, 2, 1, 257, 500, 64, DType::kFloat16, 128, 128, true,
     PlanKind::kMixed, false},
    {"Bf16D128Bm64Bn128CausalLqGtLkEmptyRows", 1, 2, 2, 300, 170, 128, DType::kBFloat16, 64, 128,
     true, PlanKind::kMixed, false},
    {"Fp16D128Bm64Bn32Mixed", 1, 2, 1, 256, 256, 128, DType::kFloat16, 64, 32, false,
     PlanKind::kMixed, false},
    {"Bf16D64Bm128Bn64MixedCausal", 2, 2, 2, 320, 320, 64, DType::kBFloat16, 128, 64, true,
     PlanKind::kMixed, false},
    {"Bf16D128Bm128Bn64AllFullCausal", 1, 3, 3, 333, 333, 128, DType::kBFloat16, 128, 64, true,
     PlanKind::kAllFull, false},
    {"Bf16D128Bm128Bn128Only8xRagged", 1, 1, 1, 200, 517, 128, DType::kBFloat16, 128, 128, false,
     PlanKind::kOnly8x, false},
    {"Bf16D128Bm128Bn64StridedMixedCausalGqa", 2, 4, 2, 300, 300, 128, DType::kBFloat16, 128, 64,
     true, PlanKind::kMixed, true},
    {"Fp16D64Bm64Bn128StridedMixed", 1, 4, 1, 190, 410, 64, DType::kFloat16, 64, 128, false,
     PlanKind::kMixed, true},
    {"Bf16D128Bm128Bn128MixedGqaOrderDependent", 1, 4, 2, 600, 700, 128, DType::kBFloat16, 128,
     128, false, PlanKind::kMixed, false, Dout::kDense, false},
    {"Bf16D64Bm128Bn32ExpandedDout", 1, 2, 1, 256, 300, 64, DType::kBFloat16, 128, 32, false,
     PlanKind::kMixed, false, Dout::kExpanded},
    {"Fp16D128Bm128Bn32LongRow", 1, 2, 1, 256, 2000, 128, DType::kFloat16, 128, 32, false,
     PlanKind::kMixed, false},
    {"Bf16D64Bm128Bn64AllFullGqa8", 1, 8, 1, 1024, 1024, 64, DType::kBFloat16, 128, 64, false,
     PlanKind::kAllFull, false},
    {"Fp16D128Bm128Bn64AllSkip", 1, 2, 1, 200, 300, 128, DType::kFloat16, 128, 64, false,
     PlanKind::kAllSkip, false},
};

struct Grads {
  HostTensor dq, dk, dv;
};
struct Forward {
  HostTensor out, lse;
};

Config case_config(const BackwardCase& c) {
  Config config;
  config.block_m = c.block_m;
  config.block_n = c.block_n;
  config.causal = c.causal;
  config.deterministic = c.deterministic;
  return config;
}

// The CPU forward and backward in `dtype` on (q, k, v) of that dtype.
Grads cpu_gradients(const HostTensor& q, const HostTensor& k, const HostTensor& v,
                    const HostTensor& dout, const HostPlan& plan, const Config& config,
                    Forward* forward) {
  const std::vector<int64_t>& qs = q.shape();
  const std::vector<int64_t>& ks = k.shape();
  HostPyramid pyramid = make_host_pyramid(ks[0], ks[1], ks[2], ks[3], k.dtype());
  EXPECT_TRUE(build_pyramid(pyramid.view(), k.view(), v.view()).ok());
  Forward f{HostTensor(q.dtype(), qs), HostTensor(DType::kFloat32, {qs[0], qs[1], qs[2]})};
  poison(f.out);
  poison(f.lse);
  Status s = attention_forward(f.out.view(), f.lse.view(), q.view(), k.view(), v.view(),
                               pyramid.view(), plan.view(), config);
  EXPECT_TRUE(s.ok()) << s.to_string();
  Grads g{HostTensor(q.dtype(), qs), HostTensor(k.dtype(), ks), HostTensor(v.dtype(), ks)};
  poison(g.dq);
  poison(g.dk);
  poison(g.dv);
  s = attention_backward(g.dq.view(), g.dk.view(), g.dv.view(), dout.view(), q.view(), k.view(),
                         v.view(), f.out.view(), f.lse.view(), plan.view(), config);
  EXPECT_TRUE(s.ok()) << s.to_string();
  if (forward != nullptr) *forward = std::move(f);
  return g;
}

// The GPU forward (for out and lse, as a training step has them) and backward.
struct GpuRun {
  DeviceOperand q, k, v, dout_storage;
  TensorView dout;
  DevicePyramid pyramid;
  DevicePlan plan;
  DeviceOperand out;
  DeviceTensor lse;
  DeviceTensor workspace;
  size_t workspace_bytes = 0;
};

GpuRun gpu_setup(const BackwardCase& c, const Qkv& qkv, const HostTensor& dout,
                 const HostPyramid& pyramid, const HostPlan& plan, const Config& config) {
  GpuRun r;
  r.q = upload(qkv.q, c.strided);
  r.k = upload(qkv.k, c.strided);
  r.v = upload(qkv.v, c.strided);
  if (c.dout == Dout::kExpanded) {
    // One element broadcast to every position (strides all 0), as out.sum().backward() gives.
    HostTensor one(c.dtype, {1, 1, 1, 1});
    one.set(0, dout.get(0));
    r.dout_storage.storage = DeviceTensor(one);
    r.dout = r.dout_storage.storage.view();
    for (int d = 0; d < 4; ++d) {
      r.dout.shape[d] = qkv.q.shape()[d];
      r.dout.stride[d] = 0;
    }
  } else {
    r.dout_storage = upload(dout, c.strided);
    r.dout = r.dout_storage.view;
  }
  r.pyramid = upload_pyramid(pyramid);
  r.plan = upload_plan(plan);
  r.out = allocate(c.dtype, qkv.q.shape(), c.strided);
  r.lse = DeviceTensor(DType::kFloat32, {c.batch, c.heads_q, c.seq_q});
  r.lse.poison();
  const Status s = attention_forward(r.out.view, r.lse.view(), r.q.view, r.k.view, r.v.view,
                                     r.pyramid.view(), r.plan.view(), config);
  EXPECT_TRUE(s.ok()) << s.to_string();
  r.workspace_bytes = attention_backward_workspace_bytes(r.dout, r.q.view, r.k.view,
                                                         r.plan.view(), config);
  EXPECT_GT(r.workspace_bytes, 0u);
  r.workspace = DeviceTensor(DType::kUInt8, {static_cast<int64_t>(r.workspace_bytes)});
  r.workspace.poison();
  return r;
}

Grads gpu_backward(const BackwardCase& c, GpuRun& r, const Config& config) {
  const std::vector<int64_t> q_shape(r.q.view.shape, r.q.view.shape + 4);
  const std::vector<int64_t> kv_shape(r.k.view.shape, r.k.view.shape + 4);
  DeviceOperand dq = allocate(c.dtype, q_shape, c.strided);
  DeviceOperand dk = allocate(c.dtype, kv_shape, c.strided);
  DeviceOperand dv = allocate(c.dtype, kv_shape, c.strided);
  const Status s =
      attention_backward(dq.view, dk.view, dv.view, r.dout, r.q.view, r.k.view, r.v.view,
                         r.out.view, r.lse.view(), r.plan.view(), config, r.workspace.data(),
                         r.workspace_bytes);
  EXPECT_TRUE(s.ok()) << s.to_string();
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  return {download(dq, c.strided), download(dk, c.strided), download(dv, c.strided)};
}

bool bitwise_equal(const HostTensor& a, const HostTensor& b) {
  return a.numel() == b.numel() &&
         std::memcmp(a.data<unsigned char>(), b.data<unsigned char>(),
                     static_cast<size_t>(a.numel()) * dtype_size(a.dtype())) == 0;
}

double unit_roundoff(DType dtype) { return dtype == DType::kBFloat16 ? 0x1p-8 : 0x1p-11; }

class CudaBackwardTest : public ::testing::TestWithParam<BackwardCase> {};

TEST_P(CudaBackwardTest, MatchesCpuReference) {
  PSA_SKIP_WITHOUT_GPU();
  PSA_SKIP_WITHOUT_HOPPER_PATH();
  const BackwardCase& c = GetParam();
  const uint64_t seed = test_seed(0xbac0000u + static_cast<uint64_t>(c.seq_q * 131 + c.seq_k));
  const Qkv qkv = random_qkv(c.batch, c.heads_q, c.heads_kv, c.seq_q, c.seq_k, c.head_dim, c.dtype,
                             seed, /*scale=*/1.5);
  HostTensor dout(c.dtype, qkv.q.shape());
  fill_normal(dout, seed + 7);
  if (c.dout == Dout::kExpanded) {
    for (int64_t i = 0; i < dout.numel(); ++i) dout.set(i, 0.75);
  }
  const Config config = case_config(c);
  const HostPlan plan = plan_from_level_map(make_level_map(c, seed + 1), c);
  HostPyramid pyramid = make_host_pyramid(c.batch, c.heads_kv, c.seq_k, c.head_dim, c.dtype);
  ASSERT_TRUE(build_pyramid(pyramid.view(), qkv.k.view(), qkv.v.view()).ok());

  Forward ref_forward;
  const Grads ref = cpu_gradients(to_host(qkv.q.view(), DType::kFloat32),
                                  to_host(qkv.k.view(), DType::kFloat32),
                                  to_host(qkv.v.view(), DType::kFloat32),
                                  to_host(dout.view(), DType::kFloat32), plan, config,
                                  &ref_forward);
  const Grads cpu16 = cpu_gradients(qkv.q, qkv.k, qkv.v, dout, plan, config, nullptr);

  GpuRun run = gpu_setup(c, qkv, dout, pyramid, plan, config);
  const Grads gpu = gpu_backward(c, run, config);

  const double u = unit_roundoff(c.dtype);
  const char* names[3] = {"dq", "dk", "dv"};
  const HostTensor* gpu_grads[3] = {&gpu.dq, &gpu.dk, &gpu.dv};
  const HostTensor* ref_grads[3] = {&ref.dq, &ref.dk, &ref.dv};
  const HostTensor* cpu_grads[3] = {&cpu16.dq, &cpu16.dk, &cpu16.dv};
  for (int i = 0; i < 3; ++i) {
    ASSERT_FALSE(has_nan(*gpu_grads[i])) << names[i] << "; " << replay_hint(seed);
    if (c.plan == PlanKind::kAllSkip) {
      EXPECT_EQ(l2_norm(*gpu_grads[i]), 0.0) << names[i] << "; " << replay_hint(seed);
      continue;
    }
    ASSERT_GT(l2_norm(*ref_grads[i]), 0.0) << names[i] << " reference is zero; "
                                           << replay_hint(seed);
    const double cpu_error = rel_l2(*cpu_grads[i], *ref_grads[i]);
    const double gpu_error = rel_l2(*gpu_grads[i], *ref_grads[i]);
    EXPECT_LE(gpu_error, 2.0 * cpu_error + u)
        << names[i] << ": GPU rel L2 " << gpu_error << " vs same-precision CPU " << cpu_error
        << "; " << replay_hint(seed);
  }
  // Rows with no visible unit get exactly zero dQ.
  const int64_t d = c.head_dim;
  for (int64_t row = 0; row < ref_forward.lse.numel(); ++row) {
    if (!std::isinf(ref_forward.lse.get(row))) continue;
    for (int64_t i = 0; i < d; ++i) {
      ASSERT_EQ(gpu.dq.get(row * d + i), 0.0) << "empty row " << row << "; " << replay_hint(seed);
    }
  }
  if (c.deterministic) {
    // The same inputs give bitwise the same gradients (fresh poison, second run).
    run.workspace.poison();
    const Grads again = gpu_backward(c, run, config);
    const HostTensor* again_grads[3] = {&again.dq, &again.dk, &again.dv};
    for (int i = 0; i < 3; ++i) {
      EXPECT_TRUE(bitwise_equal(*again_grads[i], *gpu_grads[i]))
          << names[i] << " differs between runs; " << replay_hint(seed);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Sweep, CudaBackwardTest, ::testing::ValuesIn(kCases),
                         [](const ::testing::TestParamInfo<BackwardCase>& info) {
                           return std::string(info.param.name);
                         });

// A NaN in q reaches the gradients of every row and key it touches (never a silent zero), while
// rows it does not touch stay finite.
TEST(CudaBackward, NonFiniteQueryPropagates) {
  PSA_SKIP_WITHOUT_GPU();
  PSA_SKIP_WITHOUT_HOPPER_PATH();
  const BackwardCase c = {"NaN", 1, 2, 1, 256, 256, 64, DType::kBFloat16, 128, 64, false,
                          PlanKind::kAllFull, false};
  const uint64_t seed = test_seed(4242);
  Qkv qkv = random_qkv(c.batch, c.heads_q, c.heads_kv, c.seq_q, c.seq_k, c.head_dim, c.dtype, seed);
  qkv.q.set(5 * c.head_dim + 3, std::nan(""));  // (b 0, h 0, row 5, d 3)
  HostTensor dout(c.dtype, qkv.q.shape());
  fill_normal(dout, seed + 7);
  const Config config = case_config(c);
  const HostPlan plan = plan_from_level_map(make_level_map(c, seed + 1), c);
  HostPyramid pyramid = make_host_pyramid(c.batch, c.heads_kv, c.seq_k, c.head_dim, c.dtype);
  ASSERT_TRUE(build_pyramid(pyramid.view(), qkv.k.view(), qkv.v.view()).ok());
  GpuRun run = gpu_setup(c, qkv, dout, pyramid, plan, config);
  const Grads gpu = gpu_backward(c, run, config);
  const int64_t d = c.head_dim;
  bool row5_nan = false;
  for (int64_t i = 0; i < d; ++i) row5_nan = row5_nan || std::isnan(gpu.dq.get(5 * d + i));
  EXPECT_TRUE(row5_nan) << "dq of the NaN row is finite; " << replay_hint(seed);
  EXPECT_TRUE(has_nan(gpu.dk)) << replay_hint(seed);
  EXPECT_TRUE(has_nan(gpu.dv)) << replay_hint(seed);
  // Head 1 never sees the NaN query: its dq is finite.
  for (int64_t i = c.seq_q * d; i < 2 * c.seq_q * d; ++i) {
    ASSERT_FALSE(std::isnan(gpu.dq.get(i))) << "head 1 element " << i << "; " << replay_hint(seed);
  }
}

TEST(CudaBackward, WorkspaceTooSmallIsAnError) {
  PSA_SKIP_WITHOUT_GPU();
  PSA_SKIP_WITHOUT_HOPPER_PATH();
  const BackwardCase c = {"Small", 1, 2, 1, 128, 128, 64, DType::kBFloat16, 128, 64, false,
                          PlanKind::kMixed, false};
  const uint64_t seed = test_seed(99);
  const Qkv qkv = random_qkv(c.batch, c.heads_q, c.heads_kv, c.seq_q, c.seq_k, c.head_dim,
                             c.dtype, seed);
  HostTensor dout(c.dtype, qkv.q.shape());
  fill_normal(dout, seed);
  const Config config = case_config(c);
  const HostPlan plan = plan_from_level_map(make_level_map(c, seed + 1), c);
  HostPyramid pyramid = make_host_pyramid(c.batch, c.heads_kv, c.seq_k, c.head_dim, c.dtype);
  ASSERT_TRUE(build_pyramid(pyramid.view(), qkv.k.view(), qkv.v.view()).ok());
  GpuRun run = gpu_setup(c, qkv, dout, pyramid, plan, config);
  DeviceTensor dq(c.dtype, qkv.q.shape()), dk(c.dtype, qkv.k.shape()), dv(c.dtype, qkv.k.shape());
  const Status s = attention_backward(dq.view(), dk.view(), dv.view(), run.dout, run.q.view,
                                      run.k.view, run.v.view, run.out.view, run.lse.view(),
                                      run.plan.view(), config, run.workspace.data(),
                                      run.workspace_bytes - 1);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.to_string();
  EXPECT_NE(s.message().find("attention_backward_workspace_bytes"), std::string::npos)
      << s.to_string();
}

// On the portable path (compute capability 8.x, or PSA_FORCE_PORTABLE=1 on a Hopper card) the
// backward is refused with a status that says where it runs, never launched.
TEST(CudaBackward, PortablePathRefusesTheBackward) {
  PSA_SKIP_WITHOUT_GPU();
  if (hopper_path()) GTEST_SKIP() << "this device runs the Hopper backward";
  const BackwardCase c = {"Portable", 1, 2, 1, 128, 128, 64, DType::kBFloat16, 128, 64, false,
                          PlanKind::kMixed, false};
  const uint64_t seed = test_seed(98);
  const Qkv qkv = random_qkv(c.batch, c.heads_q, c.heads_kv, c.seq_q, c.seq_k, c.head_dim,
                             c.dtype, seed);
  HostTensor dout(c.dtype, qkv.q.shape());
  fill_normal(dout, seed);
  const Config config = case_config(c);
  const HostPlan plan = plan_from_level_map(make_level_map(c, seed + 1), c);
  HostPyramid pyramid = make_host_pyramid(c.batch, c.heads_kv, c.seq_k, c.head_dim, c.dtype);
  ASSERT_TRUE(build_pyramid(pyramid.view(), qkv.k.view(), qkv.v.view()).ok());
  GpuRun run = gpu_setup(c, qkv, dout, pyramid, plan, config);
  DeviceTensor dq(c.dtype, qkv.q.shape()), dk(c.dtype, qkv.k.shape()), dv(c.dtype, qkv.k.shape());
  const Status s = attention_backward(dq.view(), dk.view(), dv.view(), run.dout, run.q.view,
                                      run.k.view, run.v.view, run.out.view, run.lse.view(),
                                      run.plan.view(), config, run.workspace.data(),
                                      run.workspace_bytes);
  EXPECT_EQ(s.code(), StatusCode::kUnsupported) << s.to_string();
  EXPECT_NE(s.message().find("compute capability 9.0"), std::string::npos) << s.to_string();
}

}  // namespace
}  // namespace psa::test
