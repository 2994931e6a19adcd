// The attention backward on CUDA (SPEC.md section 7): the workspace, the small kernels around the
// main kernel, and the one dispatch point where dtype and head dim become template parameters.
//
// One call enqueues, on the caller's stream and without synchronising:
//   1. the pyramid of k and v (levels 2, 4, 8) into the workspace (build_pyramid);
//   2. zeroed fp32 accumulators of dK and dV for every level, the row counter and, when
//      deterministic, the unit counters;
//   3. row terms: lse2 = LSE * log2(e) (+inf for rows with no visible unit) and
//      delta = rowsum(dout * out), padded to whole query blocks; dout is packed into the workspace
//      when its layout does not allow 16-byte row copies (an expanded gradient, zero strides);
//   4. deterministic only: the accumulation order, order[R][J] = (rank << 2) | level, the rank
//      of row R among the rows of its kv group that attend key block J at that level;
//   5. the main kernel (backward_kernel.cuh): dQ, and the per-level dK / dV accumulators;
//   6. finalise: dK[t] = scale * sum over levels f of acc_f[t / f] / c, dV likewise (a pooled
//      token's gradient goes to each of the c tokens it averages, divided by c), written in the
//      dtype and strides of dk / dv.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <string>

#include "common/index_math.h"
#include "cuda/attention/backward_launch.h"
#include "cuda/attention/row_checks.h"
#include "cuda/cuda_backend.h"
#include "cuda/cuda_utils.cuh"

namespace psa::cuda {
namespace {

constexpr double kLog2e = 1.4426950408889634;
constexpr float kInf = __builtin_huge_valf();
constexpr size_t kWorkspaceAlignment = 256;
constexpr int kRowTermsWarps = 8;  // rows (one warp each) per block of the row-terms kernel
// Deterministic mode: copies of the accumulators that consecutive ranks alternate between, and
// the most kv groups handed out side by side (BackwardParams::lanes, interleave). Measured on an
// H200 (structured inputs, default plan, backward ms, order-dependent / lanes x groups 1x4, 2x4,
// 1xall, 2xall): Wan2.1 1.3B 9.9 / 15.4, 14.9, 14.3, 15.4; CogVideoX-like with 12 heads
// 1.9 / 5.0, 4.0, 2.7, 2.8; Qwen2.5-VL-like causal prefill (4 kv heads) 3.2 / 14.1, 8.2, -, 8.1.
// Wan2.1 14B: 2 lanes and all 40 groups 274 ms, 2 lanes and 8 groups 272, 1 lane and 4 groups
// 228 ms (the second lane doubles the accumulators that compete for L2); 2 lanes are kept for
// the causal and text-first shapes, where the chains of rows sharing a unit dominate.
constexpr int kLanes = 2;
constexpr int kMaxInterleave = 8;
constexpr int kThreads = 256;

size_t align_up(size_t x) {
  return (x + kWorkspaceAlignment - 1) / kWorkspaceAlignment * kWorkspaceAlignment;
}

// Byte offsets of every part of the workspace, from the problem's sizes alone.
struct BackwardLayout {
  int64_t level_length[kAttentionLevels] = {};
  int64_t level_offset[kAttentionLevels] = {};  // elements, inside each accumulator region
  int64_t acc_elements = 0;                     // of one region (dK or dV)
  int64_t row_terms_stride = 0;                 // Mq * block_m
  int lanes = 1;                                // copies of each accumulator region
  bool pack_dout = false;
  bool deterministic = false;
  size_t pyramid_k[kNumPooledLevels] = {}, pyramid_v[kNumPooledLevels] = {};
  size_t dk_acc = 0, dv_acc = 0, lse2 = 0, delta = 0, dout = 0, order = 0, sem_k = 0, sem_v = 0;
  size_t counter = 0, total = 0;
};

BackwardLayout backward_layout(const TensorView& dout, const TensorView& q, const TensorView& k,
                               const PlanView& plan, const Config& config) {
  BackwardLayout w;
  const int64_t batch = q.shape[0], heads_q = q.shape[1], seq_q = q.shape[2], dim = q.shape[3];
  const int64_t heads_kv = k.shape[1], seq_k = k.shape[2];
  const int64_t num_q_blocks = detail::ceil_div(seq_q, plan.block_m);
  const int64_t num_k_blocks = detail::ceil_div(seq_k, plan.block_n);
  const size_t element = dtype_size(q.dtype);
  size_t at = 0;
  const auto take = [&at](size_t bytes) {
    const size_t offset = at;
    at = align_up(at + bytes);
    return offset;
  };
  for (int l = 0; l < kAttentionLevels; ++l) {
    w.level_length[l] = detail::pooled_length(seq_k, int64_t{1} << l);
    w.level_offset[l] = w.acc_elements;
    w.acc_elements += batch * heads_kv * w.level_length[l] * dim;
  }
  for (int l = 0; l < kNumPooledLevels; ++l) {
    const size_t bytes =
        static_cast<size_t>(batch * heads_kv * w.level_length[l + 1] * dim) * element;
    w.pyramid_k[l] = take(bytes);
    w.pyramid_v[l] = take(bytes);
  }
  w.deterministic = config.deterministic;
  w.lanes = w.deterministic ? kLanes : 1;
  w.dk_acc = take(static_cast<size_t>(w.acc_elements * w.lanes) * sizeof(float));
  w.dv_acc = take(static_cast<size_t>(w.acc_elements * w.lanes) * sizeof(float));
  w.row_terms_stride = num_q_blocks * plan.block_m;
  const size_t row_terms =
      static_cast<size_t>(batch * heads_q * w.row_terms_stride) * sizeof(float);
  w.lse2 = take(row_terms);
  w.delta = take(row_terms);
  w.pack_dout = !check_rows_aligned(dout, "dout").ok();
  if (w.pack_dout) w.dout = take(static_cast<size_t>(batch * heads_q * seq_q * dim) * element);
  if (w.deterministic) {
    w.order = take(static_cast<size_t>(batch * heads_q * num_q_blocks * num_k_blocks) *
                   sizeof(int32_t));
    const size_t units = static_cast<size_t>(batch * heads_kv * kAttentionLevels * num_k_blocks *
                                             w.lanes) * sizeof(int32_t);
    w.sem_k = take(units);
    w.sem_v = take(units);
  }
  w.counter = take(sizeof(int32_t));
  w.total = at;
  return w;
}

// ---- Row terms ---------------------------------------------------------------------------------

struct RowTermsParams {
  const void* dout;
  const void* out;
  const float* lse;
  int64_t dout_stride[4], out_stride[4], lse_stride[3];
  void* packed;  // (B, Hq, Lq, D) contiguous copy of dout, or null
  float* lse2;
  float* delta;
  int64_t heads, seq, padded, dim;
  int64_t rows;  // B * Hq * padded
};

// One warp per row (b, h, i) of the padded sequence: delta = sum_d dout * out in fp32, lse2, and
// the packed copy of dout. Any strides (zero included).
template <typename T>
__global__ void __launch_bounds__(kRowTermsWarps * 32) row_terms_kernel(RowTermsParams p) {
  const int lane = threadIdx.x % 32;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowTermsWarps + threadIdx.x / 32;
  if (row >= p.rows) return;
  const int64_t i = row % p.padded;
  const int64_t bh = row / p.padded;
  const int64_t h = bh % p.heads, b = bh / p.heads;
  float lse2 = kInf;  // padding rows get P = 0
  float sum = 0.0f;
  if (i < p.seq) {
    const T* dout = static_cast<const T*>(p.dout) + b * p.dout_stride[0] + h * p.dout_stride[1] +
                    i * p.dout_stride[2];
    const T* out = static_cast<const T*>(p.out) + b * p.out_stride[0] + h * p.out_stride[1] +
                   i * p.out_stride[2];
    T* packed = p.packed == nullptr
                    ? nullptr
                    : static_cast<T*>(p.packed) + ((b * p.heads + h) * p.seq + i) * p.dim;
    for (int64_t d = lane; d < p.dim; d += 32) {
      const T g = dout[d * p.dout_stride[3]];
      sum += to_float(g) * to_float(out[d * p.out_stride[3]]);
      if (packed != nullptr) packed[d] = g;
    }
    const float lse = p.lse[b * p.lse_stride[0] + h * p.lse_stride[1] + i * p.lse_stride[2]];
    // A row with no visible unit has LSE = -inf and P = 0 everywhere: lse2 = +inf gives that.
    lse2 = lse == -kInf ? kInf : lse * static_cast<float>(kLog2e);
  }
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
  if (lane == 0) {
    p.lse2[row] = lse2;
    p.delta[row] = sum;
  }
}

// ---- Accumulation order (deterministic mode) ---------------------------------------------------

struct OrderParams {
  const int32_t* counts;
  const int32_t* blocks;
  int32_t* order;  // (B, Hq, Mq, Nk), -1 (0xFF bytes) on entry
  int64_t batch, heads_q, heads_kv, num_q_blocks, num_k_blocks;
};

// Thread per (row R, list entry e): order[R][blocks[R][e]] = level of e. Counts are clamped as the
// main kernel clamps them; out-of-range blocks are skipped there and here.
__global__ void __launch_bounds__(kThreads) order_levels_kernel(OrderParams p) {
  const int64_t index = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  const int64_t nk = p.num_k_blocks;
  if (index >= p.batch * p.heads_q * p.num_q_blocks * nk) return;
  const int64_t row = index / nk, e = index % nk;
  int64_t used = 0;
  for (int l = 0; l < kAttentionLevels; ++l) {
    const int64_t c =
        detail::max64(0, detail::min64(p.counts[row * kAttentionLevels + l], nk - used));
    if (e < used + c) {
      const int32_t j = p.blocks[row * nk + e];
      if (j >= 0 && j < nk) p.order[row * nk + j] = l;
      return;
    }
    used += c;
  }
}

// Thread per (batch, kv head, key block J): walks the group's rows in row order (query head,
// then query block) and turns each level into (rank << 2) | level.
__global__ void __launch_bounds__(kThreads) order_ranks_kernel(OrderParams p) {
  const int64_t index = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  const int64_t nk = p.num_k_blocks;
  if (index >= p.batch * p.heads_kv * nk) return;
  const int64_t j = index % nk;
  const int64_t g = (index / nk) % p.heads_kv;
  const int64_t b = index / (nk * p.heads_kv);
  const int64_t group = p.heads_q / p.heads_kv;
  int32_t rank[kAttentionLevels] = {0, 0, 0, 0};
  for (int64_t h = g * group; h < (g + 1) * group; ++h) {
    for (int64_t i = 0; i < p.num_q_blocks; ++i) {
      int32_t* entry = p.order + ((b * p.heads_q + h) * p.num_q_blocks + i) * nk + j;
      const int32_t level = *entry;
      if (level >= 0 && level < kAttentionLevels) *entry = (rank[level]++ << 2) | level;
    }
  }
}

// ---- Finalise ----------------------------------------------------------------------------------

struct FinalizeParams {
  const float* acc[2];  // dK, dV regions, `lanes` copies each, lane_stride elements apart
  int lanes;
  int64_t lane_stride;
  void* out[2];         // dk, dv
  int64_t out_stride[2][4];
  int64_t level_offset[kAttentionLevels];
  int64_t level_length[kAttentionLevels];
  int64_t heads, seq, dim;
  int64_t items;  // B * Hkv * Lk * D / 4
  float scale[2];  // softmax_scale for dK, 1 for dV
};

// Thread per 4 consecutive features of one token of (b, kv head); blockIdx.y picks dK or dV.
template <typename T>
__global__ void __launch_bounds__(kThreads) finalize_kernel(FinalizeParams p) {
  const int which = blockIdx.y;
  const int64_t index = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (index >= p.items) return;
  const int64_t quads = p.dim / 4;
  const int64_t d = (index % quads) * 4;
  const int64_t t = (index / quads) % p.seq;
  const int64_t bh = index / (quads * p.seq);
  float4 sum = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll
  for (int l = 0; l < kAttentionLevels; ++l) {
    const int64_t pooled = t >> l;
    const float inv =
        1.0f / static_cast<float>(detail::pooled_count(p.seq, int64_t{1} << l, pooled));
    const float* acc =
        p.acc[which] + p.level_offset[l] + (bh * p.level_length[l] + pooled) * p.dim + d;
    // The lanes in order, then the levels in order: a fixed summation order.
    float4 x = *reinterpret_cast<const float4*>(acc);
    for (int lane = 1; lane < p.lanes; ++lane) {
      const float4 y = *reinterpret_cast<const float4*>(acc + lane * p.lane_stride);
      x.x += y.x;
      x.y += y.y;
      x.z += y.z;
      x.w += y.w;
    }
    sum.x += x.x * inv;
    sum.y += x.y * inv;
    sum.z += x.z * inv;
    sum.w += x.w * inv;
  }
  const int64_t h = bh % p.heads, b = bh / p.heads;
  const int64_t* s = p.out_stride[which];
  T* out = static_cast<T*>(p.out[which]) + b * s[0] + h * s[1] + t * s[2] + d * s[3];
  const float scale = p.scale[which];
  out[0] = from_float<T>(sum.x * scale);
  out[s[3]] = from_float<T>(sum.y * scale);
  out[2 * s[3]] = from_float<T>(sum.z * scale);
  out[3 * s[3]] = from_float<T>(sum.w * scale);
}

unsigned blocks_for(int64_t items, int64_t per_block) {
  return static_cast<unsigned>(detail::ceil_div(items, per_block));
}

template <typename T>
Status launch_row_terms(const RowTermsParams& p, cudaStream_t stream) {
  if (p.rows == 0) return Status();
  if (detail::ceil_div(p.rows, kRowTermsWarps) > kMaxGridX) {
    return unsupported("attention_backward: too many rows for one launch");
  }
  row_terms_kernel<T><<<blocks_for(p.rows, kRowTermsWarps), kRowTermsWarps * 32, 0, stream>>>(p);
  return check_launch("row_terms_kernel");
}

template <typename T>
Status launch_finalize(const FinalizeParams& p, cudaStream_t stream) {
  if (p.items == 0) return Status();
  if (detail::ceil_div(p.items, kThreads) > kMaxGridX) {
    return unsupported("attention_backward: k too large for one launch");
  }
  finalize_kernel<T><<<dim3(blocks_for(p.items, kThreads), 2), kThreads, 0, stream>>>(p);
  return check_launch("finalize_kernel");
}

// The one place where dtype and head dim become template parameters.
Status launch_backward_variant(const BackwardParams& p, DType dtype, int64_t head_dim, int block_m,
                               cudaStream_t stream) {
  if (dtype == DType::kBFloat16) {
    if (head_dim == 64) return launch_attention_backward<__nv_bfloat16, 64>(p, block_m, stream);
    return launch_attention_backward<__nv_bfloat16, 128>(p, block_m, stream);
  }
  if (head_dim == 64) return launch_attention_backward<__half, 64>(p, block_m, stream);
  return launch_attention_backward<__half, 128>(p, block_m, stream);
}

TensorView workspace_view(void* base, size_t offset, DType dtype, int64_t b, int64_t h, int64_t l,
                          int64_t d, int device_index) {
  return make_view(static_cast<char*>(base) + offset, dtype, {b, h, l, d}, Device::kCuda,
                   device_index);
}

}  // namespace

size_t attention_backward_workspace_bytes(const TensorView& dout, const TensorView& q,
                                          const TensorView& k, const PlanView& plan,
                                          const Config& config) {
  return backward_layout(dout, q, k, plan, config).total;
}

Status attention_backward(TensorView dq, TensorView dk, TensorView dv, const TensorView& dout,
                          const TensorView& q, const TensorView& k, const TensorView& v,
                          const TensorView& out, const TensorView& lse, const PlanView& plan,
                          const Config& config, void* workspace, size_t workspace_bytes,
                          Stream stream) {
  const int64_t head_dim = q.shape[3];
  std::string reason;
  if (!attention_supported(q.dtype, head_dim, plan.block_m, plan.block_n, &reason)) {
    return unsupported("attention_backward on CUDA: " + reason);
  }
  PSA_RETURN_IF_ERROR(check_rows_aligned(q, "q"));
  PSA_RETURN_IF_ERROR(check_rows_aligned(k, "k"));
  PSA_RETURN_IF_ERROR(check_rows_aligned(v, "v"));
  PSA_RETURN_IF_ERROR(check_rows_aligned(dq, "dq"));
  const BackwardLayout w = backward_layout(dout, q, k, plan, config);
  if (workspace_bytes < w.total || workspace == nullptr) {
    return invalid_argument("attention_backward needs a workspace of " + std::to_string(w.total) +
                            " bytes on CUDA (attention_backward_workspace_bytes), got " +
                            std::to_string(workspace_bytes));
  }
  if (!is_aligned(workspace, kWorkspaceAlignment)) {
    return invalid_argument("the attention_backward workspace must be 256-byte aligned");
  }
  const int64_t batch = q.shape[0], heads_q = q.shape[1], seq_q = q.shape[2];
  const int64_t heads_kv = k.shape[1], seq_k = k.shape[2];
  const int64_t num_q_blocks = detail::ceil_div(seq_q, plan.block_m);
  const int64_t num_k_blocks = detail::ceil_div(seq_k, plan.block_n);
  if (batch * heads_q * num_q_blocks > std::numeric_limits<int32_t>::max() ||
      seq_q > std::numeric_limits<int32_t>::max() || seq_k > std::numeric_limits<int32_t>::max()) {
    return unsupported("attention_backward on CUDA: B * Hq * Mq, Lq and Lk must fit in int32, "
                       "got " +
                       shape_string(q) + " and " + shape_string(k));
  }

  DeviceGuard guard(q.device_index);
  PSA_RETURN_IF_ERROR(guard.status());
  const cudaStream_t s = to_cuda_stream(stream);
  char* base = static_cast<char*>(workspace);
  const bool bf16 = q.dtype == DType::kBFloat16;

  // 1. The pyramid.
  PyramidView pyramid;
  for (int l = 0; l < kNumPooledLevels; ++l) {
    pyramid.k[l] = workspace_view(base, w.pyramid_k[l], k.dtype, batch, heads_kv,
                                  w.level_length[l + 1], head_dim, q.device_index);
    pyramid.v[l] = workspace_view(base, w.pyramid_v[l], k.dtype, batch, heads_kv,
                                  w.level_length[l + 1], head_dim, q.device_index);
  }
  PSA_RETURN_IF_ERROR(cuda::build_pyramid(pyramid, k, v, stream));

  // 2. Zeroed accumulators and counters (the order map starts at -1).
  const size_t acc_bytes = static_cast<size_t>(w.acc_elements * w.lanes) * sizeof(float);
  for (const size_t region : {w.dk_acc, w.dv_acc}) {
    PSA_RETURN_IF_ERROR(
        cuda_check(cudaMemsetAsync(base + region, 0, acc_bytes, s), "cudaMemsetAsync"));
  }
  PSA_RETURN_IF_ERROR(
      cuda_check(cudaMemsetAsync(base + w.counter, 0, sizeof(int32_t), s), "cudaMemsetAsync"));

  // 3. Row terms (and the packed dout).
  RowTermsParams rt{};
  rt.dout = dout.data;
  rt.out = out.data;
  rt.lse = static_cast<const float*>(lse.data);
  for (int d = 0; d < 4; ++d) {
    rt.dout_stride[d] = dout.stride[d];
    rt.out_stride[d] = out.stride[d];
  }
  for (int d = 0; d < 3; ++d) rt.lse_stride[d] = lse.stride[d];
  rt.packed = w.pack_dout ? base + w.dout : nullptr;
  rt.lse2 = reinterpret_cast<float*>(base + w.lse2);
  rt.delta = reinterpret_cast<float*>(base + w.delta);
  rt.heads = heads_q;
  rt.seq = seq_q;
  rt.padded = w.row_terms_stride;
  rt.dim = head_dim;
  rt.rows = batch * heads_q * w.row_terms_stride;
  PSA_RETURN_IF_ERROR(bf16 ? launch_row_terms<__nv_bfloat16>(rt, s)
                           : launch_row_terms<__half>(rt, s));

  // 4. The accumulation order.
  BackwardParams p;
  if (w.deterministic) {
    OrderParams op{};
    op.counts = static_cast<const int32_t*>(plan.counts.data);
    op.blocks = static_cast<const int32_t*>(plan.blocks.data);
    op.order = reinterpret_cast<int32_t*>(base + w.order);
    op.batch = batch;
    op.heads_q = heads_q;
    op.heads_kv = heads_kv;
    op.num_q_blocks = num_q_blocks;
    op.num_k_blocks = num_k_blocks;
    const int64_t entries = batch * heads_q * num_q_blocks * num_k_blocks;
    const int64_t units = batch * heads_kv * num_k_blocks;
    if (detail::ceil_div(entries, kThreads) > kMaxGridX) {
      return unsupported("attention_backward: plan too large for one launch");
    }
    PSA_RETURN_IF_ERROR(cuda_check(
        cudaMemsetAsync(op.order, 0xFF, static_cast<size_t>(entries) * sizeof(int32_t), s),
        "cudaMemsetAsync"));
    const size_t unit_bytes =
        static_cast<size_t>(units * kAttentionLevels * w.lanes) * sizeof(int32_t);
    for (const size_t counters : {w.sem_k, w.sem_v}) {
      PSA_RETURN_IF_ERROR(
          cuda_check(cudaMemsetAsync(base + counters, 0, unit_bytes, s), "cudaMemsetAsync"));
    }
    if (entries > 0) {
      order_levels_kernel<<<blocks_for(entries, kThreads), kThreads, 0, s>>>(op);
      PSA_RETURN_IF_ERROR(check_launch("order_levels_kernel"));
      order_ranks_kernel<<<blocks_for(units, kThreads), kThreads, 0, s>>>(op);
      PSA_RETURN_IF_ERROR(check_launch("order_ranks_kernel"));
    }
    p.order = op.order;
    // Up to kMaxInterleave kv groups side by side (the largest count that divides Hkv): Wan2.1
    // 1.3B at 480p keeps ~132 rows in flight, 22 per head (6 heads) instead of 132 in one.
    p.interleave = 1;
    for (int f = kMaxInterleave; f > 1; --f) {
      if (heads_kv % f == 0) {
        p.interleave = f;
        break;
      }
    }
    p.lanes = w.lanes;
    p.lane_stride = w.acc_elements;
    p.sem_k = reinterpret_cast<int32_t*>(base + w.sem_k);
    p.sem_v = reinterpret_cast<int32_t*>(base + w.sem_v);
  }

  // 5. The main kernel.
  p.q = q.data;
  p.q_batch_stride = q.stride[0];
  p.q_head_stride = q.stride[1];
  p.q_row_stride = q.stride[2];
  if (w.pack_dout) {
    p.dout = base + w.dout;
    p.dout_batch_stride = heads_q * seq_q * head_dim;
    p.dout_head_stride = seq_q * head_dim;
    p.dout_row_stride = head_dim;
  } else {
    p.dout = dout.data;
    p.dout_batch_stride = dout.stride[0];
    p.dout_head_stride = dout.stride[1];
    p.dout_row_stride = dout.stride[2];
  }
  set_level_views(p, k, v, pyramid);
  for (int l = 0; l < kAttentionLevels; ++l) p.level_offset[l] = w.level_offset[l];
  p.lse2 = rt.lse2;
  p.delta = rt.delta;
  p.row_terms_stride = w.row_terms_stride;
  p.dq = dq.data;
  p.dq_batch_stride = dq.stride[0];
  p.dq_head_stride = dq.stride[1];
  p.dq_row_stride = dq.stride[2];
  p.dk_acc = reinterpret_cast<float*>(base + w.dk_acc);
  p.dv_acc = reinterpret_cast<float*>(base + w.dv_acc);
  p.counts = static_cast<const int32_t*>(plan.counts.data);
  p.blocks = static_cast<const int32_t*>(plan.blocks.data);
  p.row_counter = reinterpret_cast<int32_t*>(base + w.counter);
  p.batch = static_cast<int>(batch);
  p.heads_q = static_cast<int>(heads_q);
  p.heads_kv = static_cast<int>(heads_kv);
  p.seq_q = static_cast<int>(seq_q);
  p.seq_k = static_cast<int>(seq_k);
  p.num_q_blocks = static_cast<int>(num_q_blocks);
  p.num_k_blocks = static_cast<int>(num_k_blocks);
  p.block_n = plan.block_n;
  p.log2_block_n = log2_int(plan.block_n);
  const double scale = detail::effective_scale(config.softmax_scale, head_dim);
  p.scale_log2 = static_cast<float>(scale * kLog2e);
  p.scale = static_cast<float>(scale);
  p.causal = config.causal;
  if (batch * heads_q * num_q_blocks > 0) {
    PSA_RETURN_IF_ERROR(launch_backward_variant(p, q.dtype, head_dim, plan.block_m, s));
  }

  // 6. dK and dV of the original tokens.
  FinalizeParams f{};
  f.acc[0] = p.dk_acc;
  f.acc[1] = p.dv_acc;
  f.lanes = w.lanes;
  f.lane_stride = w.acc_elements;
  f.out[0] = dk.data;
  f.out[1] = dv.data;
  for (int d = 0; d < 4; ++d) {
    f.out_stride[0][d] = dk.stride[d];
    f.out_stride[1][d] = dv.stride[d];
  }
  for (int l = 0; l < kAttentionLevels; ++l) {
    f.level_offset[l] = w.level_offset[l];
    f.level_length[l] = w.level_length[l];
  }
  f.heads = heads_kv;
  f.seq = seq_k;
  f.dim = head_dim;
  f.items = batch * heads_kv * seq_k * head_dim / 4;
  f.scale[0] = p.scale;
  f.scale[1] = 1.0f;
  return bf16 ? launch_finalize<__nv_bfloat16>(f, s) : launch_finalize<__half>(f, s);
}

}  // namespace psa::cuda
