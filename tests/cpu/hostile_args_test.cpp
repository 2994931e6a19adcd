// Hostile arguments to the public API: sizes that overflow, broadcast and malformed views, outputs
// that overlap, enum values out of range. Every case must come back as a Status with a message
// naming the argument; none may crash, throw or write out of bounds. This table runs in the
// sanitizer job of CI (AddressSanitizer and UBSan, scripts/test.sh), where an out-of-bounds read
// or a signed overflow fails it even when the Status happens to be right.
#include <gtest/gtest.h>

#include <cstdint>
#include <functional>
#include <ostream>
#include <string>
#include <vector>

#include "psa/psa.h"

namespace psa {
namespace {

// AddressSanitizer's operator new reports a failed allocation and aborts instead of throwing
// std::bad_alloc (allocator_may_return_null does not change that for new), so the cases that
// run out of memory can only run without it.
#if defined(__SANITIZE_ADDRESS__)
constexpr bool kNewThrowsBadAlloc = false;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
constexpr bool kNewThrowsBadAlloc = false;
#else
constexpr bool kNewThrowsBadAlloc = true;
#endif
#else
constexpr bool kNewThrowsBadAlloc = true;
#endif

constexpr int64_t kBig = int64_t{1} << 40;  // elements: far more memory than any host has

// A view of `data` with explicit shape and strides (in elements).
TensorView raw_view(void* data, DType dtype, std::vector<int64_t> shape,
                    std::vector<int64_t> stride) {
  TensorView t;
  t.data = data;
  t.dtype = dtype;
  t.rank = static_cast<int>(shape.size());
  for (size_t d = 0; d < shape.size(); ++d) {
    t.shape[d] = shape[d];
    t.stride[d] = stride[d];
  }
  return t;
}

// One real buffer, big enough for every small view a case makes.
std::vector<float>& scratch() {
  static std::vector<float> buffer(1 << 16, 0.5f);
  return buffer;
}
float* mem(int64_t offset = 0) { return scratch().data() + offset; }

// A small valid problem: q, k, v (1, 2, 16, 8) fp32 in separate memory.
struct Small {
  HostTensor q{DType::kFloat32, {1, 2, 16, 8}}, k{DType::kFloat32, {1, 2, 16, 8}},
      v{DType::kFloat32, {1, 2, 16, 8}};
  HostTensor out{DType::kFloat32, {1, 2, 16, 8}}, lse{DType::kFloat32, {1, 2, 16}};
  HostTensor dout{DType::kFloat32, {1, 2, 16, 8}};
  Small() {
    for (HostTensor* t : {&q, &k, &v, &dout}) t->fill(0.25);
  }
};

Config small_config() {
  Config c;
  c.block_m = 16;
  c.block_n = 16;
  c.tile_n = 16;
  return c;
}

struct HostileCase {
  const char* name;
  std::function<Status()> call;
  StatusCode code;
  std::vector<std::string> fragments;  // each must appear in the message
};
// The case's name in test output (and in CTest's test names).
void PrintTo(const HostileCase& c, std::ostream* os) { *os << c.name; }

std::vector<HostileCase> hostile_cases() {
  std::vector<HostileCase> cases;
  auto add = [&](const char* name, StatusCode code, std::vector<std::string> fragments,
                 std::function<Status()> call) {
    cases.push_back({name, std::move(call), code, std::move(fragments)});
  };
  const StatusCode kInvalid = StatusCode::kInvalidArgument;

  // ---- Sizes ---------------------------------------------------------------------------------
  add("BroadcastElementCountOverflowsInt64", kInvalid, {"q", "element count", "int64"}, [] {
    const TensorView q = raw_view(mem(), DType::kFloat32, {65536, 65536, 65536, 65536},
                                  {0, 0, 0, 1});
    return dense_attention_forward(q, TensorView{}, q, q, q, false, 0.0f);
  });
  add("BroadcastInputNeedsMoreMemoryThanExists", StatusCode::kOutOfMemory,
      {"estimate_importance", "memory"}, [] {
        // Sampled rows of D = 2^40 elements: the copy cannot be allocated.
        const TensorView q = raw_view(mem(), DType::kFloat32, {1, 1, 128, kBig}, {0, 0, 0, 0});
        const TensorView k = raw_view(mem(), DType::kFloat32, {1, 1, 64, kBig}, {0, 0, 0, 0});
        HostTensor scores(DType::kFloat32, {1, 1, 1, 1});
        Config c;
        c.block_m = 128;
        c.block_n = 64;
        return estimate_importance(scores.view(), q, k, c);
      });
  add("DenseInputsOfTwoToTheThirtyOneRowsBroadcast", kInvalid, {"out", "overlap"}, [] {
    const TensorView q =
        raw_view(mem(), DType::kFloat32, {1, 1, (int64_t{1} << 31) - 1, 64}, {0, 0, 0, 1});
    return dense_attention_forward(q, TensorView{}, q, q, q, false, 0.0f);
  });
  add("ByteOffsetOverflowsInt64", kInvalid, {"q", "overflow"}, [] {
    const TensorView q = raw_view(mem(), DType::kFloat64, {1, 1, 2, 8},
                                  {0, 0, int64_t{1} << 61, 1});
    return dense_attention_forward(q, TensorView{}, q, q, q, false, 0.0f);
  });
  add("Rank64View", kInvalid, {"q", "rank", "64"}, [] {
    Small s;
    TensorView q = s.q.view();
    q.rank = 64;
    return dense_attention_forward(s.out.view(), TensorView{}, q, s.k.view(), s.v.view(), false,
                                   0.0f);
  });
  add("NegativeRankView", kInvalid, {"k", "rank", "-3"}, [] {
    Small s;
    TensorView k = s.k.view();
    k.rank = -3;
    return dense_attention_forward(s.out.view(), TensorView{}, s.q.view(), k, s.v.view(), false,
                                   0.0f);
  });
  add("MakeViewRank12", kInvalid, {"q", "rank", "12"}, [] {
    Small s;
    const int64_t shape[12] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1};
    const TensorView q = make_view(s.q.data<float>(), DType::kFloat32, 12, shape);
    return dense_attention_forward(s.out.view(), TensorView{}, q, s.k.view(), s.v.view(), false,
                                   0.0f);
  });
  add("NegativeDimension", kInvalid, {"v", ">= 0"}, [] {
    Small s;
    TensorView v = s.v.view();
    v.shape[2] = -16;
    return dense_attention_forward(s.out.view(), TensorView{}, s.q.view(), s.k.view(), v, false,
                                   0.0f);
  });
  add("UnknownDtypeCode", kInvalid, {"q", "dtype"}, [] {
    Small s;
    TensorView q = s.q.view();
    q.dtype = static_cast<DType>(42);
    return dense_attention_forward(s.out.view(), TensorView{}, q, s.k.view(), s.v.view(), false,
                                   0.0f);
  });
  add("UnknownDeviceCode", kInvalid, {"k", "device"}, [] {
    Small s;
    TensorView k = s.k.view();
    k.device = static_cast<Device>(9);
    return dense_attention_forward(s.out.view(), TensorView{}, s.q.view(), k, s.v.view(), false,
                                   0.0f);
  });
  add("PlanForInt64MaxQueries", kInvalid, {"plan", "Lq"}, [] {
    const Config c = small_config();
    HostPlan plan = make_host_plan(1, 2, 16, 16, c);
    HostTensor scores(DType::kFloat32, {1, 2, 1, 1});
    PlanView view = plan.view();
    view.seq_q = INT64_MAX;
    return plan_from_scores(view, scores.view(), TensorView{}, c);
  });
  add("PlanWithNegativeKeyLength", kInvalid, {"plan", "Lk"}, [] {
    const Config c = small_config();
    HostPlan plan = make_host_plan(1, 2, 16, 16, c);
    HostTensor levels(DType::kUInt8, {1, 2, 1, 1});
    PlanView view = plan.view();
    view.seq_k = -7;
    return plan_to_levels(levels.view(), view);
  });
  add("PlanShapeWithBlockZero", kInvalid, {"block_m"}, [] {
    Config c = small_config();
    c.block_m = 0;
    const PlanShape shape = plan_shape(1, 2, 100, 100, c);
    EXPECT_EQ(shape.num_q_blocks, 0);
    EXPECT_EQ(shape.num_k_blocks, 0);
    HostPlan plan = make_host_plan(1, 2, 100, 100, c);
    HostTensor scores(DType::kFloat32, {1, 2, 7, 7});
    return plan_from_scores(plan.view(), scores.view(), TensorView{}, c);
  });
  add("PlanShapeOfInt64MaxSequence", StatusCode::kOk, {}, [] {
    const PlanShape shape = plan_shape(1, 1, INT64_MAX, INT64_MAX, small_config());
    EXPECT_EQ(shape.num_q_blocks, INT64_MAX / 16 + 1);
    return Status();
  });
  add("TopkDensityWithTileZero", kInvalid, {"tile_n"}, [] {
    Config c = small_config();
    c.tile_n = 0;
    double density = 0.0;
    return topk_row_density(&density, c, 10);
  });
  add("TopkDensityWithTileAboveBlock", kInvalid, {"tile_n"}, [] {
    Config c = small_config();
    c.tile_n = 64;
    double density = 0.0;
    return topk_row_density(&density, c, 10);
  });
  add("TopkDensityOfNoBlocks", kInvalid, {"num_k_blocks"}, [] {
    double density = 0.0;
    return topk_row_density(&density, small_config(), 0);
  });
  add("NumelAndContiguityOfAnOverflowingView", StatusCode::kOk, {}, [] {
    const TensorView t = raw_view(mem(), DType::kFloat32, {kBig, kBig, kBig, 2}, {0, 0, 0, 1});
    EXPECT_EQ(numel(t), -1);
    EXPECT_FALSE(is_contiguous(t));
    TensorView bad = t;
    bad.rank = 99;
    EXPECT_EQ(numel(bad), -1);
    EXPECT_FALSE(is_contiguous(bad));
    EXPECT_NE(shape_string(bad).find("rank 99"), std::string::npos) << shape_string(bad);
    return Status();
  });
  add("HostTensorBytesOverflow", kInvalid, {"bytes", "overflow"}, [] {
    HostTensor t;
    return HostTensor::allocate(&t, DType::kFloat32, {int64_t{1} << 62});
  });
  add("HostTensorTooLargeForMemory", StatusCode::kOutOfMemory, {"memory"}, [] {
    HostTensor t;
    return HostTensor::allocate(&t, DType::kFloat64, {kBig, 1024});
  });
  add("HostTensorNegativeDimension", kInvalid, {"dimension"}, [] {
    HostTensor t;
    return HostTensor::allocate(&t, DType::kFloat32, {4, -1});
  });
  add("WorkloadBytesWrap", kInvalid, {"workload"}, [] {
    WorkloadSpec spec;
    spec.frames = 2097152;
    spec.height = 1048576;
    spec.width = 1048576;
    spec.heads = 1;
    spec.head_dim = 2;
    Workload w;
    return generate_workload(&w, spec);
  });
  add("WorkloadLargerThanMemory", StatusCode::kOutOfMemory, {"workload", "memory"}, [] {
    WorkloadSpec spec;
    spec.frames = spec.height = spec.width = 1000;
    spec.heads = 1024;
    Workload w;
    return generate_workload(&w, spec);
  });

  // ---- Outputs that overlap ------------------------------------------------------------------
  add("OutputBroadcastAlongTheSequence", kInvalid, {"out", "overlap"}, [] {
    Small s;
    TensorView out = s.out.view();
    out.stride[2] = 0;
    return dense_attention_forward(out, TensorView{}, s.q.view(), s.k.view(), s.v.view(), false,
                                   0.0f);
  });
  add("LseInsideOut", kInvalid, {"lse", "out", "overlap"}, [] {
    Small s;
    const TensorView lse = make_view(s.out.data<float>() + 8, DType::kFloat32, {1, 2, 16});
    return dense_attention_forward(s.out.view(), lse, s.q.view(), s.k.view(), s.v.view(), false,
                                   0.0f);
  });
  add("OutOverwritesK", kInvalid, {"out", "k", "overlap"}, [] {
    Small s;
    return dense_attention_forward(s.k.view(), TensorView{}, s.q.view(), s.k.view(), s.v.view(),
                                   false, 0.0f);
  });
  add("DqDkDvInOneBuffer", kInvalid, {"dk", "dq", "overlap"}, [] {
    Small s;
    HostTensor grads(DType::kFloat32, {1, 2, 16, 8});
    const TensorView g = grads.view();
    return dense_attention_backward(g, g, g, s.dout.view(), s.q.view(), s.k.view(), s.v.view(),
                                    s.out.view(), s.lse.view(), false, 0.0f);
  });
  add("DvOverlapsDkByOneRow", kInvalid, {"dv", "dk", "overlap"}, [] {
    Small s;
    HostTensor dq(DType::kFloat32, {1, 2, 16, 8}), dkv(DType::kFloat32, {1, 2, 17, 8});
    const TensorView dk = make_view(dkv.data<float>(), DType::kFloat32, {1, 2, 16, 8});
    const TensorView dv = make_view(dkv.data<float>() + 8, DType::kFloat32, {1, 2, 16, 8});
    return dense_attention_backward(dq.view(), dk, dv, s.dout.view(), s.q.view(), s.k.view(),
                                    s.v.view(), s.out.view(), s.lse.view(), false, 0.0f);
  });
  add("PackedDqDkDvAreAccepted", StatusCode::kOk, {}, [] {
    // (B, L, 3, H, D) gradients of packed qkv, the layout FlashAttention uses: three interleaved
    // views of one buffer that share no element.
    Small s;
    HostTensor dqkv(DType::kFloat32, {1, 16, 3, 2, 8});
    float* base = dqkv.data<float>();
    auto slice = [&](int i) {
      return raw_view(base + i * 16, DType::kFloat32, {1, 2, 16, 8}, {16 * 48, 8, 48, 1});
    };
    return dense_attention_backward(slice(0), slice(1), slice(2), s.dout.view(), s.q.view(),
                                    s.k.view(), s.v.view(), s.out.view(), s.lse.view(), false,
                                    0.0f);
  });
  add("PermuteTokensPartialOverlap", kInvalid, {"out", "in", "overlap"}, [] {
    HostTensor buffer(DType::kFloat32, {1, 1, 17, 8});
    const TensorView in = make_view(buffer.data<float>(), DType::kFloat32, {1, 1, 16, 8});
    const TensorView out = make_view(buffer.data<float>() + 8, DType::kFloat32, {1, 1, 16, 8});
    std::vector<int64_t> perm(16);
    for (int64_t i = 0; i < 16; ++i) perm[static_cast<size_t>(i)] = 15 - i;
    return permute_tokens(out, in, perm.data());
  });
  add("PermuteTokensOutputBroadcast", kInvalid, {"out", "overlap"}, [] {
    HostTensor in(DType::kFloat32, {1, 1, 16, 8}), out(DType::kFloat32, {1, 1, 16, 8});
    TensorView o = out.view();
    o.stride[2] = 0;
    std::vector<int64_t> perm(16, 0);
    return permute_tokens(o, in.view(), perm.data());
  });
  add("PermuteTokensUnknownDtype", kInvalid, {"in", "dtype"}, [] {
    HostTensor in(DType::kFloat32, {1, 1, 16, 8}), out(DType::kFloat32, {1, 1, 16, 8});
    TensorView i = in.view(), o = out.view();
    i.dtype = o.dtype = static_cast<DType>(200);
    std::vector<int64_t> perm(16, 0);
    return permute_tokens(o, i, perm.data());
  });
  add("PyramidLevelsShareMemory", kInvalid, {"pyramid", "overlap"}, [] {
    Small s;
    HostPyramid pyramid = make_host_pyramid(1, 2, 16, 8, DType::kFloat32);
    PyramidView view = pyramid.view();
    view.v[0] = view.k[0];
    return build_pyramid(view, s.k.view(), s.v.view());
  });
  add("PlanCountsInsideBlocks", kInvalid, {"plan.counts", "plan.blocks", "overlap"}, [] {
    const Config c = small_config();
    HostPlan plan = make_host_plan(1, 2, 64, 64, c);
    HostTensor scores(DType::kFloat32, {1, 2, 4, 4});
    scores.fill(0.25);
    PlanView view = plan.view();
    view.counts.data = view.blocks.data;
    return plan_from_scores(view, scores.view(), TensorView{}, c);
  });

  // ---- Enums out of range --------------------------------------------------------------------
  add("ConfigModeOutOfRange", kInvalid, {"config.mode"}, [] {
    Config c = small_config();
    c.mode = static_cast<PlanMode>(7);
    return validate_config(c);
  });
  add("ConfigTextPositionOutOfRange", kInvalid, {"config.text_position"}, [] {
    Config c = small_config();
    c.text_position = static_cast<TextPosition>(5);
    return validate_config(c);
  });
  add("RearrangeMethodOutOfRange", kInvalid, {"method"}, [] {
    RearrangeSpec spec;
    spec.method = static_cast<RearrangeMethod>(9);
    spec.frames = spec.height = spec.width = 2;
    std::vector<int64_t> perm(8);
    return make_permutation(perm.data(), spec);
  });
  add("RearrangeTextPositionOutOfRange", kInvalid, {"text_position"}, [] {
    RearrangeSpec spec;
    spec.frames = spec.height = spec.width = 2;
    spec.text_len = 2;
    spec.text_position = static_cast<TextPosition>(3);
    std::vector<int64_t> perm(10);
    return make_permutation(perm.data(), spec);
  });
  return cases;
}

class Hostile : public ::testing::TestWithParam<HostileCase> {};

TEST_P(Hostile, ReturnsAStatusNamingTheArgument) {
  const HostileCase& c = GetParam();
  if (c.code == StatusCode::kOutOfMemory && !kNewThrowsBadAlloc) {
    GTEST_SKIP() << "out-of-memory cases need an operator new that throws std::bad_alloc; "
                    "AddressSanitizer's aborts";
  }
  Status status;
  try {
    status = c.call();
  } catch (const std::exception& e) {
    FAIL() << c.name << ": an exception left the API: " << e.what();
  }
  EXPECT_EQ(status.code(), c.code) << c.name << ": " << status.to_string();
  for (const std::string& f : c.fragments) {
    EXPECT_NE(status.message().find(f), std::string::npos)
        << c.name << ": message \"" << status.message() << "\" should mention \"" << f << "\"";
  }
}

INSTANTIATE_TEST_SUITE_P(Table, Hostile, ::testing::ValuesIn(hostile_cases()),
                         [](const ::testing::TestParamInfo<HostileCase>& info) {
                           return std::string(info.param.name);
                         });

}  // namespace
}  // namespace psa
