// Token permutation along the sequence (dim 2) on the GPU: out[b, h, i, :] = in[b, h, perm[i], :]
// for rank-4 tensors of any strides and a 2- or 4-byte dtype; `perm` (L int64) is on the device.
// A pure copy, so elements move as raw bits (no conversion); rows move as 16-byte vectors when
// both tensors are D-contiguous and 16-byte aligned.
#include <cstdint>

#include "common/index_math.h"
#include "cuda/cuda_backend.h"
#include "cuda/cuda_utils.cuh"

namespace psa::cuda {
namespace {

constexpr int kThreads = 256;

struct PermuteParams {
  const void* in;
  void* out;
  const int64_t* perm;
  int64_t in_stride[4], out_stride[4];  // in elements of type T below
  int64_t batch, heads, seq, width;     // width: elements of type T per row
};

// Thread -> (b, h, i, element c of the row); T is the unit moved (a dtype's bits or a uint4 of them).
template <typename T>
__global__ void __launch_bounds__(kThreads) permute_tokens_kernel(PermuteParams p) {
  const int64_t total = p.batch * p.heads * p.seq * p.width;
  const int64_t index = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (index >= total) return;
  const int64_t c = index % p.width;
  int64_t rest = index / p.width;
  const int64_t i = rest % p.seq;
  rest /= p.seq;
  const int64_t h = rest % p.heads;
  const int64_t b = rest / p.heads;
  const int64_t src = p.perm[i];
  const T* in = static_cast<const T*>(p.in);
  T* out = static_cast<T*>(p.out);
  out[b * p.out_stride[0] + h * p.out_stride[1] + i * p.out_stride[2] + c * p.out_stride[3]] =
      in[b * p.in_stride[0] + h * p.in_stride[1] + src * p.in_stride[2] + c * p.in_stride[3]];
}

template <typename T>
Status launch(PermuteParams p, cudaStream_t stream) {
  const int64_t total = p.batch * p.heads * p.seq * p.width;
  const int64_t blocks = detail::ceil_div(total, kThreads);
  if (blocks > kMaxGridX) return unsupported("permute_tokens: tensor too large for one launch");
  permute_tokens_kernel<T><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(p);
  return check_launch("permute_tokens_kernel");
}

// Rows can move as 16-byte units: D contiguous, every row start 16-byte aligned.
bool vector_path_ok(const TensorView& t, int64_t elements_per_vector) {
  if (t.stride[3] != 1 || t.shape[3] % elements_per_vector != 0 || !is_aligned(t.data, 16)) {
    return false;
  }
  for (int d = 0; d < 3; ++d) {
    if (t.shape[d] > 1 && t.stride[d] % elements_per_vector != 0) return false;
  }
  return true;
}

}  // namespace

Status permute_tokens(TensorView out, const TensorView& in, const int64_t* perm, Stream stream) {
  if (numel(in) == 0) return Status();
  const size_t element = dtype_size(in.dtype);
  if (out.dtype != in.dtype || (element != 2 && element != 4)) {
    return unsupported(std::string("CUDA permute_tokens supports float16, bfloat16 and float32 "
                                   "(in and out alike), got in ") +
                       dtype_name(in.dtype) + ", out " + dtype_name(out.dtype));
  }
  DeviceGuard guard(in.device_index);
  PSA_RETURN_IF_ERROR(guard.status());
  PermuteParams p{};
  p.in = in.data;
  p.out = out.data;
  p.perm = perm;
  p.batch = in.shape[0];
  p.heads = in.shape[1];
  p.seq = in.shape[2];
  const cudaStream_t s = to_cuda_stream(stream);
  const int64_t per_vector = static_cast<int64_t>(sizeof(uint4) / element);
  if (vector_path_ok(in, per_vector) && vector_path_ok(out, per_vector)) {
    for (int d = 0; d < 3; ++d) {
      p.in_stride[d] = in.stride[d] / per_vector;
      p.out_stride[d] = out.stride[d] / per_vector;
    }
    p.in_stride[3] = p.out_stride[3] = 1;
    p.width = in.shape[3] / per_vector;
    return launch<uint4>(p, s);
  }
  for (int d = 0; d < 4; ++d) {
    p.in_stride[d] = in.stride[d];
    p.out_stride[d] = out.stride[d];
  }
  p.width = in.shape[3];
  return element == 2 ? launch<uint16_t>(p, s) : launch<uint32_t>(p, s);
}

}  // namespace psa::cuda
