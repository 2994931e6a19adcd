// The portable pyramid sparse attention forward (SPEC.md sections 2, 3, 6) for compute capability
// 8.0 and newer: FlashAttention-2 style with mma.sync m16n8k16, ldmatrix and cp.async.
//
// One CTA of 4 warps per plan row (batch, query head, query block), or two per row of 128 queries
// where shared memory is small; each warp owns kMTiles x 16 query rows (32 for a CTA of 128, 16
// for one of 64), read from a shared-memory copy of Q at every k16 step, so that a K or V
// fragment feeds kMTiles x 2 mma and O stays in registers. The row's kept key blocks form the
// virtual key sequence of docs/design.md (level-1 blocks, then levels 2, 4, 8); the CTA walks it
// in tiles of kBlockN rows with one buffer for K and one for V, as FlashAttention-2 does: V(t)
// loads behind S(t) = Q K(t)^T and the softmax, K(t + 1) behind O += P V(t), and two or three
// CTAs per SM hide each other's barriers. Each tile row (level, block from the plan, pooled row)
// is resolved once, by one thread, a tile ahead, into the addresses of its K and V rows: its plan
// load is issued before S(t) and used after the softmax, so no warp waits on it, and the copies
// need no index math. Per column the tile keeps the bias log2(c_p) (-inf for a missing row) and
// the last real constituent; on tiles that cross a query's causal horizon the softmax tests each
// element. Tiles none of the block's queries can see (no existing column, or all columns past the
// last query's horizon) are neither loaded nor computed.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "common/index_math.h"
#include "cuda/attention/attention_params.h"
#include "cuda/attention/plan_rows.cuh"
#include "cuda/portable/mma.cuh"

namespace psa::cuda::portable {

// Where each level lives for this CTA's (batch, kv head) and the layout of its virtual key
// sequence; written once per CTA, read by the loader of every tile.
struct LevelViews {
  const char* k_base[kAttentionLevels];
  const char* v_base[kAttentionLevels];
  int64_t k_row_bytes[kAttentionLevels];
  int64_t v_row_bytes[kAttentionLevels];
  int32_t level_length[kAttentionLevels];      // ceil(Lk / f): pooled rows that exist
  int32_t region_start[kAttentionLevels + 1];  // R_1, R_2, R_4, R_8, end (virtual rows)
  int32_t list_offset[kAttentionLevels];       // where level f's blocks start in the list
};

// Shared memory: Q (kBlockM rows), one K and one V tile (kBlockN rows each), two tile records
// (this tile's and the next one's: per row the K and V source addresses, the column bias and last
// constituent; per writer warp the extremes of its rows' last constituents), the row's level
// views. The shapes each card gets are in attention_launch.cuh.
template <typename Element_, int kHeadDim_, int kBlockM_, int kBlockN_, int kMinBlocks_>
struct AttentionTraits {
  using Element = Element_;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kBlockM = kBlockM_;
  static constexpr int kBlockN = kBlockN_;
  static constexpr int kMinBlocks = kMinBlocks_;  // CTAs per SM the register budget allows
  static constexpr int kWarps = 4;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kMTiles = kBlockM / (16 * kWarps);  // m16 tiles of query rows per warp
  static constexpr int kRowBytes = kHeadDim * 2;
  static constexpr int kChunksPerRow = kHeadDim / 8;            // 16-byte chunks per row
  static constexpr int kRowsPerPass = kThreads / kChunksPerRow;  // rows the CTA copies at once
  static constexpr int kTileBytes = kBlockN * kRowBytes;         // K (or V) of one tile
  static constexpr int kQBytes = kBlockM * kRowBytes;
  static constexpr int kWriterWarps = kBlockN / 32;  // warps whose lanes resolve one tile row each
  static constexpr int kRecordBytes = kBlockN * (8 + 8 + 4 + 4) + kWriterWarps * 8;
  static constexpr int kSmemBytes = kQBytes + 2 * kTileBytes + 2 * kRecordBytes +
                                    static_cast<int>(sizeof(LevelViews));

  static_assert(kHeadDim == 64 || kHeadDim == 128, "head dims 64 and 128 are instantiated");
  static_assert(kBlockM == 64 || kBlockM == 128, "one CTA per plan row: block_m 64 or 128");
  static_assert(kMTiles >= 1 && kMTiles * 16 * kWarps == kBlockM, "whole m16 tiles per warp");
  static_assert(kBlockN % 32 == 0 && kBlockN <= kThreads,
                "whole warps resolve the tile rows, one row per thread");
  static_assert(kBlockN % kRowsPerPass == 0 && kBlockM % kRowsPerPass == 0,
                "the copies cover a tile and Q in whole passes of the CTA");
  static_assert(kRecordBytes % 8 == 0, "records keep the level views 8-byte aligned");
  static_assert(kSmemBytes <= 99 * 1024, "fits a CTA on every compute capability 8.x");
};

// The smallest last constituent of a set of columns that holds no existing column, and the
// largest.
constexpr int32_t kNoUnit = 0x7fffffff;
constexpr int32_t kNoLast = -0x7fffffff - 1;

// One tile's record in shared memory.
struct TileRecord {
  const char** k_src;  // address of each tile row's K row, nullptr where the row does not exist
  const char** v_src;  // the same for V
  float* bias;         // log2(c_p), -inf where the row does not exist
  int32_t* last;       // last real constituent
  int32_t* min_last;   // per writer warp: kNoUnit when none of its rows exists
  int32_t* max_last;   // per writer warp: kNoLast when none of its rows exists

  template <typename Traits>
  __device__ __forceinline__ static TileRecord at(unsigned char* base) {
    constexpr int n = Traits::kBlockN;
    int32_t* words = reinterpret_cast<int32_t*>(base + 16 * n);
    return TileRecord{reinterpret_cast<const char**>(base),
                      reinterpret_cast<const char**>(base + 8 * n),
                      reinterpret_cast<float*>(words),
                      words + n,
                      words + 2 * n,
                      words + 2 * n + Traits::kWriterWarps};
  }
};

// Resolves tile row `row` (virtual row r of level `level`, its plan entry j already loaded; -1
// when r is past the sequence) into `record`, and the writer warp's extremes of the last
// constituents. Called by every lane of the writer warps.
template <typename Traits>
__device__ __forceinline__ void write_tile_row(const AttentionParams& params,
                                               const LevelViews& views, int r, int level, int j,
                                               int row, const TileRecord& record) {
  int64_t p = 0;
  const bool valid =
      virtual_row_pooled(views, r, level, j, params.log2_block_n, params.num_k_blocks, &p);
  const int32_t row_last =
      valid ? static_cast<int32_t>(psa::detail::pooled_last_token(params.seq_k, 1 << level, p))
            : 0;
  // log2(c_p): the level itself for a full group (log2f of a power of two is exact), log2f only
  // for the ragged last pooled token.
  const int64_t count = psa::detail::pooled_count(params.seq_k, 1 << level, p);
  record.k_src[row] = valid ? views.k_base[level] + p * views.k_row_bytes[level] : nullptr;
  record.v_src[row] = valid ? views.v_base[level] + p * views.v_row_bytes[level] : nullptr;
  record.bias[row] = !valid                 ? kNegInf
                     : count == (1 << level) ? static_cast<float>(level)
                                             : log2f(static_cast<float>(count));
  record.last[row] = row_last;
  const int32_t min_last = __reduce_min_sync(0xffffffffu, valid ? row_last : kNoUnit);
  const int32_t max_last = __reduce_max_sync(0xffffffffu, valid ? row_last : kNoLast);
  if (row % 32 == 0) {
    record.min_last[row / 32] = min_last;
    record.max_last[row / 32] = max_last;
  }
}

// Issues the copies of one tile of K or V (its rows' addresses `src`) into `dst`, one 16-byte
// chunk per thread and pass, zero-filled where the row does not exist (`fallback` is any valid
// address, never read).
template <typename Traits>
__device__ __forceinline__ void load_tile(const char* const* src, const char* fallback,
                                          unsigned char* dst) {
  const int chunk = threadIdx.x % Traits::kChunksPerRow;
  const uint32_t dst_addr = smem_addr(dst);
#pragma unroll
  for (int pass = 0; pass < Traits::kBlockN / Traits::kRowsPerPass; ++pass) {
    const int row = threadIdx.x / Traits::kChunksPerRow + pass * Traits::kRowsPerPass;
    const char* row_src = src[row];
    cp_async_16(dst_addr + swizzled<Traits::kRowBytes>(row, chunk),
                row_src != nullptr ? row_src + chunk * 16 : fallback,
                row_src != nullptr ? 16 : 0);
  }
}

template <typename Traits>
__global__ void __launch_bounds__(Traits::kThreads, Traits::kMinBlocks)
    attention_forward_kernel(const AttentionParams params, const int ctas_per_row) {
  using Element = typename Traits::Element;
  constexpr int kHeadDim = Traits::kHeadDim;
  constexpr int kBlockM = Traits::kBlockM;
  constexpr int kBlockN = Traits::kBlockN;
  constexpr int kMTiles = Traits::kMTiles;
  constexpr int kWriterWarps = Traits::kWriterWarps;
  constexpr int kRowBytes = Traits::kRowBytes;
  constexpr int kKSteps = kHeadDim / 16;  // k16 steps of S = Q K^T
  constexpr int kNTiles = kBlockN / 8;    // n8 column groups of S
  constexpr int kPSteps = kBlockN / 16;   // k16 steps of O += P V
  constexpr int kDTiles = kHeadDim / 8;   // n8 column groups of O
  static_assert(sizeof(Element) == 2, "16-bit elements: 8 per 16-byte chunk");

  extern __shared__ __align__(16) unsigned char smem[];
  unsigned char* q_smem = smem;
  unsigned char* k_smem = q_smem + Traits::kQBytes;
  unsigned char* v_smem = k_smem + Traits::kTileBytes;
  unsigned char* records = v_smem + Traits::kTileBytes;
  // The record of tile t lives in slot t % 2.
  const auto tile_record = [&](int tile) {
    return TileRecord::at<Traits>(records + (tile & 1) * Traits::kRecordBytes);
  };
  LevelViews& views = *reinterpret_cast<LevelViews*>(records + 2 * Traits::kRecordBytes);

  const int tid = threadIdx.x;
  const int lane = tid % 32, warp = tid / 32;
  // The plan row (batch, head, query block; block fastest) and, when ctas_per_row CTAs of kBlockM
  // query rows share a plan row of block_m = ctas_per_row * kBlockM, this CTA's part of it.
  const int64_t row_index = blockIdx.x / ctas_per_row;
  const int row_part = static_cast<int>(blockIdx.x % ctas_per_row);
  const int q_block = static_cast<int>(row_index % params.num_q_blocks);
  const int head = static_cast<int>((row_index / params.num_q_blocks) % params.heads_q);
  const int batch = static_cast<int>(row_index / (static_cast<int64_t>(params.num_q_blocks) *
                                                  params.heads_q));
  const int head_kv = head / (params.heads_q / params.heads_kv);
  const int q_first = (q_block * ctas_per_row + row_part) * kBlockM;
  const int q_last = min(q_first + kBlockM, params.seq_q) - 1;
  // Bottom-right causal alignment: query i sees key j iff j <= i + shift.
  const int causal_shift = params.seq_k - params.seq_q;
  if (q_first >= params.seq_q) return;  // the second half of a last plan row shorter than 64

  if (tid < kAttentionLevels) set_level_view(views, params, tid, batch, head_kv);
  if (tid == 0) row_layout(params, row_index, views.region_start, views.list_offset);
  __syncthreads();
  const int num_virtual = views.region_start[kAttentionLevels];
  const int num_tiles = (num_virtual + kBlockN - 1) / kBlockN;
  const int32_t* block_list = params.blocks + row_index * params.num_k_blocks;
  const bool writer = tid < kBlockN;  // resolves tile row tid of every tile

  // Uniform over the CTA: a tile with no existing column, or (causal) none visible to the last
  // query, is skipped.
  const auto tile_extremes = [&](const TileRecord& info, int32_t* min_last, int32_t* max_last) {
    *min_last = kNoUnit;
    *max_last = kNoLast;
#pragma unroll
    for (int w = 0; w < kWriterWarps; ++w) {
      *min_last = min(*min_last, info.min_last[w]);
      *max_last = max(*max_last, info.max_last[w]);
    }
    return *min_last == kNoUnit || (params.causal && *min_last > q_last + causal_shift);
  };

  // Accumulator fragments: for m16 tile m this thread holds rows g and g + 8 of the warp's rows
  // 16 m .. 16 m + 15, columns 8 j + 2 t4 + {0, 1} of every n8 group j.
  const int g = lane / 4, t4 = lane % 4;
  const int warp_row = warp * 16 * kMTiles;
  // This lane's ldmatrix rows and first chunk (swizzled_step adds the k16 step): Q rows
  // warp_row + lane % 16, chunk lane / 16; K rows lane % 8 + 8 (lane / 16), chunk (lane / 8) % 2;
  // V (transposed) rows lane % 8 + 8 ((lane / 8) % 2), chunk lane / 16.
  const uint32_t q_lane = smem_addr(q_smem) + warp_row * kRowBytes;
  const uint32_t k_lane = smem_addr(k_smem);
  const uint32_t v_lane = smem_addr(v_smem);
  const uint32_t q_offset = swizzled<kRowBytes>(lane % 16, lane / 16);
  const uint32_t k_offset = swizzled<kRowBytes>(lane % 8 + 8 * (lane / 16), (lane / 8) % 2);
  const uint32_t v_offset = swizzled<kRowBytes>(lane % 8 + 8 * ((lane / 8) % 2), lane / 16);
  float acc_o[kMTiles][kDTiles][4];
#pragma unroll
  for (int m = 0; m < kMTiles; ++m) {
#pragma unroll
    for (int j = 0; j < kDTiles; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) acc_o[m][j][e] = 0.0f;
    }
  }
  float row_max[kMTiles][2], row_sum[kMTiles][2];  // base-2 logits, quad-uniform; own columns
#pragma unroll
  for (int m = 0; m < kMTiles; ++m) {
    row_max[m][0] = row_max[m][1] = kNegInf;
    row_sum[m][0] = row_sum[m][1] = 0.0f;
  }
  // The smallest last constituent over the row's units: query i sees a unit iff it is
  // <= i + shift (causal), or != kNoUnit. The epilogue tells a row that sees nothing (O = 0) from
  // one whose logits were all -inf or NaN (O = NaN) by it, with no work per element.
  int32_t row_first_last = kNoUnit;

  if (num_tiles > 0) {
    // Q: (kBlockM, D), rows past Lq zero-filled; one group with K(0).
    {
      const int chunk = tid % Traits::kChunksPerRow;
      const char* q_base = static_cast<const char*>(params.q) +
                           (batch * params.q_batch_stride + head * params.q_head_stride) * 2;
#pragma unroll
      for (int pass = 0; pass < kBlockM / Traits::kRowsPerPass; ++pass) {
        const int row = tid / Traits::kChunksPerRow + pass * Traits::kRowsPerPass;
        const int q_row = q_first + row;
        const bool valid = q_row < params.seq_q;
        const char* src =
            valid ? q_base + static_cast<int64_t>(q_row) * params.q_row_stride * 2 + chunk * 16
                  : q_base;
        cp_async_16(smem_addr(q_smem + swizzled<kRowBytes>(row, chunk)), src, valid ? 16 : 0);
      }
    }
    // Tile 0's rows, then its K.
    if (writer) {
      int level = 0;
      const int slot = virtual_row_slot(views, tid, num_virtual, params.log2_block_n, &level);
      write_tile_row<Traits>(params, views, tid, level, slot < 0 ? -1 : __ldg(block_list + slot),
                             tid, tile_record(0));
    }
    __syncthreads();
    // Issues K(t) unless tile t is past the end or skipped.
    const auto load_k = [&](int t) {
      int32_t min_last, max_last;
      if (t < num_tiles && !tile_extremes(tile_record(t), &min_last, &max_last)) {
        load_tile<Traits>(tile_record(t).k_src, views.k_base[0], k_smem);
      }
    };
    load_k(0);
    cp_async_commit();

    for (int tile = 0; tile < num_tiles; ++tile) {
      const TileRecord info = tile_record(tile);
      // K(tile) (and Q) landed; every thread is done with V(tile - 1), whose buffer V(tile) takes.
      cp_async_wait<0>();
      __syncthreads();
      int32_t tile_min_last, tile_max_last;
      const bool skip = tile_extremes(info, &tile_min_last, &tile_max_last);
      row_first_last = min(row_first_last, tile_min_last);
      // The next tile's plan entries, loaded now and used after the softmax.
      const int next_r = (tile + 1) * kBlockN + tid;
      int next_level = 0, next_j = -1;
      if (writer && tile + 1 < num_tiles) {
        const int slot = virtual_row_slot(views, next_r, num_virtual, params.log2_block_n,
                                          &next_level);
        if (slot >= 0) next_j = __ldg(block_list + slot);
      }
      if (!skip) load_tile<Traits>(info.v_src, views.v_base[0], v_smem);
      cp_async_commit();

      // P of this tile as the A fragments of O += P V (16-bit pairs).
      uint32_t p_frag[kMTiles][kPSteps][4];
      if (!skip) {
        // S = Q K^T: per k16 step kk, Q of m16 tile m and K of n8 groups 2 np, 2 np + 1, each one
        // ldmatrix x4 (offsets below).
        float acc_s[kMTiles][kNTiles][4];
#pragma unroll
        for (int m = 0; m < kMTiles; ++m) {
#pragma unroll
          for (int j = 0; j < kNTiles; ++j) {
#pragma unroll
            for (int e = 0; e < 4; ++e) acc_s[m][j][e] = 0.0f;
          }
        }
#pragma unroll
        for (int kk = 0; kk < kKSteps; ++kk) {
          uint32_t q_frag[kMTiles][4];
#pragma unroll
          for (int m = 0; m < kMTiles; ++m) {
            ldmatrix_x4(q_frag[m], q_lane + swizzled_step(q_offset, kk) + 16 * m * kRowBytes);
          }
#pragma unroll
          for (int np = 0; np < kNTiles / 2; ++np) {
            uint32_t b[4];
            ldmatrix_x4(b, k_lane + swizzled_step(k_offset, kk) + 16 * np * kRowBytes);
#pragma unroll
            for (int m = 0; m < kMTiles; ++m) {
              mma_16816<Element>(acc_s[m][2 * np], q_frag[m], b[0], b[1]);
              mma_16816<Element>(acc_s[m][2 * np + 1], q_frag[m], b[2], b[3]);
            }
          }
        }

        // Base-2 logits with the column bias; the causal test only on tiles that cross the first
        // query's horizon.
#pragma unroll
        for (int j = 0; j < kNTiles; ++j) {
          const float2 col_bias = *reinterpret_cast<const float2*>(info.bias + 8 * j + 2 * t4);
#pragma unroll
          for (int m = 0; m < kMTiles; ++m) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
              acc_s[m][j][e] =
                  fmaf(acc_s[m][j][e], params.scale_log2, (e & 1) ? col_bias.y : col_bias.x);
            }
          }
        }
        if (params.causal && tile_max_last > q_first + causal_shift) {
#pragma unroll
          for (int j = 0; j < kNTiles; ++j) {
            const int2 col_last = *reinterpret_cast<const int2*>(info.last + 8 * j + 2 * t4);
#pragma unroll
            for (int m = 0; m < kMTiles; ++m) {
#pragma unroll
              for (int e = 0; e < 4; ++e) {
                const int query = q_first + warp_row + 16 * m + g + (e >= 2 ? 8 : 0);
                const int key_last = (e & 1) ? col_last.y : col_last.x;
                if (key_last > query + causal_shift) acc_s[m][j][e] = kNegInf;
              }
            }
          }
        }

        // Online softmax in base 2: running max, rescale O and the running sum, P = exp2(S - max).
#pragma unroll
        for (int m = 0; m < kMTiles; ++m) {
#pragma unroll
          for (int half = 0; half < 2; ++half) {
            float tile_max = kNegInf;
#pragma unroll
            for (int j = 0; j < kNTiles; ++j) {
              tile_max = fmaxf(tile_max, fmaxf(acc_s[m][j][2 * half], acc_s[m][j][2 * half + 1]));
            }
            const float new_max = fmaxf(row_max[m][half], quad_max(tile_max));
            const float base = new_max == kNegInf ? 0.0f : new_max;
            const float rescale = fast_exp2(row_max[m][half] - base);
            row_max[m][half] = new_max;
            float sum = 0.0f;
#pragma unroll
            for (int j = 0; j < kNTiles; ++j) {
#pragma unroll
              for (int e = 2 * half; e < 2 * half + 2; ++e) {
                acc_s[m][j][e] = fast_exp2(acc_s[m][j][e] - base);
                sum += acc_s[m][j][e];
              }
            }
            row_sum[m][half] = row_sum[m][half] * rescale + sum;
#pragma unroll
            for (int j = 0; j < kDTiles; ++j) {
              acc_o[m][j][2 * half] *= rescale;
              acc_o[m][j][2 * half + 1] *= rescale;
            }
          }
          // The S accumulators of n8 groups 2 kk, 2 kk + 1 are the A fragment of keys
          // [16 kk, 16 kk + 16).
#pragma unroll
          for (int kk = 0; kk < kPSteps; ++kk) {
            p_frag[m][kk][0] = pack_pair<Element>(acc_s[m][2 * kk][0], acc_s[m][2 * kk][1]);
            p_frag[m][kk][1] = pack_pair<Element>(acc_s[m][2 * kk][2], acc_s[m][2 * kk][3]);
            p_frag[m][kk][2] = pack_pair<Element>(acc_s[m][2 * kk + 1][0], acc_s[m][2 * kk + 1][1]);
            p_frag[m][kk][3] = pack_pair<Element>(acc_s[m][2 * kk + 1][2], acc_s[m][2 * kk + 1][3]);
          }
        }
      }

      // The next tile's rows, into the record of tile - 1 (last read before this tile's first
      // barrier).
      if (writer && tile + 1 < num_tiles) {
        write_tile_row<Traits>(params, views, next_r, next_level, next_j, tid,
                               tile_record(tile + 1));
      }
      // V(tile) landed; every thread is done with K(tile), whose buffer K(tile + 1) takes, and
      // the next tile's rows are visible.
      cp_async_wait<0>();
      __syncthreads();
      load_k(tile + 1);
      cp_async_commit();

      // O += P V: V of keys 16 kk .. 16 kk + 15, columns 16 dp .. 16 dp + 15 by one ldmatrix x4
      // trans.
      if (!skip) {
#pragma unroll
        for (int kk = 0; kk < kPSteps; ++kk) {
#pragma unroll
          for (int dp = 0; dp < kDTiles / 2; ++dp) {
            uint32_t b[4];
            ldmatrix_x4_trans(b, v_lane + swizzled_step(v_offset, dp) + 16 * kk * kRowBytes);
#pragma unroll
            for (int m = 0; m < kMTiles; ++m) {
              mma_16816<Element>(acc_o[m][2 * dp], p_frag[m][kk], b[0], b[1]);
              mma_16816<Element>(acc_o[m][2 * dp + 1], p_frag[m][kk], b[2], b[3]);
            }
          }
        }
      }
    }
  }

  // Epilogue, as the Hopper kernel's: O / l in the element type; LSE = ln2 * (max + log2 l). A row
  // that sees no unit gets O = 0 and LSE = -inf. A row that sees one has l >= 1 (its maximum
  // contributes exp2(0)) unless it met a non-finite logit: NaN, +inf (+inf - +inf is NaN) or every
  // logit -inf (l = 0). Its O and LSE are then NaN, as dense attention's are.
  char* out_base = static_cast<char*>(params.out) +
                   (batch * params.out_batch_stride + head * params.out_head_stride) * 2;
#pragma unroll
  for (int m = 0; m < kMTiles; ++m) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const float sum = quad_sum(row_sum[m][half]);
      const int query = q_first + warp_row + 16 * m + g + half * 8;
      if (query >= params.seq_q) continue;
      const bool sees_a_unit = params.causal ? row_first_last <= query + causal_shift
                                             : row_first_last != kNoUnit;
      const bool finite = sum > 0.0f;  // false for NaN
      const float inv = sees_a_unit ? (finite ? 1.0f / sum : kNaN) : 0.0f;
      uint32_t* row_ptr = reinterpret_cast<uint32_t*>(
          out_base + static_cast<int64_t>(query) * params.out_row_stride * 2);
#pragma unroll
      for (int j = 0; j < kDTiles; ++j) {
        // An empty row's accumulators are 0 unless v holds a non-finite value (0 * inf): write 0
        // rather than acc * 0.
        const float lo = sees_a_unit ? acc_o[m][j][2 * half] * inv : 0.0f;
        const float hi = sees_a_unit ? acc_o[m][j][2 * half + 1] * inv : 0.0f;
        row_ptr[j * 4 + t4] = pack_pair<Element>(lo, hi);
      }
      if (params.lse != nullptr && t4 == 0) {
        params.lse[batch * params.lse_batch_stride + head * params.lse_head_stride +
                   query * params.lse_row_stride] =
            !sees_a_unit ? kNegInf : finite ? (row_max[m][half] + __log2f(sum)) * kLn2 : kNaN;
      }
    }
  }
}

}  // namespace psa::cuda::portable
