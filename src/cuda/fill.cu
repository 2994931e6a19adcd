// The CUDA fill: every element of a view of any strides (rank <= 4) set to one bit pattern
// (common/fill_value.h), enqueued on the caller's stream. Used for the outputs of an empty problem
// (O = 0 and LSE = -inf when Lk = 0, zero gradients), so it is small and simple: one thread an
// element.
#include <cstdint>
#include <type_traits>

#include "common/fill_value.h"
#include "common/index_math.h"
#include "cuda/cuda_backend.h"
#include "cuda/cuda_utils.cuh"

namespace psa::cuda {
namespace {

constexpr int kThreads = 256;

struct FillParams {
  void* data;
  int64_t shape[kMaxRank], stride[kMaxRank];  // the view as rank 4 (leading dims of one element)
};

template <typename Bits>
__global__ void __launch_bounds__(kThreads) fill_kernel(FillParams p, Bits bits, int64_t total) {
  static_assert(std::is_unsigned_v<Bits> && sizeof(Bits) <= 8,
                "Bits is one element's raw bits: an unsigned integer of 1, 2, 4 or 8 bytes");
  const int64_t index = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (index >= total) return;
  int64_t rest = index, offset = 0;
  for (int d = kMaxRank - 1; d >= 0; --d) {
    offset += (rest % p.shape[d]) * p.stride[d];
    rest /= p.shape[d];
  }
  static_cast<Bits*>(p.data)[offset] = bits;
}

template <typename Bits>
Status launch(const FillParams& p, Bits bits, int64_t total, cudaStream_t stream) {
  const int64_t blocks = detail::ceil_div(total, kThreads);
  if (blocks > kMaxGridX) return unsupported("fill: tensor too large for one launch");
  fill_kernel<Bits><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(p, bits, total);
  return check_launch("fill_kernel");
}

}  // namespace

Status fill(TensorView t, double value, Stream stream) {
  const int64_t total = numel(t);
  if (total <= 0) return Status();
  DeviceGuard guard(t.device_index);
  PSA_RETURN_IF_ERROR(guard.status());
  FillParams p{};
  p.data = t.data;
  const int pad = kMaxRank - t.rank;
  for (int d = 0; d < kMaxRank; ++d) {
    p.shape[d] = d < pad ? 1 : t.shape[d - pad];
    p.stride[d] = d < pad ? 0 : t.stride[d - pad];
  }
  const uint64_t bits = detail::element_bits(t.dtype, value);
  const cudaStream_t s = to_cuda_stream(stream);
  switch (dtype_size(t.dtype)) {
    case 1: return launch<uint8_t>(p, static_cast<uint8_t>(bits), total, s);
    case 2: return launch<uint16_t>(p, static_cast<uint16_t>(bits), total, s);
    case 4: return launch<uint32_t>(p, static_cast<uint32_t>(bits), total, s);
    case 8: return launch<uint64_t>(p, bits, total, s);
    default: return invalid_argument("fill: unknown dtype");
  }
}

}  // namespace psa::cuda
