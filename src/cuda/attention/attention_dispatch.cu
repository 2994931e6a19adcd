// The one dispatch point of the attention forward: the device's kernel path (Hopper or portable,
// cuda/kernel_path.h), runtime dtype, head dim and block_m become template parameters here;
// everything the kernels assume beyond the public API's checks (unit stride on D, 16-byte aligned
// rows) is checked here and reported as kUnsupported.
#include <cuda_runtime.h>

#include <cmath>
#include <string>

#include "common/index_math.h"
#include "cuda/attention/attention_launch.h"
#include "cuda/attention/row_checks.h"
#include "cuda/cuda_backend.h"
#include "cuda/cuda_utils.cuh"
#include "cuda/kernel_path.h"
#include "cuda/portable/attention_launch.h"

namespace psa::cuda {

namespace {

constexpr double kLog2e = 1.4426950408889634;

}  // namespace

Status check_rows_aligned(const TensorView& t, const std::string& name) {
  if (t.stride[t.rank - 1] != 1 && t.shape[t.rank - 1] > 1) {
    return unsupported(name + " must have unit stride on the head dimension on CUDA, got stride " +
                       std::to_string(t.stride[t.rank - 1]));
  }
  if (!is_aligned(t.data, 16)) {
    return unsupported(name + " must be 16-byte aligned on CUDA");
  }
  for (int d = 0; d < t.rank - 1; ++d) {
    if (t.stride[d] % kChunkElements != 0 && t.shape[d] > 1) {
      return unsupported(name + " strides must be multiples of 8 elements on CUDA (16-byte rows), "
                         "got stride " + std::to_string(t.stride[d]) + " on dim " +
                         std::to_string(d));
    }
  }
  return Status();
}

int log2_int(int x) {
  int l = 0;
  while ((1 << l) < x) ++l;
  return l;
}

bool attention_supported(DType dtype, int64_t head_dim, int block_m, int block_n,
                         std::string* reason) {
  std::string why;
  if (dtype != DType::kBFloat16 && dtype != DType::kFloat16) {
    why = std::string("dtype ") + dtype_name(dtype) + " is not supported (bf16, fp16)";
  } else if (head_dim != 64 && head_dim != 128) {
    why = "head dim " + std::to_string(head_dim) + " is not supported (64, 128)";
  } else if (block_m != 64 && block_m != 128) {
    why = "block_m " + std::to_string(block_m) + " is not supported (64, 128)";
  } else if (block_n != 32 && block_n != 64 && block_n != 128) {
    why = "block_n " + std::to_string(block_n) + " is not supported (32, 64, 128)";
  }
  if (reason != nullptr) *reason = why;
  return why.empty();
}

bool device_usable(std::string* reason) {
  // The portable kernels run on compute capability 8.0 and newer, the Hopper kernels on 9.0.
  int count = 0;
  const cudaError_t error = cudaGetDeviceCount(&count);
  if (error != cudaSuccess) {
    (void)cudaGetLastError();  // clear it: this check must not fail a later, unrelated call
    if (reason != nullptr) *reason = std::string("no CUDA device: ") + cudaGetErrorString(error);
    return false;
  }
  std::string found;
  for (int device = 0; device < count; ++device) {
    KernelPath path = KernelPath::kPortable;
    if (kernel_path(device, &path).ok()) {
      if (reason != nullptr) reason->clear();
      return true;
    }
    found += (found.empty() ? "" : ", ") + describe_device(device);
  }
  if (reason != nullptr) {
    *reason = "no CUDA device of compute capability " + std::to_string(kMinComputeMajor) +
              ".0 or newer, which psa's kernels need; found " +
              (found.empty() ? std::string("none") : found);
  }
  return false;
}

Status attention_forward(TensorView out, TensorView lse, const TensorView& q, const TensorView& k,
                         const TensorView& v, const PyramidView& pyramid, const PlanView& plan,
                         const Config& config, Stream stream) {
  const int64_t head_dim = q.shape[3];
  std::string reason;
  if (!attention_supported(q.dtype, head_dim, plan.block_m, plan.block_n, &reason)) {
    return unsupported("attention_forward on CUDA: " + reason);
  }
  PSA_RETURN_IF_ERROR(check_rows_aligned(q, "q"));
  PSA_RETURN_IF_ERROR(check_rows_aligned(k, "k"));
  PSA_RETURN_IF_ERROR(check_rows_aligned(v, "v"));
  PSA_RETURN_IF_ERROR(check_rows_aligned(out, "out"));
  for (int l = 0; l < kNumPooledLevels; ++l) {
    const std::string level = std::to_string(kLevelFactors[l + 1]);
    PSA_RETURN_IF_ERROR(check_rows_aligned(pyramid.k[l], "pyramid.k (factor " + level + ")"));
    PSA_RETURN_IF_ERROR(check_rows_aligned(pyramid.v[l], "pyramid.v (factor " + level + ")"));
  }

  AttentionParams p;
  p.q = q.data;
  p.out = out.data;
  p.q_batch_stride = q.stride[0];
  p.q_head_stride = q.stride[1];
  p.q_row_stride = q.stride[2];
  p.out_batch_stride = out.stride[0];
  p.out_head_stride = out.stride[1];
  p.out_row_stride = out.stride[2];
  if (!lse.empty() && lse.data != nullptr) {
    p.lse = static_cast<float*>(lse.data);
    p.lse_batch_stride = lse.stride[0];
    p.lse_head_stride = lse.stride[1];
    p.lse_row_stride = lse.stride[2];
  }
  set_level_views(p, k, v, pyramid);
  p.counts = static_cast<const int32_t*>(plan.counts.data);
  p.blocks = static_cast<const int32_t*>(plan.blocks.data);
  p.batch = static_cast<int>(q.shape[0]);
  p.heads_q = static_cast<int>(q.shape[1]);
  p.heads_kv = static_cast<int>(k.shape[1]);
  p.seq_q = static_cast<int>(q.shape[2]);
  p.seq_k = static_cast<int>(k.shape[2]);
  p.num_q_blocks = static_cast<int>(detail::ceil_div(p.seq_q, plan.block_m));
  p.num_k_blocks = static_cast<int>(detail::ceil_div(p.seq_k, plan.block_n));
  p.block_n = plan.block_n;
  p.log2_block_n = log2_int(plan.block_n);
  const double scale = detail::effective_scale(config.softmax_scale, head_dim);
  p.scale_log2 = static_cast<float>(scale * kLog2e);
  p.causal = config.causal;
  if (p.heads_q > 65535 || p.batch > 65535) {
    return unsupported("attention_forward on CUDA: B and Hq must be <= 65535 (grid limits), got " +
                       shape_string(q));
  }

  KernelPath path = KernelPath::kHopper;
  PSA_RETURN_IF_ERROR(kernel_path(q.device_index, &path));
  DeviceGuard guard(q.device_index);
  PSA_RETURN_IF_ERROR(guard.status());
  const cudaStream_t cuda_stream = to_cuda_stream(stream);
  const bool bf16 = q.dtype == DType::kBFloat16;
  if (path == KernelPath::kPortable) {
    int smem_per_sm = 0;
    PSA_RETURN_IF_ERROR(shared_memory_per_sm(q.device_index, &smem_per_sm));
    if (head_dim == 64) {
      return bf16 ? portable::launch_attention_forward<__nv_bfloat16, 64>(p, plan.block_m,
                                                                          smem_per_sm, cuda_stream)
                  : portable::launch_attention_forward<__half, 64>(p, plan.block_m, smem_per_sm,
                                                                   cuda_stream);
    }
    return bf16 ? portable::launch_attention_forward<__nv_bfloat16, 128>(p, plan.block_m,
                                                                         smem_per_sm, cuda_stream)
                : portable::launch_attention_forward<__half, 128>(p, plan.block_m, smem_per_sm,
                                                                  cuda_stream);
  }
  if (head_dim == 64) {
    return bf16 ? launch_attention_forward<__nv_bfloat16, 64>(p, plan.block_m, cuda_stream)
                : launch_attention_forward<__half, 64>(p, plan.block_m, cuda_stream);
  }
  return bf16 ? launch_attention_forward<__nv_bfloat16, 128>(p, plan.block_m, cuda_stream)
              : launch_attention_forward<__half, 128>(p, plan.block_m, cuda_stream);
}

}  // namespace psa::cuda
