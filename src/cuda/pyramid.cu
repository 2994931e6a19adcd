// The pyramid of pooled keys and values (SPEC 2) on the GPU: one pass over K and V computes
// levels 2, 4 and 8 together. Each thread reads one group of 8 consecutive tokens of a slice of
// kVec features (16-byte loads when D is contiguous) and writes 4 + 2 + 1 means. Pooled token p
// of factor f is the mean of its real tokens [p*f, min((p+1)*f, Lk)), so a ragged tail is exact.
#include <cstdint>

#include "common/index_math.h"
#include "cuda/cuda_backend.h"
#include "cuda/cuda_utils.cuh"

namespace psa::cuda {
namespace {

// Tokens read by one thread: one group of the coarsest level (factor 8).
constexpr int kGroup = 8;
constexpr int kThreads = 256;
// Features per thread on the vector path: 8 x 2 bytes = one 16-byte load.
constexpr int kVecWidth = 8;

struct PyramidParams {
  // Index 0: k, 1: v (blockIdx.y).
  const void* in[2];
  int64_t in_stride[2][4];  // (B, Hkv, Lk, D) strides in elements
  void* out[2][kNumPooledLevels];
  int64_t out_stride[2][kNumPooledLevels][4];
  int64_t batch, heads, seq, head_dim;
};

template <typename T, int kVec>
__device__ __forceinline__ void load_features(float (&x)[kVec], const T* ptr, int64_t stride_d) {
  if constexpr (kVec == kVecWidth) {
    static_assert(sizeof(T) * kVec == sizeof(uint4), "vector path moves exactly 16 bytes");
    const uint4 raw = *reinterpret_cast<const uint4*>(ptr);
    const T* v = reinterpret_cast<const T*>(&raw);
#pragma unroll
    for (int i = 0; i < kVec; ++i) x[i] = to_float(v[i]);
  } else {
#pragma unroll
    for (int i = 0; i < kVec; ++i) x[i] = to_float(ptr[i * stride_d]);
  }
}

template <typename T, int kVec>
__device__ __forceinline__ void store_mean(T* ptr, int64_t stride_d, const float (&sum)[kVec],
                                           int count) {
  const float c = static_cast<float>(count);
  if constexpr (kVec == kVecWidth) {
    uint4 raw;
    T* v = reinterpret_cast<T*>(&raw);
#pragma unroll
    for (int i = 0; i < kVec; ++i) v[i] = from_float<T>(sum[i] / c);
    *reinterpret_cast<uint4*>(ptr) = raw;
  } else {
#pragma unroll
    for (int i = 0; i < kVec; ++i) ptr[i * stride_d] = from_float<T>(sum[i] / c);
  }
}

// Thread -> (b, h, group g, feature slice c); blockIdx.y picks k or v.
template <typename T, int kVec>
__global__ void __launch_bounds__(kThreads) build_pyramid_kernel(PyramidParams p) {
  static_assert(kVec == 1 || kVec == kVecWidth, "scalar (any stride) or 16-byte vector path");
  static_assert(kGroup == 8, "one thread covers exactly one factor-8 pooled token");
  const int tensor = blockIdx.y;
  const int64_t slices = p.head_dim / kVec;
  const int64_t groups = detail::ceil_div(p.seq, kGroup);
  const int64_t total = p.batch * p.heads * groups * slices;
  const int64_t index = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (index >= total) return;
  const int64_t c = index % slices;
  int64_t rest = index / slices;
  const int64_t g = rest % groups;
  rest /= groups;
  const int64_t h = rest % p.heads;
  const int64_t b = rest / p.heads;

  const int64_t* s = p.in_stride[tensor];
  const T* in = static_cast<const T*>(p.in[tensor]) + b * s[0] + h * s[1] + c * kVec * s[3];
  const int64_t first = g * kGroup;
  const int real = static_cast<int>(detail::min64(kGroup, p.seq - first));

  // sum2[t / 2]: sums of the 4 pairs of the group (factor 2), in token order.
  float sum2[kGroup / 2][kVec];
#pragma unroll
  for (int pair = 0; pair < kGroup / 2; ++pair) {
#pragma unroll
    for (int i = 0; i < kVec; ++i) sum2[pair][i] = 0.0f;
  }
#pragma unroll
  for (int t = 0; t < kGroup; ++t) {
    if (t < real) {
      float x[kVec];
      load_features<T, kVec>(x, in + (first + t) * s[2], s[3]);
#pragma unroll
      for (int i = 0; i < kVec; ++i) sum2[t / 2][i] += x[i];
    }
  }
  float sum4[2][kVec], sum8[kVec];
#pragma unroll
  for (int i = 0; i < kVec; ++i) {
    sum4[0][i] = sum2[0][i] + sum2[1][i];
    sum4[1][i] = sum2[2][i] + sum2[3][i];
    sum8[i] = sum4[0][i] + sum4[1][i];
  }

  // Level l (factor 2 << l): pooled tokens first / f .. of this group, each over its real tokens.
  auto out_ptr = [&](int level, int64_t pooled) {
    const int64_t* o = p.out_stride[tensor][level];
    return static_cast<T*>(p.out[tensor][level]) + b * o[0] + h * o[1] + pooled * o[2] +
           c * kVec * o[3];
  };
#pragma unroll
  for (int pair = 0; pair < kGroup / 2; ++pair) {
    if (2 * pair < real) {
      store_mean<T, kVec>(out_ptr(0, first / 2 + pair), p.out_stride[tensor][0][3], sum2[pair],
                          min(2, real - 2 * pair));
    }
  }
#pragma unroll
  for (int quad = 0; quad < 2; ++quad) {
    if (4 * quad < real) {
      store_mean<T, kVec>(out_ptr(1, first / 4 + quad), p.out_stride[tensor][1][3], sum4[quad],
                          min(4, real - 4 * quad));
    }
  }
  store_mean<T, kVec>(out_ptr(2, first / 8), p.out_stride[tensor][2][3], sum8, real);
}

// The 16-byte path needs D-contiguous rows whose starts are all 16-byte aligned.
bool vector_path_ok(const TensorView& t) {
  if (t.stride[3] != 1 || t.shape[3] % kVecWidth != 0 || !is_aligned(t.data, 16)) return false;
  for (int d = 0; d < 3; ++d) {
    if (t.shape[d] > 1 && t.stride[d] % kVecWidth != 0) return false;
  }
  return true;
}

template <typename T>
Status launch(const PyramidParams& params, bool vector_path, cudaStream_t stream) {
  const int vec = vector_path ? kVecWidth : 1;
  const int64_t total = params.batch * params.heads * detail::ceil_div(params.seq, kGroup) *
                        (params.head_dim / vec);
  const int64_t blocks = detail::ceil_div(total, kThreads);
  if (blocks > kMaxGridX) return unsupported("build_pyramid: problem too large for one launch");
  const dim3 grid(static_cast<unsigned>(blocks), 2);
  if (vector_path) {
    build_pyramid_kernel<T, kVecWidth><<<grid, kThreads, 0, stream>>>(params);
  } else {
    build_pyramid_kernel<T, 1><<<grid, kThreads, 0, stream>>>(params);
  }
  return check_launch("build_pyramid_kernel");
}

}  // namespace

Status build_pyramid(PyramidView pyramid, const TensorView& k, const TensorView& v,
                     Stream stream) {
  if (k.shape[2] == 0 || k.shape[0] == 0 || k.shape[1] == 0 || k.shape[3] == 0) return Status();
  if (pyramid.k[0].dtype != k.dtype || v.dtype != k.dtype) {
    return unsupported(std::string("CUDA build_pyramid needs k, v and the pyramid in one dtype, got k ") +
                       dtype_name(k.dtype) + ", v " + dtype_name(v.dtype) + ", pyramid " +
                       dtype_name(pyramid.k[0].dtype));
  }
  DeviceGuard guard(k.device_index);
  PSA_RETURN_IF_ERROR(guard.status());

  PyramidParams params{};
  bool vector_path = true;
  const TensorView* inputs[2] = {&k, &v};
  for (int t = 0; t < 2; ++t) {
    params.in[t] = inputs[t]->data;
    for (int d = 0; d < 4; ++d) params.in_stride[t][d] = inputs[t]->stride[d];
    vector_path = vector_path && vector_path_ok(*inputs[t]);
    for (int l = 0; l < kNumPooledLevels; ++l) {
      const TensorView& out = t == 0 ? pyramid.k[l] : pyramid.v[l];
      if (out.dtype != k.dtype) {
        return unsupported("CUDA build_pyramid needs every pyramid level in k's dtype");
      }
      params.out[t][l] = out.data;
      for (int d = 0; d < 4; ++d) params.out_stride[t][l][d] = out.stride[d];
      vector_path = vector_path && vector_path_ok(out);
    }
  }
  params.batch = k.shape[0];
  params.heads = k.shape[1];
  params.seq = k.shape[2];
  params.head_dim = k.shape[3];

  const cudaStream_t s = to_cuda_stream(stream);
  switch (k.dtype) {
    case DType::kFloat16: return launch<__half>(params, vector_path, s);
    case DType::kBFloat16: return launch<__nv_bfloat16>(params, vector_path, s);
    default:
      return unsupported(std::string("CUDA build_pyramid supports float16 and bfloat16, got ") +
                         dtype_name(k.dtype));
  }
}

}  // namespace psa::cuda
