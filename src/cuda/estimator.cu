// Block importance on the GPU (SPEC 4), Hopper (sm_90a). A CTA of two warpgroups takes the
// sampled query rows of G query blocks (kRows = 128 rows, 64 per warpgroup) and streams the
// sampled keys of every visible key block through a ring of shared-memory tiles of kKeyTile
// rows, gathered row by row with cp.async (each sampled key row is D contiguous elements).
// S = Q K^T of a tile is one wgmma m64 n128 k16 chain per warpgroup from shared memory (128-byte
// swizzle, fp32 accumulators); the epilogue of a tile takes the max of each key block's s_n
// columns in registers (quad shuffles), so a (row, block) costs one shared-memory update per
// tile. Nothing is written to global memory but the scores: no workspace.
//
// Two modes give the same numbers (max commutes with the monotone rounding of scale * dot, of
// "- m_i" and of expf):
//   stored:   the raw maxima max_j q_i.k_j of every row i and block J stay in shared memory
//             (kRows x Nk fp32); then m_i = scale * max_J, D(J) = max_i (scale * max_j - m_i).
//             When the table does not fit one CTA, a cluster of C CTAs (2, 4 or 8) shares the
//             rows: CTA c takes key blocks [c Nk/C, (c+1) Nk/C) and keeps that slice of the table;
//             the row maxima and the rows' sums are exchanged through distributed shared memory.
//   two-pass: when not even an 8-CTA cluster holds the table, pass 1 computes m_i, pass 2 folds
//             scale * q_i.k_j - m_i into D(J) directly; twice the tensor work.
// P(J) = expf(D(J)), then each row is divided by its sum. Under causal attention, blocks wholly
// invisible to a query block are excluded from m_i and the sum, and score 0. Rows of one query
// block beyond kRows (s_m > kRows, only with explicit samples_m) are taken kRows at a time, the
// D table carrying over.
#include <cooperative_groups.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "common/index_math.h"
#include "common/planner_rules.h"
#include "common/random.h"
#include "cuda/attention/attention_device.cuh"
#include "cuda/cuda_backend.h"
#include "cuda/cuda_utils.cuh"
#include "cuda/estimator_common.h"

namespace psa::cuda {
namespace {

using detail_attention::cp_async_16;
using detail_attention::desc_advance;
using detail_attention::fence_proxy_async;
using detail_attention::fence_registers;
using detail_attention::make_smem_desc;
using detail_attention::quad_max;
using detail_attention::smem_addr;
using detail_attention::Wgmma;
using detail_attention::wgmma_commit;
using detail_attention::wgmma_fence;
using detail_attention::wgmma_wait;

constexpr int kThreads = 256;  // two warpgroups
constexpr int kWarps = kThreads / 32;
constexpr int kKeyTile = 128;  // sampled key rows per tile: the N of each warpgroup's wgmma
constexpr int kRows = 128;     // sampled query rows per CTA: 64 per warpgroup
constexpr int kMaxStages = 4;
constexpr int kColumnBlock = 64;  // elements per 128-byte swizzle column block
constexpr int kChunkElems = 8;    // 16 bytes of fp16 / bf16
constexpr int kSwizzleAlign = 1024;  // a 128-byte swizzle atom: 8 rows x 128 bytes
constexpr int kMaxHeadDim = 256;
constexpr int kMaxSampledBlock = 256;  // block_m, block_n <= 256 (validate_config)
constexpr int kMaxCluster = 8;         // the portable cluster size limit
constexpr float kNegInf = -__builtin_huge_valf();

struct EstimatorParams {
  const void* q;
  int64_t q_stride[4];
  const void* k;
  int64_t k_stride[4];
  float* scores;  // (B, Hq, Mq, Nk) contiguous
  int64_t batch, heads_q, heads_kv, seq_q, seq_k;
  int head_dim, padded_dim;  // D and D rounded up to kColumnBlock
  int num_q_blocks, num_k_blocks;
  int block_m, block_n, samples_m, samples_n;
  int group_blocks;  // G query blocks per CTA
  int cluster;       // C CTAs share the rows of a group, each a slice of the key blocks
  int slice_blocks;  // key blocks per CTA of a cluster: ceil(Nk / C)
  int row_chunks;    // ceil(s_m / kRows) when G = 1, else 1
  int stages;        // key tiles in the ring, 2..kMaxStages
  uint64_t seed;
  int64_t head_offset;  // global index of query head 0, for the draws (Config::head_offset)
  float scale;
  bool causal, vector;
};

// Row stride of the tables: the CTA's key blocks + 1 words, so that the 8 rows a warp updates at
// once (one per quad) fall in distinct banks (with 512 blocks they would all hit one bank).
__host__ __device__ inline int table_stride(const EstimatorParams& p) {
  return p.slice_blocks + 1;
}

// Shared-memory layout (bytes from a kSwizzleAlign-aligned base), the same on host and device.
struct SmemLayout {
  size_t q, k, q_offsets, k_offsets, visible, row_max, global_max, group_sum, d_table, r_table,
      total;
};
__host__ __device__ inline size_t align16(size_t x) { return (x + 15) / 16 * 16; }
__host__ __device__ inline SmemLayout smem_layout(const EstimatorParams& p, bool stored) {
  const size_t rows = kRows;
  SmemLayout s;
  size_t at = 0;
  const size_t stride = static_cast<size_t>(table_stride(p));
  s.q = at;  // (rows, padded_dim) sampled queries, column blocks of rows x 128 bytes
  at += static_cast<size_t>(rows) * p.padded_dim * 2;
  s.k = at;  // stages x (kKeyTile, padded_dim) sampled keys
  at += static_cast<size_t>(p.stages) * kKeyTile * p.padded_dim * 2;
  s.q_offsets = at;
  at += align16(static_cast<size_t>(p.samples_m) * 4);
  s.k_offsets = at;
  at += align16(static_cast<size_t>(p.samples_n) * 4);
  s.visible = at;
  at += align16(static_cast<size_t>(p.group_blocks) * 4);
  s.row_max = at;  // (rows) raw max_j q_i.k_j over this CTA's key blocks
  at += align16(static_cast<size_t>(rows) * 4);
  s.global_max = at;  // (rows) the same over the cluster's key blocks
  at += align16(static_cast<size_t>(rows) * 4);
  s.group_sum = at;  // (G) sum of the CTA's P(J) per query block
  at += align16(static_cast<size_t>(p.group_blocks) * 4);
  s.d_table = at;  // (G, Nk) D(J)
  at += align16(static_cast<size_t>(p.group_blocks) * stride * 4);
  s.r_table = at;  // stored: (rows, Nk) raw maxima
  at += stored ? align16(static_cast<size_t>(rows) * stride * 4) : 0;
  s.total = at + kSwizzleAlign;  // slack to align the base
  return s;
}

// Max of floats of any sign through shared-memory integer reductions (fire and forget: nothing
// waits for them): non-negative floats order as signed ints, negative ones reversed as unsigned.
// -0 is stored as +0 so that it is not lost below -inf.
__device__ __forceinline__ void atomic_max_float(float* address, float value) {
  if (value == 0.0f) value = 0.0f;
  const uint32_t a = smem_addr(address);
  if (value >= 0.0f) {
    asm volatile("red.shared.max.s32 [%0], %1;\n" ::"r"(a), "r"(__float_as_int(value)) : "memory");
  } else {
    asm volatile("red.shared.min.u32 [%0], %1;\n" ::"r"(a), "r"(__float_as_uint(value)) : "memory");
  }
}

// Waits until at most `pending` of this thread's cp.async groups are in flight (0..2).
__device__ __forceinline__ void cp_async_wait_pending(int pending) {
  if (pending <= 0) {
    asm volatile("cp.async.wait_group 0;\n" ::: "memory");
  } else if (pending == 1) {
    asm volatile("cp.async.wait_group 1;\n" ::: "memory");
  } else {
    asm volatile("cp.async.wait_group 2;\n" ::: "memory");
  }
}
__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}

// Byte offset of 16-byte chunk `chunk` of row `row` in a (rows, padded_dim) tile in the 128-byte
// swizzle: column block chunk / 8 holds rows x 128 bytes; chunk c % 8 of row r at (c ^ r) % 8.
__device__ __forceinline__ uint32_t swizzled(int rows, int row, int chunk) {
  return static_cast<uint32_t>((chunk / 8) * rows * 128 + row * 128 +
                               (((chunk % 8) ^ (row % 8)) * 16));
}

// Copies `valid` ? row `src` : zeros into row `row` of a swizzled tile of `rows` rows. Vector
// path: one 16-byte cp.async per chunk (zero-fill past D); scalar path: element loads.
template <typename T>
__device__ __forceinline__ void load_chunk(unsigned char* tile, int rows, int row, int chunk,
                                           const T* src, bool valid, const EstimatorParams& p,
                                           int64_t stride_d) {
  const uint32_t offset = swizzled(rows, row, chunk);
  const int d0 = chunk * kChunkElems;
  if (p.vector) {
    const bool copy = valid && d0 < p.head_dim;
    cp_async_16(smem_addr(tile + offset), copy ? src + d0 : src, copy ? 16 : 0);
  } else {
    T* dst = reinterpret_cast<T*>(tile + offset);
#pragma unroll
    for (int e = 0; e < kChunkElems; ++e) {
      const int d = d0 + e;
      dst[e] = valid && d < p.head_dim ? src[d * stride_d] : from_float<T>(0.0f);
    }
  }
}

// Visible key blocks of query block I: a prefix [0, V) (all Nk without causal).
__device__ __forceinline__ int visible_blocks(const EstimatorParams& p, int64_t qblock) {
  if (!p.causal) return p.num_k_blocks;
  const int64_t last_q = detail::min64((qblock + 1) * p.block_m, p.seq_q) - 1;
  const int64_t limit = last_q + detail::causal_shift(p.seq_q, p.seq_k);
  if (limit < 0) return 0;
  return static_cast<int>(detail::min64(limit / p.block_n + 1, p.num_k_blocks));
}

enum class Mode : int { kStored, kPass1, kPass2 };

// Per-CTA shared arrays and constants.
struct CtaState {
  unsigned char* q_tile;
  unsigned char* k_tiles;
  const int32_t* k_offsets;
  const int* visible;
  float* row_max;  // (kRows) raw row maxima
  float* d_table;  // (G, stride)
  float* r_table;  // stored: (kRows, stride)
  const void* k_head;
  int first_block;  // the CTA's first key block: the table's column 0
  int total_keys;   // sampled keys of the CTA's blocks visible to some query block of the group
  int stride;
};

// The rows of one thread (r0 and r0 + 8 of the CTA tile) and what the fold needs of them.
struct ThreadRows {
  int r[2];
  int group[2];
  int visible[2];     // 0 for a row that does not exist
  bool warp_uniform;  // the warp's 16 rows all exist and share one query block
};

// Gathers sampled keys [tile_start, tile_start + kKeyTile) into a swizzled tile. kLanes threads
// share a row (one 16-byte chunk each) and a thread visits rows row0, row0 + kRowsPerPass, ...;
// the row's block and sample index advance incrementally, so that a thread divides once per tile
// (a division per row made the copies' issue a long dependent chain).
template <typename T, int kDimBlocks>
__device__ __forceinline__ void load_key_tile(unsigned char* tile, const EstimatorParams& p,
                                              const CtaState& s, int tile_start) {
  constexpr int kChunks = kDimBlocks * kColumnBlock / kChunkElems;
  constexpr int kLanes = kChunks <= 8 ? 8 : kChunks <= 16 ? 16 : 32;  // power of two >= kChunks
  constexpr int kRowsPerPass = kThreads / kLanes;
  static_assert(kKeyTile % kRowsPerPass == 0, "passes cover the tile");
  const int chunk = threadIdx.x % kLanes, row0 = threadIdx.x / kLanes;
  const T* k_head = static_cast<const T*>(s.k_head);
  if (kRowsPerPass % p.samples_n == 0) {
    // s_n divides the rows of a pass (s_n in 8, 16, 32 at D 128): the thread's sample, and so its
    // offset, stay fixed and each pass moves kRowsPerPass / s_n blocks on; only the last, ragged
    // block can need the wrap.
    const int step = kRowsPerPass / p.samples_n;
    const int offset = s.k_offsets[row0 % p.samples_n];
    const int kblock0 = s.first_block + (tile_start + row0) / p.samples_n;
    const int last_block = p.num_k_blocks - 1;
    const int last_real = static_cast<int>(p.seq_k) - last_block * p.block_n;
    const int64_t pass_stride = static_cast<int64_t>(step) * p.block_n * p.k_stride[2];
    const T* src0 = k_head + (static_cast<int64_t>(kblock0) * p.block_n + offset) * p.k_stride[2];
#pragma unroll
    for (int pass = 0; pass < kKeyTile / kRowsPerPass; ++pass) {
      const int row = row0 + pass * kRowsPerPass;
      const bool valid = tile_start + row < s.total_keys;
      const int kblock = kblock0 + pass * step;
      const T* src = src0 + pass * pass_stride;
      if (kblock == last_block && offset >= last_real) {
        src = k_head + (static_cast<int64_t>(kblock) * p.block_n + offset % last_real) *
                           p.k_stride[2];
      }
      if (kChunks == kLanes || chunk < kChunks) {
        load_chunk<T>(tile, kKeyTile, row, chunk, valid ? src : k_head, valid, p, p.k_stride[3]);
      }
    }
    return;
  }
  int block = (tile_start + row0) / p.samples_n;
  int sample = tile_start + row0 - block * p.samples_n;
#pragma unroll
  for (int pass = 0; pass < kKeyTile / kRowsPerPass; ++pass) {
    const int row = row0 + pass * kRowsPerPass;
    const bool valid = tile_start + row < s.total_keys;
    const T* src = k_head;
    if (valid) {
      // 32-bit index math: Lk < 2^31 (the API's limit). Offsets past a ragged block's end wrap.
      const int kblock = s.first_block + block;
      const int real = min(p.block_n, static_cast<int>(p.seq_k) - kblock * p.block_n);
      const int offset = s.k_offsets[sample];
      const int64_t token = static_cast<int64_t>(kblock) * p.block_n +
                            (offset < real ? offset : offset % real);
      src = k_head + token * p.k_stride[2];
    }
    if (kChunks == kLanes || chunk < kChunks) {
      load_chunk<T>(tile, kKeyTile, row, chunk, src, valid, p, p.k_stride[3]);
    }
    sample += kRowsPerPass;
    while (sample >= p.samples_n) {
      sample -= p.samples_n;
      ++block;
    }
  }
}

// Folds one warpgroup tile of logits (acc, 8 kNTiles key columns starting at sampled key key0)
// into the maxima of kMode. kGroups n8 column groups make one key block (s_n = 8 kGroups, which
// divides kKeyTile, so no block straddles two tiles): each block is
// reduced in registers, then across the quad (and for pass 2 across the warp's 16 rows when
// they share a query block), then one shared-memory update. Blocks are independent, so their
// shuffles and updates overlap.
// acc[4 nj + e]: row r[e / 2], key column 8 nj + 2 (lane % 4) + e % 2.
template <int kGroups, Mode kMode, int kNTiles>
__device__ __forceinline__ void fold_blocks(const float (&acc)[4 * kNTiles], int key0,
                                            const EstimatorParams& p, const CtaState& s,
                                            const ThreadRows& tr, const float (&shift)[2],
                                            float (&run_max)[2]) {
  static_assert(kNTiles % kGroups == 0, "whole key blocks per warpgroup tile");
  constexpr int kBlocks = kNTiles / kGroups;
  const int lane = threadIdx.x % 32;
  const int first = key0 / (kGroups * 8);
#pragma unroll
  for (int bb = 0; bb < kBlocks; ++bb) {
    // Uniform over the CTA: the blocks past the visible ones are zero-filled keys.
    if (key0 + bb * kGroups * 8 >= s.total_keys) break;
    const int block = first + bb;
    float m0 = kNegInf, m1 = kNegInf;
#pragma unroll
    for (int g = 0; g < kGroups; ++g) {
      const int nj = bb * kGroups + g;
      m0 = fmaxf(m0, fmaxf(acc[4 * nj], acc[4 * nj + 1]));
      m1 = fmaxf(m1, fmaxf(acc[4 * nj + 2], acc[4 * nj + 3]));
    }
    const bool see0 = block < tr.visible[0], see1 = block < tr.visible[1];
    if constexpr (kMode == Mode::kPass1) {
      if (see0) run_max[0] = fmaxf(run_max[0], m0);
      if (see1) run_max[1] = fmaxf(run_max[1], m1);
    }
    if constexpr (kMode == Mode::kStored) {
      // The quad shuffles run on every lane (a row's visibility differs within a warp).
      m0 = quad_max(m0);
      m1 = quad_max(m1);
      if (lane % 4 == 0) {
        if (see0) atomic_max_float(&s.r_table[tr.r[0] * s.stride + block], m0);
        if (see1) atomic_max_float(&s.r_table[tr.r[1] * s.stride + block], m1);
      }
    } else if constexpr (kMode == Mode::kPass2) {
      // __fmul_rn keeps scale * dot rounded on its own (no fused multiply-subtract), as the CPU
      // reference rounds r_i(J) before subtracting m_i; both steps are monotone, so the max over
      // a quad's partial maxima may be taken after them.
      const float v0 = see0 ? __fmul_rn(p.scale, m0) - shift[0] : kNegInf;
      const float v1 = see1 ? __fmul_rn(p.scale, m1) - shift[1] : kNegInf;
      if (tr.warp_uniform) {
        float v = fmaxf(v0, v1);
#pragma unroll
        for (int offset = 1; offset < 32; offset <<= 1) {
          v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
        }
        if (lane == 0 && see0) atomic_max_float(&s.d_table[tr.group[0] * s.stride + block], v);
      } else {
        const float w0 = quad_max(v0), w1 = quad_max(v1);
        if (lane % 4 == 0) {
          if (see0) atomic_max_float(&s.d_table[tr.group[0] * s.stride + block], w0);
          if (see1) atomic_max_float(&s.d_table[tr.group[1] * s.stride + block], w1);
        }
      }
    }
  }
}

// The stored fold when a warpgroup tile holds kBlocks = 16 / kGroups >= 4 whole key blocks
// (s_n = 8, 16, 32): each thread reduces its columns of every block in registers, then the quad
// reduce-scatters them in two shuffle steps (partners 2 and 1 apart), so that each lane ends with
// kBlocks / 4 whole blocks of its two rows, stored without atomics: a (row, block) lives in one
// tile and one quad. No visibility test: the table entries of blocks a row does not see are
// written but never read; blocks past the last visible one of the group are not written.
template <int kGroups, int kNTiles>
__device__ __forceinline__ void fold_stored(const float (&acc)[4 * kNTiles], int key0,
                                            const EstimatorParams& p, const CtaState& s,
                                            const ThreadRows& tr) {
  constexpr int kBlocks = kNTiles / kGroups;
  constexpr int kHalf = kBlocks / 2, kQuarter = kBlocks / 4;
  static_assert(kNTiles % kGroups == 0 && kQuarter >= 1, "at least four blocks per tile");
  const int lane = threadIdx.x % 32;
  const bool upper = (lane & 2) != 0, odd = (lane & 1) != 0;
  float v[kBlocks][2];
#pragma unroll
  for (int bb = 0; bb < kBlocks; ++bb) {
    float m0 = kNegInf, m1 = kNegInf;
#pragma unroll
    for (int g = 0; g < kGroups; ++g) {
      const int nj = bb * kGroups + g;
      m0 = fmaxf(m0, fmaxf(acc[4 * nj], acc[4 * nj + 1]));
      m1 = fmaxf(m1, fmaxf(acc[4 * nj + 2], acc[4 * nj + 3]));
    }
    v[bb][0] = m0;
    v[bb][1] = m1;
  }
  // Step 1: lanes with bit 1 set keep the upper half of the blocks, the others the lower half.
  float w[kHalf][2];
#pragma unroll
  for (int i = 0; i < kHalf; ++i) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const float send = upper ? v[i][r] : v[i + kHalf][r];
      const float keep = upper ? v[i + kHalf][r] : v[i][r];
      w[i][r] = fmaxf(keep, __shfl_xor_sync(0xffffffffu, send, 2));
    }
  }
  // Step 2: within the half, odd lanes keep its upper quarter.
  float u[kQuarter][2];
#pragma unroll
  for (int i = 0; i < kQuarter; ++i) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const float send = odd ? w[i][r] : w[i + kQuarter][r];
      const float keep = odd ? w[i + kQuarter][r] : w[i][r];
      u[i][r] = fmaxf(keep, __shfl_xor_sync(0xffffffffu, send, 1));
    }
  }
  const int first = key0 / (kGroups * 8) + (upper ? kHalf : 0) + (odd ? kQuarter : 0);
  const int blocks = s.total_keys / p.samples_n;
#pragma unroll
  for (int i = 0; i < kQuarter; ++i) {
    if (first + i < blocks) {
      s.r_table[tr.r[0] * s.stride + first + i] = u[i][0];
      s.r_table[tr.r[1] * s.stride + first + i] = u[i][1];
    }
  }
}

// The same for any s_n, element by element (a block may straddle two tiles).
template <Mode kMode, int kNTiles>
__device__ __forceinline__ void fold_elements(const float (&acc)[4 * kNTiles], int key0,
                                              const EstimatorParams& p, const CtaState& s,
                                              const ThreadRows& tr, const float (&shift)[2],
                                              float (&run_max)[2]) {
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int nj = 0; nj < kNTiles; ++nj) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int key = key0 + nj * 8 + 2 * (lane % 4) + (e & 1);
      if (key >= s.total_keys) continue;
      const int block = key / p.samples_n;
      const int h = e / 2;
      if (block >= tr.visible[h]) continue;
      const float dot = acc[4 * nj + e];
      if constexpr (kMode == Mode::kPass1) run_max[h] = fmaxf(run_max[h], dot);
      if constexpr (kMode == Mode::kStored) {
        atomic_max_float(&s.r_table[tr.r[h] * s.stride + block], dot);
      } else if constexpr (kMode == Mode::kPass2) {
        atomic_max_float(&s.d_table[tr.group[h] * s.stride + block],
                         __fmul_rn(p.scale, dot) - shift[h]);
      }
    }
  }
}

// Folds a tile's logits (acc[4 nj + e]: row r[e / 2], key column 8 nj + 2 (lane % 4) + e % 2 of
// the tile starting at sampled key key0) by the fold that suits s_n and the mode.
template <Mode kMode, int kNTiles>
__device__ __forceinline__ void fold_tile(const float (&acc)[4 * kNTiles], int key0,
                                          const EstimatorParams& p, const CtaState& s,
                                          const ThreadRows& tr, const float (&shift)[2],
                                          float (&run_max)[2]) {
  if constexpr (kMode == Mode::kStored) {
    switch (p.samples_n) {
      case 8: fold_stored<1, kNTiles>(acc, key0, p, s, tr); return;
      case 16: fold_stored<2, kNTiles>(acc, key0, p, s, tr); return;
      case 32: fold_stored<4, kNTiles>(acc, key0, p, s, tr); return;
      default: break;
    }
  }
  switch (p.samples_n) {
    case 8: fold_blocks<1, kMode, kNTiles>(acc, key0, p, s, tr, shift, run_max); break;
    case 16: fold_blocks<2, kMode, kNTiles>(acc, key0, p, s, tr, shift, run_max); break;
    case 32: fold_blocks<4, kMode, kNTiles>(acc, key0, p, s, tr, shift, run_max); break;
    case 64: fold_blocks<8, kMode, kNTiles>(acc, key0, p, s, tr, shift, run_max); break;
    default: fold_elements<kMode, kNTiles>(acc, key0, p, s, tr, shift, run_max); break;
  }
}

// One sweep over the sampled keys: the logits of every (sampled query, sampled key) pair folded
// into the maxima of kMode. Each warpgroup takes its 64 rows against all kKeyTile keys of a tile.
template <typename T, int kDimBlocks, Mode kMode>
__device__ void sweep_keys(const EstimatorParams& p, const CtaState& s, const ThreadRows& tr) {
  constexpr int kNTiles = kKeyTile / 8;
  const int lane = threadIdx.x % 32, warpgroup = threadIdx.x / 128;
  const int stages = p.stages;
  const int num_tiles = (s.total_keys + kKeyTile - 1) / kKeyTile;
  const uint32_t tile_bytes = static_cast<uint32_t>(kKeyTile) * p.padded_dim * 2;
  for (int st = 0; st < stages - 1; ++st) {
    if (st < num_tiles) {
      load_key_tile<T, kDimBlocks>(s.k_tiles + st * tile_bytes, p, s, st * kKeyTile);
    }
    cp_async_commit();
  }
  const uint64_t q_desc =
      make_smem_desc(smem_addr(s.q_tile) + warpgroup * 64 * 128);
  // Pass 2: m_i in scaled units.
  float shift[2] = {0.0f, 0.0f};
  if constexpr (kMode == Mode::kPass2) {
    for (int h = 0; h < 2; ++h) {
      shift[h] = tr.visible[h] > 0 ? __fmul_rn(p.scale, s.row_max[tr.r[h]]) : 0.0f;
    }
  }
  float run_max[2] = {kNegInf, kNegInf};  // pass 1: the row's raw maximum

  for (int tile = 0; tile < num_tiles; ++tile) {
    cp_async_wait_pending(stages - 2);
    // The copies (and the scalar path's stores) were written through the generic proxy; wgmma
    // reads through the async proxy.
    fence_proxy_async();
    __syncthreads();
    // Refill the stage read in the previous iteration: every thread has passed the barrier, so
    // its wgmma has completed.
    const int next = tile + stages - 1;
    if (next < num_tiles) {
      load_key_tile<T, kDimBlocks>(s.k_tiles + (next % stages) * tile_bytes, p, s, next * kKeyTile);
    }
    cp_async_commit();

    float acc[kKeyTile / 2];
    const uint64_t k_desc = make_smem_desc(smem_addr(s.k_tiles + (tile % stages) * tile_bytes));
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kDimBlocks * kColumnBlock / 16; ++kk) {
      const uint32_t q_offset = (kk / 4) * kRows * 128 + (kk % 4) * 32;
      const uint32_t k_offset = (kk / 4) * kKeyTile * 128 + (kk % 4) * 32;
      if (kk == 0) {
        Wgmma<T, kKeyTile>::ss_first(acc, desc_advance(q_desc, q_offset),
                               desc_advance(k_desc, k_offset));
      } else {
        Wgmma<T, kKeyTile>::ss(acc, desc_advance(q_desc, q_offset),
                               desc_advance(k_desc, k_offset), 1);
      }
    }
    wgmma_commit();
    wgmma_wait<0>();
    fence_registers(acc);

    fold_tile<kMode, kNTiles>(acc, tile * kKeyTile, p, s, tr, shift, run_max);
  }
  cp_async_wait_pending(0);
  if constexpr (kMode == Mode::kPass1) {
    for (int h = 0; h < 2; ++h) {
      const float m = quad_max(run_max[h]);
      if (lane % 4 == 0 && tr.visible[h] > 0) atomic_max_float(&s.row_max[tr.r[h]], m);
    }
  }
  __syncthreads();
}

template <typename T, bool kStored, int kDimBlocks>
__global__ void __launch_bounds__(kThreads, 2) estimate_importance_kernel(EstimatorParams p) {
  static_assert(kThreads == 256 && kRows == 128, "two warpgroups of 64 rows");
  static_assert(kKeyTile == 128 && kKeyTile % 8 == 0, "a tile is whole n8 groups per warpgroup");
  static_assert(kChunkElems * sizeof(T) == 16, "cp.async moves 16 bytes");
  static_assert(kDimBlocks >= 1 && kDimBlocks * kColumnBlock <= kMaxHeadDim,
                "D fits the swizzled tiles");
  static_assert(kColumnBlock * sizeof(T) == 128, "a swizzle column block is 128 bytes");
  extern __shared__ __align__(16) unsigned char smem_raw[];
  unsigned char* smem = smem_raw + ((kSwizzleAlign - smem_addr(smem_raw) % kSwizzleAlign) %
                                    kSwizzleAlign);
  const SmemLayout layout = smem_layout(p, kStored);
  CtaState s;
  s.q_tile = smem + layout.q;
  s.k_tiles = smem + layout.k;
  int32_t* q_offsets = reinterpret_cast<int32_t*>(smem + layout.q_offsets);
  int32_t* k_offsets = reinterpret_cast<int32_t*>(smem + layout.k_offsets);
  int* visible = reinterpret_cast<int*>(smem + layout.visible);
  s.k_offsets = k_offsets;
  s.visible = visible;
  s.row_max = reinterpret_cast<float*>(smem + layout.row_max);
  s.d_table = reinterpret_cast<float*>(smem + layout.d_table);
  s.r_table = reinterpret_cast<float*>(smem + layout.r_table);
  s.stride = table_stride(p);

  const int G = p.group_blocks;
  const int64_t groups = detail::ceil_div(p.num_q_blocks, G);
  const int rank = static_cast<int>(blockIdx.x % p.cluster);
  const int64_t item = blockIdx.x / p.cluster;
  const int64_t group = item % groups;
  const int64_t h = (item / groups) % p.heads_q;
  const int64_t b = item / (groups * p.heads_q);
  const int64_t hkv = h / (p.heads_q / p.heads_kv);
  const int64_t first_block = group * G;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  // This CTA's key blocks [first_key_block, + slice): a slice of the cluster's.
  const int first_key_block = rank * p.slice_blocks;
  const int slice = max(0, min(p.num_k_blocks - first_key_block, p.slice_blocks));

  // The draws in parallel (each is a Philox block of its own), then the two shuffles, each on
  // one thread; the offsets overwrite the draws in place (draw i is read before offset i is
  // written).
  {
    const int64_t head_draw = h + p.head_offset;
    const int64_t key_stream = detail::key_offset_stream(head_draw / (p.heads_q / p.heads_kv));
    for (int i = threadIdx.x; i < p.samples_m + p.samples_n; i += kThreads) {
      if (i < p.samples_m) {
        q_offsets[i] = static_cast<int32_t>(detail::offset_draw(p.seed, b, head_draw, i));
      } else {
        k_offsets[i - p.samples_m] =
            static_cast<int32_t>(detail::offset_draw(p.seed, b, key_stream, i - p.samples_m));
      }
    }
    __syncthreads();
    int32_t pool[kMaxSampledBlock];
    if (threadIdx.x == 0) {
      detail::shuffle_offsets(q_offsets, pool, reinterpret_cast<const uint32_t*>(q_offsets),
                              p.block_m, p.samples_m);
    } else if (threadIdx.x == 32) {
      detail::shuffle_offsets(k_offsets, pool, reinterpret_cast<const uint32_t*>(k_offsets),
                              p.block_n, p.samples_n);
    }
  }
  // Visible key blocks of each query block, counted within the slice.
  int max_visible = 0;
  for (int g = 0; g < G; ++g) {
    const int64_t qblock = first_block + g;
    const int v = qblock < p.num_q_blocks
                      ? max(0, min(visible_blocks(p, qblock) - first_key_block, slice))
                      : 0;
    if (threadIdx.x == 0) visible[g] = v;
    max_visible = max(max_visible, v);
  }
  for (int x = threadIdx.x; x < G * s.stride; x += kThreads) s.d_table[x] = kNegInf;
  s.k_head = static_cast<const T*>(p.k) + b * p.k_stride[0] + hkv * p.k_stride[1];
  s.first_block = first_key_block;
  s.total_keys = max_visible * p.samples_n;
  const T* q_head = static_cast<const T*>(p.q) + b * p.q_stride[0] + h * p.q_stride[1];
  float* global_max = s.row_max;
  if constexpr (kStored) global_max = reinterpret_cast<float*>(smem + layout.global_max);
  float* group_sum = reinterpret_cast<float*>(smem + layout.group_sum);
  cooperative_groups::cluster_group cluster = cooperative_groups::this_cluster();
  __syncthreads();

  // This thread's accumulator rows: warp w of warpgroup wg holds rows 16 w + lane / 4 (+ 8) of
  // the warpgroup's 64.
  const int warpgroup = threadIdx.x / 128, warp_in_group = warp % 4;
  const int row_base = warpgroup * 64 + warp_in_group * 16;
  for (int chunk = 0; chunk < p.row_chunks; ++chunk) {
    // Row r of the tile is sampled row chunk * kRows + r of the group: query block idx / s_m,
    // sample idx % s_m.
    ThreadRows tr;
    for (int half = 0; half < 2; ++half) {
      tr.r[half] = row_base + lane / 4 + 8 * half;
      const int idx = chunk * kRows + tr.r[half];
      tr.group[half] = idx / p.samples_m;
      tr.visible[half] = tr.group[half] < G ? visible[tr.group[half]] : 0;
    }
    {
      const int first = chunk * kRows + row_base, last = first + 15;
      const int g = first / p.samples_m;
      tr.warp_uniform = g == last / p.samples_m && g < G && first_block + g < p.num_q_blocks;
    }
    for (int r = threadIdx.x; r < kRows; r += kThreads) s.row_max[r] = kNegInf;
    if constexpr (kStored) {
      for (int x = threadIdx.x; x < kRows * s.stride; x += kThreads) s.r_table[x] = kNegInf;
    }
    // Sampled query rows: (kRows, padded_dim), zero rows past the group.
    const int chunks = p.padded_dim / kChunkElems;
    for (int i = threadIdx.x; i < kRows * chunks; i += kThreads) {
      const int row = i / chunks, c = i - row * chunks;
      const int idx = chunk * kRows + row;
      const int g = idx / p.samples_m;
      const int64_t qblock = first_block + g;
      const bool valid = g < G && qblock < p.num_q_blocks;
      const T* src = q_head;
      if (valid) {
        const int real = static_cast<int>(detail::block_rows(p.seq_q, p.block_m, qblock));
        const int64_t token = qblock * p.block_m + q_offsets[idx - g * p.samples_m] % real;
        src = q_head + token * p.q_stride[2];
      }
      load_chunk<T>(s.q_tile, kRows, row, c, src, valid, p, p.q_stride[3]);
    }
    // The query rows' cp.async group completes before the first key tile's (wait_group).
    cp_async_commit();
    __syncthreads();

    if constexpr (kStored) {
      sweep_keys<T, kDimBlocks, Mode::kStored>(p, s, tr);
      // The raw row maxima over the CTA's visible blocks, from the table: warp w takes rows w,
      // w + 8, ...
      for (int r = warp; r < kRows; r += kWarps) {
        const int g = (chunk * kRows + r) / p.samples_m;
        const int v = g < G ? visible[g] : 0;
        float m = kNegInf;
        for (int j = lane; j < v; j += 32) m = fmaxf(m, s.r_table[r * s.stride + j]);
        for (int offset = 16; offset > 0; offset >>= 1) {
          m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, offset));
        }
        if (lane == 0) s.row_max[r] = m;
      }
      __syncthreads();
      if (p.cluster > 1) {
        // m_i over the whole row: the maxima of every CTA of the cluster. The second barrier
        // keeps each CTA's row_max alive until the others have read it.
        cluster.sync();
        for (int r = threadIdx.x; r < kRows; r += kThreads) {
          float m = s.row_max[r];
          for (int c = 0; c < p.cluster; ++c) {
            if (c != rank) m = fmaxf(m, *cluster.map_shared_rank(s.row_max + r, c));
          }
          global_max[r] = m;
        }
        cluster.sync();
      } else {
        for (int r = threadIdx.x; r < kRows; r += kThreads) global_max[r] = s.row_max[r];
        __syncthreads();
      }
      // D(g, J) = max over the chunk's rows i of g of scale * max_j - m_i.
      for (int g = 0; g < G; ++g) {
        const int lo = max(g * p.samples_m, chunk * kRows) - chunk * kRows;
        const int hi = min((g + 1) * p.samples_m, (chunk + 1) * kRows) - chunk * kRows;
        for (int j = threadIdx.x; j < visible[g]; j += kThreads) {
          float d = s.d_table[g * s.stride + j];
          for (int r = lo; r < hi; ++r) {
            d = fmaxf(d, __fmul_rn(p.scale, s.r_table[r * s.stride + j]) -
                             __fmul_rn(p.scale, global_max[r]));
          }
          s.d_table[g * s.stride + j] = d;
        }
      }
    } else {
      sweep_keys<T, kDimBlocks, Mode::kPass1>(p, s, tr);
      sweep_keys<T, kDimBlocks, Mode::kPass2>(p, s, tr);
    }
    __syncthreads();
  }

  // P(J) = expf(D(J)) per query block of the group, normalised by its sum over the cluster's
  // slices. Warp w takes query blocks w, w + 8, ...
  for (int g = warp; g < G; g += kWarps) {
    float partial = 0.0f;
    for (int j = lane; j < visible[g]; j += 32) {
      const float value = expf(s.d_table[g * s.stride + j]);
      s.d_table[g * s.stride + j] = value;
      partial += value;
    }
    for (int offset = 16; offset > 0; offset >>= 1) {
      partial += __shfl_xor_sync(0xffffffffu, partial, offset);
    }
    if (lane == 0) group_sum[g] = partial;
  }
  if (p.cluster > 1) {
    cluster.sync();
  } else {
    __syncthreads();
  }
  for (int g = warp; g < G; g += kWarps) {
    const int64_t qblock = first_block + g;
    if (qblock >= p.num_q_blocks) break;
    float sum = group_sum[g];
    for (int c = 0; c < p.cluster; ++c) {
      if (c != rank) sum += *cluster.map_shared_rank(group_sum + g, c);
    }
    // A query block that sees no key block scores 0 everywhere, as in the CPU reference.
    float* out = p.scores + ((b * p.heads_q + h) * p.num_q_blocks + qblock) * p.num_k_blocks +
                 first_key_block;
    const int v = visible[g];
    for (int j = lane; j < slice; j += 32) out[j] = j < v ? s.d_table[g * s.stride + j] / sum : 0.0f;
  }
  // No CTA leaves while another may still read its sums.
  if (p.cluster > 1) cluster.sync();
}

// The 16-byte path: D-contiguous rows with 16-byte aligned starts.
bool vector_path_ok(const TensorView& t) {
  if (t.stride[3] != 1 || t.shape[3] % kChunkElems != 0 || !is_aligned(t.data, 16)) return false;
  for (int d = 0; d < 3; ++d) {
    if (t.shape[d] > 1 && t.stride[d] % kChunkElems != 0) return false;
  }
  return true;
}

// One launch configuration: mode, cluster size and ring depth.
struct Choice {
  bool stored;
  EstimatorParams p;
  size_t smem;
};

template <typename T, bool kStored>
auto kernel_for(int padded_dim) {
  auto kernel = estimate_importance_kernel<T, kStored, 1>;
  if (padded_dim == 2 * kColumnBlock) kernel = estimate_importance_kernel<T, kStored, 2>;
  if (padded_dim == 3 * kColumnBlock) kernel = estimate_importance_kernel<T, kStored, 3>;
  if (padded_dim == 4 * kColumnBlock) kernel = estimate_importance_kernel<T, kStored, 4>;
  return kernel;
}

// The head dim in 64-element column blocks is a template parameter, so that the wgmma k-loop
// unrolls (a run-time trip count made ptxas insert a warpgroup.arrive before each wgmma).
// A cluster of C > 1 CTAs is launched as one (cudaLaunchKernelEx): C consecutive CTAs share rows.
template <typename T, bool kStored>
Status launch_kernel(const Choice& c, cudaStream_t stream) {
  const auto kernel = kernel_for<T, kStored>(c.p.padded_dim);
  PSA_RETURN_IF_ERROR(cuda_check(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                           static_cast<int>(c.smem)),
      "cudaFuncSetAttribute(estimate_importance_kernel)"));
  const int64_t grid = c.p.batch * c.p.heads_q *
                       detail::ceil_div(c.p.num_q_blocks, c.p.group_blocks) * c.p.cluster;
  if (grid > kMaxGridX) return unsupported("estimate_importance: too many query blocks");
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(static_cast<unsigned>(grid));
  config.blockDim = dim3(kThreads);
  config.dynamicSmemBytes = c.smem;
  config.stream = stream;
  cudaLaunchAttribute cluster;
  cluster.id = cudaLaunchAttributeClusterDimension;
  cluster.val.clusterDim.x = static_cast<unsigned>(c.p.cluster);
  cluster.val.clusterDim.y = 1;
  cluster.val.clusterDim.z = 1;
  config.attrs = &cluster;
  config.numAttrs = 1;
  PSA_RETURN_IF_ERROR(cuda_check(cudaLaunchKernelEx(&config, kernel, c.p),
                                 "cudaLaunchKernelEx(estimate_importance_kernel)"));
  return check_launch("estimate_importance_kernel");
}

// Fills in G, the row chunks and the deepest ring (<= kMaxStages) that fits `limit` bytes.
bool fit_stages(Choice& c, size_t limit) {
  EstimatorParams& p = c.p;
  p.group_blocks = std::max(1, std::min(kRows / p.samples_m, p.num_q_blocks));
  p.row_chunks = p.samples_m > kRows ? (p.samples_m + kRows - 1) / kRows : 1;
  for (int stages = kMaxStages; stages >= 2; --stages) {
    p.stages = stages;
    c.smem = smem_layout(p, c.stored).total;
    if (c.smem <= limit) return true;
  }
  return false;
}

void set_cluster(Choice& c, int cluster) {
  c.p.cluster = cluster;
  c.p.slice_blocks = static_cast<int>(detail::ceil_div(c.p.num_k_blocks, cluster));
}

// The stored table over the fewest CTAs that run two per SM (the kernels are built for <= 128
// registers, two CTAs' worth), else over the fewest that fit at one per SM; two-pass with one
// CTA when even kMaxCluster slices do not fit. Measured on an H200 (kernel_notes): stored at one
// CTA per SM beat two-pass at two (CogVideoX 5B block_n 64: 1.38 vs 1.49 ms), and two-pass at
// two CTAs per SM beat one stored CTA of 64 rows (Wan2.1 1.3B block_n 64: 1.75 vs 2.18 ms).
template <typename T>
Status launch(const EstimatorParams& base, const SharedMemoryLimits& budget,
              cudaStream_t stream) {
  const size_t two_per_sm = std::min(budget.per_cta, budget.per_sm / 2 - budget.reserved);
  for (const size_t limit : {two_per_sm, budget.per_cta}) {
    for (int cluster = 1; cluster <= kMaxCluster; cluster *= 2) {
      Choice stored{true, base, 0};
      set_cluster(stored, cluster);
      if (fit_stages(stored, limit)) return launch_kernel<T, true>(stored, stream);
    }
  }
  Choice two_pass{false, base, 0};
  set_cluster(two_pass, 1);
  if (fit_stages(two_pass, two_per_sm) || fit_stages(two_pass, budget.per_cta)) {
    return launch_kernel<T, false>(two_pass, stream);
  }
  return unsupported("estimate_importance: Nk = " + std::to_string(base.num_k_blocks) +
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
  p.head_dim = static_cast<int>(q.shape[3]);
  p.padded_dim = static_cast<int>(detail::ceil_div(p.head_dim, kColumnBlock) * kColumnBlock);
  p.num_q_blocks = static_cast<int>(detail::ceil_div(p.seq_q, config.block_m));
  p.num_k_blocks = static_cast<int>(detail::ceil_div(p.seq_k, config.block_n));
  p.block_m = config.block_m;
  p.block_n = config.block_n;
  p.samples_m = config.effective_samples_m();
  p.samples_n = config.effective_samples_n();
  p.seed = config.seed;
  p.head_offset = config.head_offset;
  p.scale = estimator_scale(config, p.head_dim);
  p.causal = config.causal;
  p.vector = vector_path_ok(q) && vector_path_ok(k);

  SharedMemoryLimits budget{};
  PSA_RETURN_IF_ERROR(shared_memory_limits(&budget));
  const cudaStream_t s = to_cuda_stream(stream);
  if (q.dtype == DType::kFloat16) return launch<__half>(p, budget, s);
  return launch<__nv_bfloat16>(p, budget, s);
}

}  // namespace psa::cuda
