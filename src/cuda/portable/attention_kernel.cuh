// The portable pyramid sparse attention forward (SPEC.md sections 2, 3, 6) for compute capability
// 8.0 and newer: FlashAttention-2 style with mma.sync m16n8k16, ldmatrix and a cp.async ring.
//
// One CTA per plan row (batch, query head, query block), kBlockM / 16 warps, each owning 16 query
// rows whose Q fragments stay in registers for the whole row. The row's kept key blocks form the
// virtual key sequence of docs/design.md (level-1 blocks, then levels 2, 4, 8); the CTA walks it in
// tiles of kBlockN rows, each row gathered by its own address (level, block from the plan, pooled
// row) with 16-byte cp.async into a kStages-deep ring, zero-filled where the row does not exist.
// Per column the loader publishes the bias log2(c_p) (-inf for a missing row) and the last real
// constituent; S = Q K^T, the base-2 online softmax with that bias and, on tiles that cross a
// query's causal horizon, the per-element test, then O += P V with P from the S accumulators.
// Tiles none of the block's queries can see (all columns past the last query's horizon, or no
// column that exists) are loaded but not computed.
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

// kStages tiles of K and V in flight; Q is staged through the last stage's buffer before the
// pipeline reaches it (it lives in registers from then on), so shared memory is the ring alone:
// D = 128, kBlockN 64, 3 stages = 96 KiB, within the 99 KiB a CTA gets on compute capability
// 8.6 / 8.9.
template <typename Element_, int kHeadDim_, int kBlockM_, int kBlockN_, int kStages_,
          int kMinBlocks_>
struct AttentionTraits {
  using Element = Element_;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kBlockM = kBlockM_;
  static constexpr int kBlockN = kBlockN_;
  static constexpr int kStages = kStages_;
  static constexpr int kMinBlocks = kMinBlocks_;  // CTAs per SM the register budget allows
  static constexpr int kWarps = kBlockM / 16;       // 16 query rows per warp
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kRowBytes = kHeadDim * 2;
  static constexpr int kChunksPerRow = kHeadDim / 8;            // 16-byte chunks per row
  static constexpr int kRowsPerPass = kThreads / kChunksPerRow;  // rows the CTA copies at once
  static constexpr int kTileBytes = kBlockN * kRowBytes;         // K (or V) of one stage
  static constexpr int kStageBytes = 2 * kTileBytes;
  static constexpr int kQBytes = kBlockM * kRowBytes;
  // Per stage: the column bias and last constituent (kBlockN each), the smallest and largest
  // last constituent of each warp's rows (kWarps each); the row's level views.
  static constexpr int kSmemBytes = kStages * kStageBytes + kStages * kBlockN * 8 +
                                    kStages * kWarps * 8 + static_cast<int>(sizeof(LevelViews));

  static_assert(kHeadDim == 64 || kHeadDim == 128, "head dims 64 and 128 are instantiated");
  static_assert(kBlockM == 64 || kBlockM == 128, "one CTA per plan row: block_m 64 or 128");
  static_assert(kBlockN % 16 == 0, "S = Q K^T is whole pairs of n8 tiles, P V whole k16 steps");
  static_assert(kStages >= 2, "a tile loads while the previous one is computed");
  static_assert(kBlockN % kRowsPerPass == 0 && kBlockM % kRowsPerPass == 0,
                "the copies cover a tile and Q in whole passes of the CTA");
  static_assert(kQBytes <= kStageBytes, "Q is staged through one stage of the ring");
  static_assert(kSmemBytes <= 99 * 1024, "fits a CTA on every compute capability 8.x");
};

// The smallest last constituent of a set of columns that holds no existing column, and the
// largest.
constexpr int32_t kNoUnit = 0x7fffffff;
constexpr int32_t kNoLast = -0x7fffffff - 1;

// Gathers tile `tile` of the virtual key sequence into `stage`: rows row0 + i * kRowsPerPass, one
// 16-byte chunk of K and of V each per thread, zero-filled where the row does not exist. Lanes of
// chunk 0 publish the row's bias and last constituent; each warp the extremes of its rows' last
// constituents (kNoUnit / kNoLast for a warp without an existing row).
template <typename Traits>
__device__ __forceinline__ void load_tile(const AttentionParams& params,
                                          const LevelViews& views,
                                          const int32_t* block_list, int num_virtual, int tile,
                                          unsigned char* stage_base, float* bias, int32_t* last,
                                          int32_t* warp_min_last, int32_t* warp_max_last) {
  constexpr int kBlockN = Traits::kBlockN;
  const int chunk = threadIdx.x % Traits::kChunksPerRow;
  const int row0 = threadIdx.x / Traits::kChunksPerRow;
  const uint32_t k_dst = smem_addr(stage_base);
  const uint32_t v_dst = k_dst + Traits::kTileBytes;
  int32_t min_last = kNoUnit, max_last = kNoLast;
#pragma unroll
  for (int pass = 0; pass < kBlockN / Traits::kRowsPerPass; ++pass) {
    const int row = row0 + pass * Traits::kRowsPerPass;
    int level = 0;
    int64_t p = 0;
    const bool valid = virtual_row_token(views, block_list, tile * kBlockN + row, num_virtual,
                                         params.log2_block_n, params.num_k_blocks, &level, &p);
    const uint32_t offset = swizzled<Traits::kRowBytes>(row, chunk);
    const char* k_src = views.k_base[0];
    const char* v_src = views.v_base[0];
    int32_t row_last = 0;
    if (valid) {
      k_src = views.k_base[level] + p * views.k_row_bytes[level] + chunk * 16;
      v_src = views.v_base[level] + p * views.v_row_bytes[level] + chunk * 16;
      row_last =
          static_cast<int32_t>(psa::detail::pooled_last_token(params.seq_k, 1 << level, p));
      min_last = min(min_last, row_last);
      max_last = max(max_last, row_last);
    }
    cp_async_16(k_dst + offset, k_src, valid ? 16 : 0);
    cp_async_16(v_dst + offset, v_src, valid ? 16 : 0);
    if (chunk == 0) {
      // log2(c_p): the level itself for a full group (log2f of a power of two is exact), log2f
      // only for the ragged last pooled token.
      const int64_t count = psa::detail::pooled_count(params.seq_k, 1 << level, p);
      bias[row] = !valid                 ? kNegInf
                  : count == (1 << level) ? static_cast<float>(level)
                                          : log2f(static_cast<float>(count));
      last[row] = row_last;
    }
  }
  min_last = __reduce_min_sync(0xffffffffu, min_last);
  max_last = __reduce_max_sync(0xffffffffu, max_last);
  if (threadIdx.x % 32 == 0) {
    warp_min_last[threadIdx.x / 32] = min_last;
    warp_max_last[threadIdx.x / 32] = max_last;
  }
}

template <typename Traits>
__global__ void __launch_bounds__(Traits::kThreads, Traits::kMinBlocks)
    attention_forward_kernel(const AttentionParams params) {
  using Element = typename Traits::Element;
  constexpr int kHeadDim = Traits::kHeadDim;
  constexpr int kBlockM = Traits::kBlockM;
  constexpr int kBlockN = Traits::kBlockN;
  constexpr int kStages = Traits::kStages;
  constexpr int kWarps = Traits::kWarps;
  constexpr int kRowBytes = Traits::kRowBytes;
  constexpr int kKSteps = kHeadDim / 16;  // k16 steps of S = Q K^T
  constexpr int kNTiles = kBlockN / 8;    // n8 column groups of S
  constexpr int kDTiles = kHeadDim / 8;   // n8 column groups of O
  static_assert(sizeof(Element) == 2, "16-bit elements: 8 per 16-byte chunk");

  extern __shared__ __align__(16) unsigned char smem[];
  unsigned char* ring = smem;  // kStages x (K tile, V tile)
  float* bias_smem = reinterpret_cast<float*>(ring + kStages * Traits::kStageBytes);
  int32_t* last_smem = reinterpret_cast<int32_t*>(bias_smem + kStages * kBlockN);
  int32_t* min_last_smem = last_smem + kStages * kBlockN;  // (kStages, kWarps)
  int32_t* max_last_smem = min_last_smem + kStages * kWarps;
  LevelViews& views = *reinterpret_cast<LevelViews*>(max_last_smem + kStages * kWarps);
  // Q goes through the last stage, which the pipeline first fills at tile kStages - 1.
  unsigned char* q_smem = ring + (kStages - 1) * Traits::kStageBytes;

  const int tid = threadIdx.x;
  const int lane = tid % 32, warp = tid / 32;
  const int64_t row_index = blockIdx.x;  // the plan row: (batch, head, query block), block fastest
  const int q_block = static_cast<int>(row_index % params.num_q_blocks);
  const int head = static_cast<int>((row_index / params.num_q_blocks) % params.heads_q);
  const int batch = static_cast<int>(row_index / (static_cast<int64_t>(params.num_q_blocks) *
                                                  params.heads_q));
  const int head_kv = head / (params.heads_q / params.heads_kv);
  const int q_first = q_block * kBlockM;
  const int q_last = min(q_first + kBlockM, params.seq_q) - 1;
  // Bottom-right causal alignment: query i sees key j iff j <= i + shift.
  const int causal_shift = params.seq_k - params.seq_q;

  if (tid < kAttentionLevels) {
    const int l = tid;
    views.k_base[l] = static_cast<const char*>(params.k[l]) +
                      (batch * params.k_batch_stride[l] + head_kv * params.k_head_stride[l]) * 2;
    views.v_base[l] = static_cast<const char*>(params.v[l]) +
                      (batch * params.v_batch_stride[l] + head_kv * params.v_head_stride[l]) * 2;
    views.k_row_bytes[l] = params.k_row_stride[l] * 2;
    views.v_row_bytes[l] = params.v_row_stride[l] * 2;
    views.level_length[l] = static_cast<int32_t>(psa::detail::pooled_length(params.seq_k, 1 << l));
  }
  if (tid == 0) row_layout(params, row_index, views.region_start, views.list_offset);
  __syncthreads();
  const int num_virtual = views.region_start[kAttentionLevels];
  const int num_tiles = (num_virtual + kBlockN - 1) / kBlockN;
  const int32_t* block_list = params.blocks + row_index * params.num_k_blocks;

  // Accumulator fragments: this thread holds rows g and g + 8 of its warp's 16, columns
  // 8 j + 2 t4 + {0, 1} of every n8 group j.
  const int g = lane / 4, t4 = lane % 4;
  const int warp_row = warp * 16;
  float acc_o[kDTiles][4];
#pragma unroll
  for (int j = 0; j < kDTiles; ++j) {
#pragma unroll
    for (int e = 0; e < 4; ++e) acc_o[j][e] = 0.0f;
  }
  float row_max[2] = {kNegInf, kNegInf};  // base-2 logits, quad-uniform
  float row_sum[2] = {0.0f, 0.0f};        // this thread's columns only
  // The smallest last constituent over the row's units: query i sees a unit iff it is
  // <= i + shift (causal), or != kNoUnit. The epilogue tells a row that sees nothing (O = 0) from
  // one whose logits were all -inf or NaN (O = NaN) by it, with no work per element.
  int32_t row_first_last = kNoUnit;

  if (num_tiles > 0) {
    // Q: (kBlockM, D), rows past Lq zero-filled; its group completes before the first tile's.
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
      cp_async_commit();
    }
    // The first kStages - 1 tiles; one group each, empty past the end, so the counts below hold.
#pragma unroll
    for (int s = 0; s < kStages - 1; ++s) {
      if (s < num_tiles) {
        load_tile<Traits>(params, views, block_list, num_virtual, s, ring + s * Traits::kStageBytes,
                          bias_smem + s * kBlockN, last_smem + s * kBlockN,
                          min_last_smem + s * kWarps, max_last_smem + s * kWarps);
      }
      cp_async_commit();
    }
    cp_async_wait<kStages - 1>();
    __syncthreads();

    // Q fragments (A operand) for every k16 step: ldmatrix x4 of rows warp_row + lane % 16,
    // columns 16 kk + 8 (lane / 16).
    uint32_t q_frag[kKSteps][4];
#pragma unroll
    for (int kk = 0; kk < kKSteps; ++kk) {
      ldmatrix_x4(q_frag[kk], smem_addr(q_smem + swizzled<kRowBytes>(warp_row + lane % 16,
                                                                     2 * kk + lane / 16)));
    }

    for (int tile = 0; tile < num_tiles; ++tile) {
      const int stage = tile % kStages;
      // Tile `tile` has landed (kStages - 2 younger groups may be in flight); after the barrier
      // every thread's copies are visible and every thread is done with tile - 1 (and with Q),
      // whose stage the next copies overwrite.
      cp_async_wait<kStages - 2>();
      __syncthreads();
      // Tile + kStages - 1 into the stage of tile - 1, issued after this tile's S = Q K^T so that
      // the wait for the plan entries its gather addresses need overlaps the tensor-core work.
      auto load_next = [&] {
        const int next = tile + kStages - 1;
        const int next_stage = next % kStages;
        if (next < num_tiles) {
          load_tile<Traits>(params, views, block_list, num_virtual, next,
                            ring + next_stage * Traits::kStageBytes,
                            bias_smem + next_stage * kBlockN, last_smem + next_stage * kBlockN,
                            min_last_smem + next_stage * kWarps,
                            max_last_smem + next_stage * kWarps);
        }
        cp_async_commit();
      };

      int32_t tile_min_last = kNoUnit, tile_max_last = kNoLast;
#pragma unroll
      for (int w = 0; w < kWarps; ++w) {
        tile_min_last = min(tile_min_last, min_last_smem[stage * kWarps + w]);
        tile_max_last = max(tile_max_last, max_last_smem[stage * kWarps + w]);
      }
      row_first_last = min(row_first_last, tile_min_last);
      // Uniform over the CTA: no column exists, or (causal) none is visible to the last query.
      if (tile_min_last == kNoUnit || (params.causal && tile_min_last > q_last + causal_shift)) {
        load_next();
        continue;
      }
      const unsigned char* k_tile = ring + stage * Traits::kStageBytes;
      const unsigned char* v_tile = k_tile + Traits::kTileBytes;
      const float* bias = bias_smem + stage * kBlockN;
      const int32_t* last = last_smem + stage * kBlockN;

      // S = Q K^T: per k16 step and pair of n8 groups, one ldmatrix x4 of K rows
      // 16 np + lane % 8 + 8 (lane / 16), columns 16 kk + 8 ((lane / 8) % 2).
      float acc_s[kNTiles][4];
#pragma unroll
      for (int j = 0; j < kNTiles; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) acc_s[j][e] = 0.0f;
      }
#pragma unroll
      for (int kk = 0; kk < kKSteps; ++kk) {
#pragma unroll
        for (int np = 0; np < kNTiles / 2; ++np) {
          uint32_t b[4];
          ldmatrix_x4(b, smem_addr(k_tile + swizzled<kRowBytes>(16 * np + lane % 8 + 8 * (lane / 16),
                                                                2 * kk + (lane / 8) % 2)));
          mma_16816<Element>(acc_s[2 * np], q_frag[kk], b[0], b[1]);
          mma_16816<Element>(acc_s[2 * np + 1], q_frag[kk], b[2], b[3]);
        }
      }
      load_next();

      // Base-2 logits with the column bias; the causal test only on tiles that cross the first
      // query's horizon.
#pragma unroll
      for (int j = 0; j < kNTiles; ++j) {
        const float2 col_bias = *reinterpret_cast<const float2*>(bias + 8 * j + 2 * t4);
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          acc_s[j][e] = fmaf(acc_s[j][e], params.scale_log2, (e & 1) ? col_bias.y : col_bias.x);
        }
      }
      if (params.causal && tile_max_last > q_first + causal_shift) {
#pragma unroll
        for (int j = 0; j < kNTiles; ++j) {
          const int2 col_last = *reinterpret_cast<const int2*>(last + 8 * j + 2 * t4);
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int query = q_first + warp_row + g + (e >= 2 ? 8 : 0);
            const int key_last = (e & 1) ? col_last.y : col_last.x;
            if (key_last > query + causal_shift) acc_s[j][e] = kNegInf;
          }
        }
      }

      // Online softmax in base 2: running max, rescale O and the running sum, P = exp2(S - max).
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        float tile_max = kNegInf;
#pragma unroll
        for (int j = 0; j < kNTiles; ++j) {
          tile_max = fmaxf(tile_max, fmaxf(acc_s[j][2 * half], acc_s[j][2 * half + 1]));
        }
        const float new_max = fmaxf(row_max[half], quad_max(tile_max));
        const float base = new_max == kNegInf ? 0.0f : new_max;
        const float rescale = fast_exp2(row_max[half] - base);
        row_max[half] = new_max;
        float sum = 0.0f;
#pragma unroll
        for (int j = 0; j < kNTiles; ++j) {
#pragma unroll
          for (int e = 2 * half; e < 2 * half + 2; ++e) {
            acc_s[j][e] = fast_exp2(acc_s[j][e] - base);
            sum += acc_s[j][e];
          }
        }
        row_sum[half] = row_sum[half] * rescale + sum;
#pragma unroll
        for (int j = 0; j < kDTiles; ++j) {
          acc_o[j][2 * half] *= rescale;
          acc_o[j][2 * half + 1] *= rescale;
        }
      }

      // O += P V: the S accumulators of n8 groups 2 kk, 2 kk + 1 are the A fragment of keys
      // [16 kk, 16 kk + 16); V by ldmatrix x4 trans of rows 16 kk + lane % 8 + 8 ((lane / 8) % 2),
      // columns 16 dp + 8 (lane / 16).
#pragma unroll
      for (int kk = 0; kk < kBlockN / 16; ++kk) {
        const uint32_t p_frag[4] = {pack_pair<Element>(acc_s[2 * kk][0], acc_s[2 * kk][1]),
                                    pack_pair<Element>(acc_s[2 * kk][2], acc_s[2 * kk][3]),
                                    pack_pair<Element>(acc_s[2 * kk + 1][0], acc_s[2 * kk + 1][1]),
                                    pack_pair<Element>(acc_s[2 * kk + 1][2], acc_s[2 * kk + 1][3])};
#pragma unroll
        for (int dp = 0; dp < kDTiles / 2; ++dp) {
          uint32_t b[4];
          ldmatrix_x4_trans(b, smem_addr(v_tile + swizzled<kRowBytes>(
                                                      16 * kk + lane % 8 + 8 * ((lane / 8) % 2),
                                                      2 * dp + lane / 16)));
          mma_16816<Element>(acc_o[2 * dp], p_frag, b[0], b[1]);
          mma_16816<Element>(acc_o[2 * dp + 1], p_frag, b[2], b[3]);
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
  for (int half = 0; half < 2; ++half) {
    const float sum = quad_sum(row_sum[half]);
    const int query = q_first + warp_row + g + half * 8;
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
      const float lo = sees_a_unit ? acc_o[j][2 * half] * inv : 0.0f;
      const float hi = sees_a_unit ? acc_o[j][2 * half + 1] * inv : 0.0f;
      row_ptr[j * 4 + t4] = pack_pair<Element>(lo, hi);
    }
    if (params.lse != nullptr && t4 == 0) {
      params.lse[batch * params.lse_batch_stride + head * params.lse_head_stride +
                 query * params.lse_row_stride] =
          !sees_a_unit ? kNegInf : finite ? (row_max[half] + __log2f(sum)) * kLn2 : kNaN;
    }
  }
}

}  // namespace psa::cuda::portable
