// Block importance on the GPU (SPEC 4), portable: compute capability 8.0 and newer (the Hopper
// kernel is src/cuda/estimator.cu; this is its first version, kept for the portable path and
// given Config::head_offset, a loader with tile-invariant rows and, for s_n = 8, the Hopper
// kernel's quad reduce-scatter fold). One CTA per (b, h, group of G query blocks): the sampled
// query rows of the group stay in shared memory, the sampled keys of every key block stream
// through in tiles of kKeyTile rows (cp.async, double-buffered), and tensor cores (mma.sync
// m16n8k16, fp32 accumulation) form the logits. Each logit is folded straight into a running max
// in shared memory, so nothing is written to global memory but the scores: no workspace.
//
// Two modes give bit-identical results (max commutes with the monotone rounding of scale * dot,
// of "- m_i" and of expf):
//   kStored:  r_i(J) = scale * max_j q_i.k_j for every sampled row i and block J is kept in shared
//             memory ((G*s_m) x Nk fp32); then m_i = max_J r_i(J), P(J) = expf(max_i r_i(J) - m_i).
//   two-pass (kPass1, kPass2): when that matrix does not fit, pass 1 computes m_i, pass 2
//             D(J) = max_{i,j} (scale * q_i.k_j - m_i), P(J) = expf(D(J)); twice the tensor work.
// Finally each row is divided by its sum. Under causal attention, blocks wholly invisible to a
// query block are excluded from m_i and the sum, and score 0.
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "common/index_math.h"
#include "common/planner_rules.h"
#include "common/random.h"
#include "cuda/cuda_utils.cuh"
#include "cuda/estimator_common.h"
#include "cuda/portable/mma.cuh"
#include "cuda/portable/portable_backend.h"

namespace psa::cuda::portable {
namespace {

// 8 warps share each key tile: (rows / 16) x (kKeyTile / kItemKeys) work items, e.g. 4 x 4 = 16
// items for 64 sampled rows, two per warp.
constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
// Sampled key rows per tile and per warp work item (4 mma n-tiles of 8).
constexpr int kKeyTile = 128;
constexpr int kItemKeys = 32;
constexpr int kMmaM = 16, kMmaN = 8, kMmaK = 16;
// Shared-memory row pitch pad (elements): 16 bytes, so that the 8 rows an ldmatrix reads fall in
// distinct bank groups.
constexpr int kPad = 8;
constexpr int kVecElems = 8;  // 16 bytes of fp16 / bf16
// Rows of sampled queries a CTA aims for: e.g. s_m = 32 (block_m 128) -> G = 4 query blocks,
// which reads every sampled key once per 128 sampled queries instead of once per 32.
constexpr int kTargetRows = 128;
constexpr int kMaxHeadDim = 256;

enum class Mode : int { kStored, kPass1, kPass2 };

struct EstimatorParams {
  const void* q;
  int64_t q_stride[4];
  const void* k;
  int64_t k_stride[4];
  float* scores;  // (B, Hq, Mq, Nk) contiguous
  int64_t batch, heads_q, heads_kv, seq_q, seq_k, head_dim;
  int64_t num_q_blocks, num_k_blocks;
  int block_m, block_n, samples_m, samples_n;
  int group_blocks;  // G query blocks per CTA
  int rows_padded;   // G * s_m rounded up to kMmaM
  int pitch;         // shared row pitch in elements: head_dim rounded up to kMmaK, plus kPad
  uint64_t seed;
  int64_t head_offset;  // global index of query head 0, for the draws (Config::head_offset)
  float scale;
  bool causal;
};

// Row stride of the max table: Nk + 1 words, so that the 8 rows a warp folds at once (one per
// quad) fall in distinct banks (with Nk = 512 they would all hit one bank).
__host__ __device__ inline int table_stride(const EstimatorParams& p) {
  return static_cast<int>(p.num_k_blocks) + 1;
}

// Shared-memory layout (bytes), the same on host and device.
struct SmemLayout {
  size_t q, k, q_offsets, k_offsets, visible, row_max, table, reduce, total;
};
__host__ __device__ inline size_t align16(size_t x) { return (x + 15) / 16 * 16; }
__host__ __device__ inline SmemLayout smem_layout(const EstimatorParams& p, Mode mode) {
  SmemLayout s;
  size_t at = 0;
  s.q = at;
  at += align16(static_cast<size_t>(p.rows_padded) * p.pitch * 2);
  s.k = at;
  at += align16(static_cast<size_t>(2 * kKeyTile) * p.pitch * 2);
  s.q_offsets = at;
  at += align16(static_cast<size_t>(p.samples_m) * 4);
  s.k_offsets = at;
  at += align16(static_cast<size_t>(p.samples_n) * 4);
  s.visible = at;
  at += align16(static_cast<size_t>(p.group_blocks) * 4);
  s.row_max = at;
  at += align16(static_cast<size_t>(p.rows_padded) * 4);
  s.table = at;
  // kStored: r (rows x Nk); two-pass: D (G x Nk); rows padded to an odd stride (table_stride).
  const size_t table_rows = mode == Mode::kStored ? p.rows_padded : p.group_blocks;
  at += align16(table_rows * static_cast<size_t>(table_stride(p)) * 4);
  s.reduce = at;
  at += align16(kWarps * 4);
  s.total = at;
  return s;
}

// Max of floats of any sign through integer atomics: non-negative floats order as signed ints,
// negative ones reversed as unsigned. -0 is stored as +0 so that it is not lost below -inf.
__device__ __forceinline__ void atomic_max_float(float* address, float value) {
  if (value == 0.0f) value = 0.0f;
  if (value >= 0.0f) {
    atomicMax(reinterpret_cast<int*>(address), __float_as_int(value));
  } else {
    atomicMin(reinterpret_cast<unsigned*>(address), __float_as_uint(value));
  }
}

// What atomic_max_float leaves in a cell that holds -inf: v, with -0 as +0 and a NaN whose sign bit
// is set as -inf (the unsigned minimum keeps -inf's bits). A maximum that one lane completes is
// stored as this, so that the table is the same as with the atomic.
__device__ __forceinline__ float first_max(float v) {
  if (v == 0.0f) return 0.0f;
  if (v >= 0.0f) return v;
  return __float_as_uint(v) < __float_as_uint(kNegInf) ? v : kNegInf;
}

// Reduce-scatter of four values over the 4 lanes of a quad: lane t4 = lane % 4 returns the max of
// v[t4] over the quad. Step 1 swaps the pair a lane does not keep with lane ^ 2, step 2 the value
// it does not keep with lane ^ 1.
__device__ __forceinline__ float quad_scatter_max(const float (&v)[4], int lane) {
  const bool high_pair = lane & 2;
  const float keep0 = fmaxf(high_pair ? v[2] : v[0],
                            __shfl_xor_sync(0xffffffffu, high_pair ? v[0] : v[2], 2));
  const float keep1 = fmaxf(high_pair ? v[3] : v[1],
                            __shfl_xor_sync(0xffffffffu, high_pair ? v[1] : v[3], 2));
  const bool odd = lane & 1;
  return fmaxf(odd ? keep1 : keep0, __shfl_xor_sync(0xffffffffu, odd ? keep0 : keep1, 1));
}

// Copies one row of D elements into shared memory (row pitch p.pitch), zero-filling the columns
// up to the mma width. kVector: 16-byte cp.async (D-contiguous, aligned); else scalar loads.
template <typename T, bool kVector>
__device__ __forceinline__ void load_row(T* dst, const T* src, int64_t stride_d, int head_dim,
                                         int padded_dim, int lane, int lanes) {
  if constexpr (kVector) {
    for (int c = lane; c < padded_dim / kVecElems; c += lanes) {
      if (c * kVecElems < head_dim) {
        cp_async_16(smem_addr(dst + c * kVecElems), src + c * kVecElems, 16);
      } else {
        *reinterpret_cast<uint4*>(dst + c * kVecElems) = make_uint4(0, 0, 0, 0);
      }
    }
  } else {
    for (int d = lane; d < padded_dim; d += lanes) {
      dst[d] = d < head_dim ? src[d * stride_d] : from_float<T>(0.0f);
    }
  }
}

template <typename T>
__device__ __forceinline__ void zero_row(T* dst, int padded_dim, int lane, int lanes) {
  for (int d = lane; d < padded_dim; d += lanes) dst[d] = from_float<T>(0.0f);
}

// This thread's key rows of a tile, tile-invariant when s_n divides kKeyTile: row r of every tile
// is sample r % s_n of the tile's block r / s_n, so its sampled offset and its block within the
// tile are fixed, and a tile's copies need no division (only the ragged last block takes its
// offset modulo the block's length).
constexpr int kKeyLanesPerRow = 8;  // 16 bytes each
constexpr int kKeyRowsPerPass = kThreads / kKeyLanesPerRow;
constexpr int kKeyPasses = kKeyTile / kKeyRowsPerPass;
struct KeyRows {
  bool fixed;                         // s_n divides kKeyTile
  int blocks_per_tile;                // kKeyTile / s_n when fixed
  int32_t offset[kKeyPasses];         // sampled offset of row tid / 8 + 32 pass
  int32_t block_in_tile[kKeyPasses];  // its key block within the tile
};

__device__ __forceinline__ KeyRows key_rows(const EstimatorParams& p, const int32_t* k_offsets) {
  KeyRows rows{};
  rows.fixed = kKeyTile % p.samples_n == 0;
  rows.blocks_per_tile = kKeyTile / p.samples_n;
#pragma unroll
  for (int pass = 0; pass < kKeyPasses; ++pass) {
    const int r = threadIdx.x / kKeyLanesPerRow + pass * kKeyRowsPerPass;
    rows.offset[pass] = k_offsets[r % p.samples_n];
    rows.block_in_tile[pass] = r / p.samples_n;
  }
  return rows;
}

template <typename T, bool kVector>
__device__ void load_key_tile(T* tile, const EstimatorParams& p, const T* k_head,
                              const int32_t* k_offsets, const KeyRows& rows, int tile_start,
                              int total_keys, int padded_dim) {
  const int sub = threadIdx.x % kKeyLanesPerRow;
  const int last_block = static_cast<int>(p.num_k_blocks) - 1;
#pragma unroll
  for (int pass = 0; pass < kKeyPasses; ++pass) {
    const int r = threadIdx.x / kKeyLanesPerRow + pass * kKeyRowsPerPass;
    const int t = tile_start + r;
    T* dst = tile + r * p.pitch;
    if (t >= total_keys) {
      zero_row(dst, padded_dim, sub, kKeyLanesPerRow);
      continue;
    }
    // 32-bit index math: Lk < 2^31 (the API's limit), and 64-bit division is a slow subroutine.
    int kblock, offset;
    if (rows.fixed) {
      kblock = tile_start / kKeyTile * rows.blocks_per_tile + rows.block_in_tile[pass];
      offset = rows.offset[pass];
    } else {
      kblock = t / p.samples_n;
      offset = k_offsets[t - kblock * p.samples_n];
    }
    if (kblock == last_block || !rows.fixed) {
      offset %= static_cast<int>(detail::block_rows(p.seq_k, p.block_n, kblock));
    }
    const int64_t token = static_cast<int64_t>(kblock) * p.block_n + offset;
    load_row<T, kVector>(dst, k_head + token * p.k_stride[2], p.k_stride[3],
                         static_cast<int>(p.head_dim), padded_dim, sub, kKeyLanesPerRow);
  }
}

// Visible key blocks of query block I: a prefix [0, V) (all Nk without causal).
__device__ __forceinline__ int64_t visible_blocks(const EstimatorParams& p, int64_t qblock) {
  if (!p.causal) return p.num_k_blocks;
  const int64_t last_q = detail::min64((qblock + 1) * p.block_m, p.seq_q) - 1;
  const int64_t limit = last_q + detail::causal_shift(p.seq_q, p.seq_k);
  if (limit < 0) return 0;
  return detail::min64(limit / p.block_n + 1, p.num_k_blocks);
}

// Shared-memory arrays and per-CTA constants of one estimator CTA.
template <typename T>
struct CtaState {
  T* q_tile;         // (rows_padded, pitch) sampled queries
  T* k_tiles;        // 2 x (kKeyTile, pitch) sampled keys, double-buffered
  int32_t* k_offsets;
  int* visible;      // (G) visible key blocks of each query block of the group
  float* row_max;    // (rows_padded) m_i
  float* table;      // kStored: r (rows_padded, Nk); two-pass: D (G, Nk)
  const T* k_head;
  int total_keys;  // sampled keys of the blocks visible to some query block of the group
  int rows, stride, padded_dim;
};

// Folds value v of row r (local block g) and key block `kblock` into the maxima of kMode.
template <Mode kMode>
__device__ __forceinline__ void fold(float* row_max, float* table, int stride, int r, int g,
                                     int kblock, float v) {
  if constexpr (kMode == Mode::kStored) {
    atomic_max_float(&table[r * stride + kblock], v);
  } else if constexpr (kMode == Mode::kPass1) {
    atomic_max_float(&row_max[r], v);
  } else {
    atomic_max_float(&table[g * stride + kblock], v);
  }
}

// One sweep over the sampled keys: logits of every (sampled query, sampled key) pair folded into
// the maxima of `kMode`.
template <typename T, bool kVector, int kDim, Mode kMode>
__device__ void sweep_keys(const EstimatorParams& p, const CtaState<T>& s) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int num_tiles = (s.total_keys + kKeyTile - 1) / kKeyTile;
  const KeyRows rows = key_rows(p, s.k_offsets);
  if (num_tiles > 0) {
    load_key_tile<T, kVector>(s.k_tiles, p, s.k_head, s.k_offsets, rows, 0, s.total_keys,
                              s.padded_dim);
  }
  cp_async_commit();

  const int m_tiles = p.rows_padded / kMmaM;
  const int items = m_tiles * (kKeyTile / kItemKeys);
  for (int tile = 0; tile < num_tiles; ++tile) {
    const T* k_tile = s.k_tiles + (tile % 2) * kKeyTile * p.pitch;
    if (tile + 1 < num_tiles) {
      load_key_tile<T, kVector>(s.k_tiles + ((tile + 1) % 2) * kKeyTile * p.pitch, p, s.k_head,
                                s.k_offsets, rows, (tile + 1) * kKeyTile, s.total_keys,
                                s.padded_dim);
    }
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();

    const int tile_start = tile * kKeyTile;
    for (int item = warp; item < items; item += kWarps) {
      const int mt = item / (kKeyTile / kItemKeys);
      const int chunk = item % (kKeyTile / kItemKeys);
      float acc[4][4];
#pragma unroll
      for (int n = 0; n < 4; ++n) {
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[n][e] = 0.0f;
      }
      // ldmatrix.x4 on queries: (rows 0-7, d 0-7), (rows 8-15, d 0-7), (rows 0-7, d 8-15),
      // (rows 8-15, d 8-15) -> a0..a3.
      const T* a_base = s.q_tile + (mt * kMmaM + lane % 16) * p.pitch + (lane / 16) * 8;
      // ldmatrix.x4 on keys: (keys 0-7, d 0-7), (keys 0-7, d 8-15), (keys 8-15, d 0-7),
      // (keys 8-15, d 8-15) -> b0, b1 of two n-tiles.
      const T* b_base = k_tile + (chunk * kItemKeys + (lane % 8) + (lane / 16) * 8) * p.pitch +
                        ((lane / 8) % 2) * 8;
      // kDim > 0: the head dim is a compile-time constant and the loop unrolls, so that the
      // ldmatrix loads of later k-steps issue ahead of the mma chain.
      const int dim = kDim > 0 ? kDim : s.padded_dim;
#pragma unroll
      for (int k0 = 0; k0 < dim; k0 += kMmaK) {
        uint32_t a[4], b01[4], b23[4];
        ldmatrix_x4(a, smem_addr(a_base + k0));
        ldmatrix_x4(b01, smem_addr(b_base + k0));
        ldmatrix_x4(b23, smem_addr(b_base + 16 * p.pitch + k0));
        mma_16816<T>(acc[0], a, b01[0], b01[1]);
        mma_16816<T>(acc[1], a, b01[2], b01[3]);
        mma_16816<T>(acc[2], a, b23[0], b23[1]);
        mma_16816<T>(acc[3], a, b23[2], b23[3]);
      }

      // Fold the 16 x 32 logits into the maxima. c0, c1: row r0 = lane/4, keys 2*(lane%4) +
      // {0, 1}; c2, c3: row r1 = r0 + 8.
      const int r0 = mt * kMmaM + lane / 4, r1 = r0 + 8;
      const bool ok0 = r0 < s.rows, ok1 = r1 < s.rows;
      const int g0 = ok0 ? r0 / p.samples_m : 0, g1 = ok1 ? r1 / p.samples_m : 0;
      const int visible0 = ok0 ? s.visible[g0] : 0, visible1 = ok1 ? s.visible[g1] : 0;
      float shift0 = 0.0f, shift1 = 0.0f;
      if constexpr (kMode == Mode::kPass2) {
        shift0 = ok0 ? s.row_max[r0] : 0.0f;
        shift1 = ok1 ? s.row_max[r1] : 0.0f;
      }
      // s_n = 8 (the default): each n-tile is one key block, the item's 4 blocks. The quad
      // reduce-scatters them, so that lane t4 holds block t4 of both its rows: 3 shuffles per row
      // instead of 8, and one store (kStored: the block is complete here) or atomic per row and
      // lane instead of one per block, row and quad.
      if (kMode != Mode::kPass1 && p.samples_n == kMmaN) {
        float m0[4], m1[4];
#pragma unroll
        for (int n = 0; n < 4; ++n) {
          // __fmul_rn: see below.
          m0[n] = fmaxf(__fmul_rn(p.scale, acc[n][0]) - shift0,
                        __fmul_rn(p.scale, acc[n][1]) - shift0);
          m1[n] = fmaxf(__fmul_rn(p.scale, acc[n][2]) - shift1,
                        __fmul_rn(p.scale, acc[n][3]) - shift1);
        }
        const float r0_max = quad_scatter_max(m0, lane);
        const float r1_max = quad_scatter_max(m1, lane);
        // Blocks past the visible ones (or past the sampled keys: total_keys / 8 >= visible)
        // are not folded.
        const int kblock = (tile_start + chunk * kItemKeys) / kMmaN + lane % 4;
        if (ok0 && kblock < visible0) {
          if constexpr (kMode == Mode::kStored) {
            s.table[r0 * s.stride + kblock] = first_max(r0_max);
          } else {
            fold<kMode>(s.row_max, s.table, s.stride, r0, g0, kblock, r0_max);
          }
        }
        if (ok1 && kblock < visible1) {
          if constexpr (kMode == Mode::kStored) {
            s.table[r1 * s.stride + kblock] = first_max(r1_max);
          } else {
            fold<kMode>(s.row_max, s.table, s.stride, r1, g1, kblock, r1_max);
          }
        }
        continue;
      }
      // Consecutive n-tiles whose 8 keys lie in one block merge into a running (quad-reduced)
      // max, so that a block costs one atomic per row: e.g. s_n = 16 -> 2 atomics per item row.
      int run_block = -1;
      float run0 = kNegInf, run1 = kNegInf;
      auto flush = [&]() {
        if (run_block >= 0 && lane % 4 == 0) {
          if (ok0 && run_block < visible0) {
            fold<kMode>(s.row_max, s.table, s.stride, r0, g0, run_block, run0);
          }
          if (ok1 && run_block < visible1) {
            fold<kMode>(s.row_max, s.table, s.stride, r1, g1, run_block, run1);
          }
        }
      };
#pragma unroll
      for (int n = 0; n < 4; ++n) {
        const int t0 = tile_start + chunk * kItemKeys + n * kMmaN;
        const int first_block = t0 / p.samples_n;
        const bool one_block = t0 + kMmaN <= s.total_keys &&
                               first_block == (t0 + kMmaN - 1) / p.samples_n;
        // __fmul_rn keeps scale * dot rounded on its own (no fused multiply-subtract), as the
        // CPU reference rounds r_i(J) before subtracting m_i.
        const float v00 = __fmul_rn(p.scale, acc[n][0]) - shift0;
        const float v01 = __fmul_rn(p.scale, acc[n][1]) - shift0;
        const float v10 = __fmul_rn(p.scale, acc[n][2]) - shift1;
        const float v11 = __fmul_rn(p.scale, acc[n][3]) - shift1;
        if (one_block) {
          float m0 = fmaxf(v00, v01), m1 = fmaxf(v10, v11);
          m0 = fmaxf(m0, __shfl_xor_sync(0xffffffffu, m0, 1));
          m0 = fmaxf(m0, __shfl_xor_sync(0xffffffffu, m0, 2));
          m1 = fmaxf(m1, __shfl_xor_sync(0xffffffffu, m1, 1));
          m1 = fmaxf(m1, __shfl_xor_sync(0xffffffffu, m1, 2));
          if (first_block != run_block) {
            flush();
            run_block = first_block;
            run0 = m0;
            run1 = m1;
          } else {
            run0 = fmaxf(run0, m0);
            run1 = fmaxf(run1, m1);
          }
        } else {
          flush();
          run_block = -1;
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const int key = t0 + 2 * (lane % 4) + e;
            if (key >= s.total_keys) continue;
            const int kblock = key / p.samples_n;
            if (ok0 && kblock < visible0) {
              fold<kMode>(s.row_max, s.table, s.stride, r0, g0, kblock, e ? v01 : v00);
            }
            if (ok1 && kblock < visible1) {
              fold<kMode>(s.row_max, s.table, s.stride, r1, g1, kblock, e ? v11 : v10);
            }
          }
        }
      }
      flush();
    }
    // The buffer just read is refilled by the next iteration's prefetch.
    __syncthreads();
  }
  cp_async_wait<0>();
  __syncthreads();
}

template <typename T, bool kVector, bool kStored, int kDim>
__global__ void __launch_bounds__(kThreads) estimate_importance_kernel(EstimatorParams p) {
  static_assert(kThreads % 32 == 0 && kKeyTile % kItemKeys == 0, "warps tile the key tile");
  static_assert(kItemKeys == 4 * kMmaN, "a work item is 4 mma n-tiles");
  static_assert(kVecElems * sizeof(T) == 16, "cp.async moves 16 bytes");
  static_assert(kDim % kMmaK == 0, "a fixed head dim is whole mma k-steps");
  extern __shared__ __align__(16) unsigned char smem[];
  const SmemLayout layout = smem_layout(p, kStored ? Mode::kStored : Mode::kPass2);
  CtaState<T> s;
  s.q_tile = reinterpret_cast<T*>(smem + layout.q);
  s.k_tiles = reinterpret_cast<T*>(smem + layout.k);
  int32_t* q_offsets = reinterpret_cast<int32_t*>(smem + layout.q_offsets);
  s.k_offsets = reinterpret_cast<int32_t*>(smem + layout.k_offsets);
  s.visible = reinterpret_cast<int*>(smem + layout.visible);
  s.row_max = reinterpret_cast<float*>(smem + layout.row_max);
  s.table = reinterpret_cast<float*>(smem + layout.table);
  float* reduce = reinterpret_cast<float*>(smem + layout.reduce);

  const int64_t groups = detail::ceil_div(p.num_q_blocks, p.group_blocks);
  const int64_t group = blockIdx.x % groups;
  const int64_t h = (blockIdx.x / groups) % p.heads_q;
  const int64_t b = blockIdx.x / (groups * p.heads_q);
  const int64_t hkv = h / (p.heads_q / p.heads_kv);
  const int64_t first_block = group * p.group_blocks;
  const int G = p.group_blocks;
  s.rows = G * p.samples_m;
  const int nk = static_cast<int>(p.num_k_blocks);
  s.stride = table_stride(p);
  s.padded_dim = p.pitch - kPad;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;

  if (threadIdx.x == 0) {
    detail::sample_offsets(q_offsets, p.seed, b, h + p.head_offset, p.block_m, p.samples_m);
  } else if (threadIdx.x == 32) {
    // Keys by the kv head of the global query head, so that a slice of the heads draws what a
    // call over all heads draws.
    const int64_t hkv_draw = (h + p.head_offset) / (p.heads_q / p.heads_kv);
    detail::sample_offsets(s.k_offsets, p.seed, b, detail::key_offset_stream(hkv_draw),
                           p.block_n, p.samples_n);
  }
  int max_visible = 0;
  for (int g = 0; g < G; ++g) {
    const int64_t qblock = first_block + g;
    const int v = qblock < p.num_q_blocks ? static_cast<int>(visible_blocks(p, qblock)) : 0;
    if (threadIdx.x == 0) s.visible[g] = v;
    max_visible = max(max_visible, v);
  }
  const int table_size = (kStored ? p.rows_padded : G) * s.stride;
  for (int r = threadIdx.x; r < p.rows_padded; r += kThreads) s.row_max[r] = kNegInf;
  for (int x = threadIdx.x; x < table_size; x += kThreads) s.table[x] = kNegInf;
  __syncthreads();

  // Sampled query rows of the group: row r = (local block r / s_m, sample r % s_m).
  const T* q_head = static_cast<const T*>(p.q) + b * p.q_stride[0] + h * p.q_stride[1];
  {
    constexpr int kLanesPerRow = 8;
    const int sub = threadIdx.x % kLanesPerRow;
    for (int r = threadIdx.x / kLanesPerRow; r < p.rows_padded; r += kThreads / kLanesPerRow) {
      T* dst = s.q_tile + r * p.pitch;
      const int local = r / p.samples_m;
      const int64_t qblock = first_block + local;
      if (r >= s.rows || qblock >= p.num_q_blocks) {
        zero_row(dst, s.padded_dim, sub, kLanesPerRow);
        continue;
      }
      const int real = static_cast<int>(detail::block_rows(p.seq_q, p.block_m, qblock));
      const int64_t token = qblock * p.block_m + q_offsets[r - local * p.samples_m] % real;
      load_row<T, kVector>(dst, q_head + token * p.q_stride[2], p.q_stride[3],
                           static_cast<int>(p.head_dim), s.padded_dim, sub, kLanesPerRow);
    }
  }
  // The query rows' cp.async groups complete with the first key tile's (wait_group in the sweep).
  s.k_head = static_cast<const T*>(p.k) + b * p.k_stride[0] + hkv * p.k_stride[1];
  s.total_keys = max_visible * p.samples_n;

  if constexpr (kStored) {
    sweep_keys<T, kVector, kDim, Mode::kStored>(p, s);
    // m_i = max over visible J of r_i(J); one warp per row.
    for (int r = warp; r < s.rows; r += kWarps) {
      const int v = s.visible[r / p.samples_m];
      float m = kNegInf;
      for (int j = lane; j < v; j += 32) m = fmaxf(m, s.table[r * s.stride + j]);
      for (int offset = 16; offset > 0; offset >>= 1) {
        m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, offset));
      }
      if (lane == 0) s.row_max[r] = m;
    }
    __syncthreads();
  } else {
    sweep_keys<T, kVector, kDim, Mode::kPass1>(p, s);
    sweep_keys<T, kVector, kDim, Mode::kPass2>(p, s);
  }

  // P(J) per query block of the group, normalised by its sum.
  for (int g = 0; g < G; ++g) {
    const int64_t qblock = first_block + g;
    if (qblock >= p.num_q_blocks) break;
    const int v = s.visible[g];
    float* out = p.scores + ((b * p.heads_q + h) * p.num_q_blocks + qblock) * p.num_k_blocks;
    float partial = 0.0f;
    for (int j = threadIdx.x; j < v; j += kThreads) {
      float d;
      if constexpr (kStored) {
        d = kNegInf;
        for (int i = 0; i < p.samples_m; ++i) {
          const int r = g * p.samples_m + i;
          d = fmaxf(d, s.table[r * s.stride + j] - s.row_max[r]);
        }
      } else {
        d = s.table[g * s.stride + j];
      }
      const float value = expf(d);
      out[j] = value;
      partial += value;
    }
    for (int offset = 16; offset > 0; offset >>= 1) {
      partial += __shfl_xor_sync(0xffffffffu, partial, offset);
    }
    if (lane == 0) reduce[warp] = partial;
    __syncthreads();
    float sum = 0.0f;
    for (int w = 0; w < kWarps; ++w) sum += reduce[w];
    __syncthreads();
    // A query block that sees no key block scores 0 everywhere, as in the CPU reference.
    for (int j = threadIdx.x; j < nk; j += kThreads) {
      out[j] = j < v ? out[j] / sum : 0.0f;
    }
  }
}

// The 16-byte path: D-contiguous rows with 16-byte aligned starts.
bool vector_path_ok(const TensorView& t) {
  if (t.stride[3] != 1 || t.shape[3] % kVecElems != 0 || !is_aligned(t.data, 16)) return false;
  for (int d = 0; d < 3; ++d) {
    if (t.shape[d] > 1 && t.stride[d] % kVecElems != 0) return false;
  }
  return true;
}

template <typename T, bool kVector, bool kStored>
Status launch_mode(const EstimatorParams& p, size_t smem, int64_t grid, cudaStream_t stream) {
  // Head dims 64 and 128 (the supported attention variants) get unrolled k-loops; others, and
  // the scalar path, loop over the padded head dim at run time.
  auto kernel = estimate_importance_kernel<T, kVector, kStored, 0>;
  if constexpr (kVector) {
    if (p.head_dim == 64) kernel = estimate_importance_kernel<T, kVector, kStored, 64>;
    if (p.head_dim == 128) kernel = estimate_importance_kernel<T, kVector, kStored, 128>;
  }
  PSA_RETURN_IF_ERROR(cuda_check(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                           static_cast<int>(smem)),
      "cudaFuncSetAttribute(estimate_importance_kernel)"));
  kernel<<<static_cast<unsigned>(grid), kThreads, smem, stream>>>(p);
  return check_launch("estimate_importance_kernel");
}

// Shared-memory budgets of one CTA: `one_per_sm` (the opt-in maximum) and `two_per_sm` (half of
// an SM's shared memory less the per-CTA reservation, so that two CTAs share an SM).
struct SmemBudget {
  size_t one_per_sm, two_per_sm;
};

template <typename T, bool kVector>
Status launch(EstimatorParams p, const SmemBudget& budget, cudaStream_t stream) {
  // Measured on an H200 (kernel_notes): the sweep is latency-bound, so two CTAs per SM beat
  // fewer, larger CTAs that read the sampled keys fewer times. Wan2.1 1.3B (s_m = 32, D = 128):
  // block_n 128, stored G = 2 (1 CTA/SM) 4.10 ms vs stored G = 1 (2 CTAs/SM) 3.36 ms; block_n
  // 64, stored G = 2 (1 CTA/SM) 4.21 ms vs two-pass G = 4 (2 CTAs/SM) 4.05 ms. Order of
  // preference: stored with the largest G that fits two per SM, two-pass likewise, then the same
  // with one CTA per SM. G is at most kTargetRows / s_m query blocks.
  const int target = static_cast<int>(
      detail::min64(p.num_q_blocks, detail::max64(1, kTargetRows / p.samples_m)));
  auto set_group = [&](int g) {
    p.group_blocks = g;
    p.rows_padded = static_cast<int>(detail::ceil_div(int64_t{g} * p.samples_m, kMmaM) * kMmaM);
  };
  for (const size_t limit : {budget.two_per_sm, budget.one_per_sm}) {
    for (const bool stored : {true, false}) {
      for (int g = target; g >= 1; g = g / 2) {
        set_group(g);
        const size_t smem = smem_layout(p, stored ? Mode::kStored : Mode::kPass2).total;
        if (smem > limit) continue;
        const int64_t grid = p.batch * p.heads_q * detail::ceil_div(p.num_q_blocks, g);
        if (grid > kMaxGridX) return unsupported("estimate_importance: too many query blocks");
        return stored ? launch_mode<T, kVector, true>(p, smem, grid, stream)
                      : launch_mode<T, kVector, false>(p, smem, grid, stream);
      }
    }
  }
  return unsupported("estimate_importance: Nk = " + std::to_string(p.num_k_blocks) +
                     " key blocks need more shared memory than this device has");
}

}  // namespace

Status estimate_importance(TensorView scores, const TensorView& q, const TensorView& k,
                           const Config& config, Stream stream) {
  if (numel(scores) == 0) return Status();
  PSA_RETURN_IF_ERROR(check_estimator_inputs(q, k, kMaxHeadDim));
  DeviceGuard guard(q.device_index);
  PSA_RETURN_IF_ERROR(guard.status());
  EstimatorParams p{};
  p.q = q.data;
  p.k = k.data;
  for (int d = 0; d < 4; ++d) {
    p.q_stride[d] = q.stride[d];
    p.k_stride[d] = k.stride[d];
  }
  p.scores = static_cast<float*>(scores.data);
  p.batch = q.shape[0];
  p.heads_q = q.shape[1];
  p.heads_kv = k.shape[1];
  p.seq_q = q.shape[2];
  p.seq_k = k.shape[2];
  p.head_dim = q.shape[3];
  p.num_q_blocks = detail::ceil_div(p.seq_q, config.block_m);
  p.num_k_blocks = detail::ceil_div(p.seq_k, config.block_n);
  p.block_m = config.block_m;
  p.block_n = config.block_n;
  p.samples_m = config.effective_samples_m();
  p.samples_n = config.effective_samples_n();
  p.pitch = static_cast<int>(detail::ceil_div(p.head_dim, kMmaK) * kMmaK) + kPad;
  p.seed = config.seed;
  p.head_offset = config.head_offset;
  p.scale = estimator_scale(config, p.head_dim);
  p.causal = config.causal;

  SharedMemoryLimits limits{};
  PSA_RETURN_IF_ERROR(shared_memory_limits(&limits));
  SmemBudget budget;
  budget.one_per_sm = limits.per_cta;
  budget.two_per_sm = std::min(
      budget.one_per_sm, limits.per_sm / 2 > limits.reserved ? limits.per_sm / 2 - limits.reserved
                                                              : size_t{0});
  const bool vector_path = vector_path_ok(q) && vector_path_ok(k);
  const cudaStream_t s = to_cuda_stream(stream);
  if (q.dtype == DType::kFloat16) {
    return vector_path ? launch<__half, true>(p, budget, s) : launch<__half, false>(p, budget, s);
  }
  return vector_path ? launch<__nv_bfloat16, true>(p, budget, s)
                     : launch<__nv_bfloat16, false>(p, budget, s);
}

}  // namespace psa::cuda::portable
