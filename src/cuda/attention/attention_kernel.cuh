// The pyramid sparse attention forward kernel (SPEC.md sections 2, 3, 6) for Hopper: device code.
//
// A CTA computes (batch, query head, query block) rows of the plan. A row's kept key blocks
// define a *virtual key sequence* (docs/design.md): the level-1 blocks (block_n keys each), then
// the level-2 blocks (block_n/2 pooled keys each), then levels 4 and 8. Virtual row r of the
// region of level f starts at R_f; seg = (r - R_f) / (block_n/f) picks the block J of the row's
// list and off = (r - R_f) % (block_n/f) the pooled token p = J*block_n/f + off inside it. The
// kernel walks that sequence in tiles of kBlockN rows, gathering each row with its own address
// (cp.async, zero-fill for rows that do not exist; TMA cannot gather rows), so any number of
// pooled blocks of any level share one tensor-core tile exactly and pooled work costs in
// proportion to its tokens. Every column carries a bias: log2(c_p) for a pooled token standing for
// c_p keys, -inf for a row that does not exist; under causal attention a column is visible to
// query i iff its last constituent is <= i + (Lk - Lq).
//
// Math: FlashAttention-style online softmax in base 2. Each consumer warpgroup (4 warps) owns 64
// query rows and issues S = Q K^T as wgmma m64 n kBlockN k16 from shared memory (SS) and
// O += P V as wgmma m64 n64 k16 with P from registers (RS), fp32 accumulators. Shared-memory
// tiles use the 128-byte swizzle of wgmma descriptors: 8-row x 128-byte atoms, 16-byte chunk c of
// row r at chunk c ^ (r % 8), 64-element column blocks stored one after the other.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "common/index_math.h"
#include "cuda/attention/attention_device.cuh"
#include "cuda/attention/attention_params.h"

namespace psa::cuda {

// A persistent CTA walks plan rows blockIdx.x, blockIdx.x + gridDim.x, ...: kNumConsumers
// warpgroups (64 query rows each, kBlockM = the plan's block_m) compute, and one producer
// warpgroup gathers Q and the K/V tiles of row after row into a kStages-deep ring of shared memory,
// synchronised by mbarriers (full: tile landed; empty: tile consumed; q_empty: Q buffer free), so
// that loads, S = Q K^T, the softmax and O += P V overlap without CTA-wide barriers, also across
// rows (the next row's Q and first tiles load during the current row's last tiles and epilogue).
//   kBlockN: virtual key rows per tile (the N of S = Q K^T, 64 or 128).
//   kStages: tiles in flight. D = 128, block_m 128: 2 x Q 32 KiB + 2 x (K 32 + V 32) KiB.
template <typename Element_, int kHeadDim_, int kBlockM_, int kBlockN_, int kStages_>
struct AttentionTraits {
  using Element = Element_;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kBlockM = kBlockM_;
  static constexpr int kBlockN = kBlockN_;
  static constexpr int kStages = kStages_;
  static constexpr int kNumConsumers = kBlockM / 64;
  static constexpr int kNumConsumerThreads = kNumConsumers * 128;
  // + the producer warpgroup: 4 warps, each gathering a quarter of every tile, so that enough
  // copies are in flight (one producer warp measured 0.8x of the all-threads loader).
  static constexpr int kNumProducerWarps = 4;
  static constexpr int kNumThreads = kNumConsumerThreads + 32 * kNumProducerWarps;
  static constexpr int kRowsPerProducerWarp = kBlockN / kNumProducerWarps;
  // Registers per thread after setmaxnreg (attention_device.cuh): the producer gives back, the
  // consumers (S, O and P fragments: 64 + 64 + 32 for D = 128) take the rest.
  static constexpr int kProducerRegisters = 72;
  static constexpr int kConsumerRegisters = 216;
  static constexpr int kChunksPerRow = kHeadDim / 8;       // 16-byte chunks per row of D elements
  static constexpr int kRowsPerPass = 32 / kChunksPerRow;  // rows one producer warp copies at once
  static constexpr int kColumnBlocks = kHeadDim / 64;      // 128-byte (64-element) swizzle columns

  static constexpr int kQBytes = kBlockM * kHeadDim * 2;
  static constexpr int kKvBytes = kBlockN * kHeadDim * 2;
  // Swizzle atoms must start 1024-byte aligned: the base is rounded up inside the kernel.
  static constexpr int kAlign = 1024;
  // Q is double-buffered: the producer loads the next row's Q while the consumers finish a row.
  static constexpr int kQBuffers = 2;
  // Tiles, then per stage: column bias and last token (kBlockN each), the tile flags, common bias
  // and earliest last token (one each per producer warp) and two mbarriers; the Q-buffer
  // mbarriers; the producer's row addresses (kBlockN x 2 pointers) and one row info per producer
  // warp.
  static constexpr int kSmemBytes = kAlign + kQBuffers * kQBytes + 2 * kStages * kKvBytes +
                                    kStages * kBlockN * 8 + kStages * 48 + kStages * 16 +
                                    kQBuffers * 8 + kBlockN * 16 +
                                    kNumProducerWarps * static_cast<int>(sizeof(AttentionRowInfo));

  static_assert(kHeadDim == 64 || kHeadDim == 128, "head dims 64 and 128 are instantiated");
  static_assert(kBlockM == 64 || kBlockM == 128, "one CTA per plan row: block_m 64 or 128");
  static_assert(kBlockN == 64 || kBlockN == 128, "wgmma n of S = Q K^T");
  static_assert(kRowsPerProducerWarp <= 32 && kRowsPerProducerWarp % kRowsPerPass == 0 &&
                    (kBlockM / kNumProducerWarps) % kRowsPerPass == 0,
                "a producer warp covers its rows with one metadata pass and whole copy passes");
  static_assert(kQBytes % kAlign == 0 && kKvBytes % kAlign == 0,
                "every tile starts on a swizzle-atom boundary");
  static_assert(kSmemBytes <= 227 * 1024, "fits the 227 KiB of shared memory of an sm_90 CTA");
};

// The earliest last constituent of a tile's (or a row's) units when it has none.
constexpr int32_t kNoUnit = 0x7fffffff;

template <typename Traits>
__global__ void __launch_bounds__(Traits::kNumThreads, 1)
    attention_forward_kernel(const AttentionParams params) {
  using namespace detail_attention;
  using Element = typename Traits::Element;
  constexpr int kHeadDim = Traits::kHeadDim;
  constexpr int kBlockM = Traits::kBlockM;
  constexpr int kBlockN = Traits::kBlockN;
  constexpr int kStages = Traits::kStages;
  constexpr int kChunksPerRow = Traits::kChunksPerRow;
  constexpr int kNTiles = kBlockN / 8;  // n8 column groups of S per thread
  constexpr int kSRegs = kBlockN / 2;   // S accumulator registers per thread (64 x kBlockN / 128)
  static_assert(sizeof(Element) == 2, "16-bit elements: 8 per 16-byte chunk");

  extern __shared__ unsigned char smem_raw[];
  // Round the base up to a swizzle-atom boundary (kSmemBytes reserves the slack).
  const uint32_t raw_address = smem_addr(smem_raw);
  unsigned char* smem =
      smem_raw + ((Traits::kAlign - (raw_address % Traits::kAlign)) % Traits::kAlign);
  unsigned char* q_smem = smem;  // kQBuffers x (kBlockM, D)
  unsigned char* k_smem = q_smem + Traits::kQBuffers * Traits::kQBytes;
  unsigned char* v_smem = k_smem + kStages * Traits::kKvBytes;
  float* bias_smem = reinterpret_cast<float*>(v_smem + kStages * Traits::kKvBytes);
  int32_t* last_smem = reinterpret_cast<int32_t*>(bias_smem + kStages * kBlockN);
  int32_t* mask_smem = last_smem + kStages * kBlockN;
  float* common_bias_smem = reinterpret_cast<float*>(mask_smem + 4 * kStages);
  // Per stage and producer warp: the smallest last constituent over the warp's existing rows.
  int32_t* first_last_smem = reinterpret_cast<int32_t*>(common_bias_smem + 4 * kStages);
  uint64_t* full_bar = reinterpret_cast<uint64_t*>(first_last_smem + 4 * kStages);  // 8-aligned
  uint64_t* empty_bar = full_bar + kStages;
  uint64_t* q_empty_bar = empty_bar + kStages;
  const char** row_src =
      reinterpret_cast<const char**>(q_empty_bar + Traits::kQBuffers);  // (2, kBlockN)
  AttentionRowInfo* producer_info = reinterpret_cast<AttentionRowInfo*>(row_src + 2 * kBlockN);

  const int tid = threadIdx.x;
  const int lane = tid % 32;
  const int num_rows = params.batch * params.heads_q * params.num_q_blocks;
  // Bottom-right causal alignment: query i sees key j iff j <= i + shift.
  const int causal_shift = params.seq_k - params.seq_q;

  if (tid == 0) {
    for (int s = 0; s < kStages; ++s) {
      // full: a plain arrival per producer thread (metadata written) + one on copy completion.
      mbarrier_init(smem_addr(&full_bar[s]), 2 * 32 * Traits::kNumProducerWarps);
      // empty: one arrival per consumer thread once its reads of the stage are complete. Every
      // reading thread releases its own reads (a warp-level arrival after __syncwarp is also
      // correct, but compute-sanitizer's racecheck does not follow that ordering and reports
      // write-after-read hazards on the stage metadata).
      mbarrier_init(smem_addr(&empty_bar[s]), Traits::kNumConsumerThreads);
    }
    for (int b = 0; b < Traits::kQBuffers; ++b) {
      // q_empty: one arrival per consumer thread once its last S = Q K^T of the row is complete.
      mbarrier_init(smem_addr(&q_empty_bar[b]), Traits::kNumConsumerThreads);
    }
  }
  __syncthreads();

  if (tid >= Traits::kNumConsumerThreads) {
    // ================= Producer warpgroup: per row, Q, then the virtual K/V tiles. ============
    // Warp w owns rows [w, w + 1) * kRowsPerProducerWarp of every tile and of Q's quarter.
    release_registers<Traits::kProducerRegisters>();
    const int producer_warp = (tid - Traits::kNumConsumerThreads) / 32;
    AttentionRowInfo& info = producer_info[producer_warp];
    const int copy_chunk = lane % kChunksPerRow;
    const int copy_row0 = lane / kChunksPerRow;
    int tile_count = 0;  // tiles produced by this CTA so far: the ring position
    int q_count = 0;     // Q buffers filled so far
    for (int row_index = blockIdx.x; row_index < num_rows; row_index += gridDim.x) {
      const int q_block = row_index % params.num_q_blocks;
      const int head = (row_index / params.num_q_blocks) % params.heads_q;
      const int batch = row_index / (params.num_q_blocks * params.heads_q);
      const int head_kv = head / (params.heads_q / params.heads_kv);
      const int64_t plan_row = row_index;
      const int q_first = q_block * kBlockM;
      __syncwarp();  // every lane is done with the previous row's `info`
      if (lane < kAttentionLevels) set_level_view(info, params, lane, batch, head_kv);
      if (lane == 0) row_layout(params, plan_row, info.region_start, info.list_offset);
      __syncwarp();
      const int num_virtual = info.region_start[kAttentionLevels];
      const int num_tiles = (num_virtual + kBlockN - 1) / kBlockN;
      if (num_tiles == 0) continue;
      const int32_t* block_list = params.blocks + plan_row * params.num_k_blocks;
      // Q of this row; its copies complete with the row's first tile (same full barrier).
      const int q_buffer = q_count % Traits::kQBuffers;
      if (q_count >= Traits::kQBuffers) {
        mbarrier_wait(smem_addr(&q_empty_bar[q_buffer]), ((q_count / Traits::kQBuffers) + 1) & 1);
      }
      ++q_count;
      {
        constexpr int kQRows = kBlockM / Traits::kNumProducerWarps;
        const char* q_base = static_cast<const char*>(params.q) +
                             (batch * params.q_batch_stride + head * params.q_head_stride) * 2;
        const uint32_t q_dst = smem_addr(q_smem + q_buffer * Traits::kQBytes);
#pragma unroll
        for (int i = 0; i < kQRows / Traits::kRowsPerPass; ++i) {
          const int row = producer_warp * kQRows + copy_row0 + i * Traits::kRowsPerPass;
          const int q_row = q_first + row;
          const bool valid = q_row < params.seq_q;
          const char* src =
              valid ? q_base + q_row * params.q_row_stride * 2 + copy_chunk * 16 : q_base;
          cp_async_16(q_dst + swizzled_128b<kBlockM>(row, copy_chunk), src, valid ? 16 : 0);
        }
      }
      constexpr int kWarpRows = Traits::kRowsPerProducerWarp;
      const int warp_row0 = producer_warp * kWarpRows;
      for (int tile = 0; tile < num_tiles; ++tile, ++tile_count) {
        const int stage = tile_count % kStages;
        // Row metadata: lane l < kWarpRows handles row warp_row0 + l (its block index, source
        // rows, bias, last constituent). Computed before waiting for the stage, so that the block
        // index load overlaps the consumers' work.
        bool needs_mask = false;
        bool row_exists = false;
        float bias = kNegInf;
        int32_t last = 0;
        const int row = warp_row0 + lane;
        if (lane < kWarpRows) {
          int level = 0;
          int64_t p = 0;
          const bool valid =
              virtual_row_token(info, block_list, tile * kBlockN + row, num_virtual,
                                params.log2_block_n, params.num_k_blocks, &level, &p);
          const char* k_src = nullptr;
          const char* v_src = nullptr;
          if (valid) {
            k_src = info.k_base[level] + p * info.k_row_bytes[level];
            v_src = info.v_base[level] + p * info.v_row_bytes[level];
            const int64_t last_token = psa::detail::pooled_last_token(params.seq_k, 1 << level, p);
            const int64_t count = psa::detail::pooled_count(params.seq_k, 1 << level, p);
            bias = log2f(static_cast<float>(count));
            last = static_cast<int32_t>(last_token);
            needs_mask = last_token > q_first + causal_shift;
            row_exists = true;
          }
          row_src[row] = k_src;
          row_src[kBlockN + row] = v_src;
        }
        needs_mask = __any_sync(0xffffffffu, needs_mask) && params.causal;
        // One bias for every row of this warp (all rows exist, same c_p): the consumers can add
        // it per row instead of per column.
        const float warp_bias = __shfl_sync(0xffffffffu, bias, 0);
        const bool per_column_bias =
            !__all_sync(0xffffffffu, lane >= kWarpRows || (row_exists && bias == warp_bias));
        // The query rows that see a unit of these rows are those with i + shift >= first_last.
        const int32_t first_last = __reduce_min_sync(0xffffffffu, row_exists ? last : kNoUnit);
        if (tile_count >= kStages) {
          mbarrier_wait(smem_addr(&empty_bar[stage]), ((tile_count / kStages) + 1) & 1);
        }
        if (lane < kWarpRows) {
          bias_smem[stage * kBlockN + row] = bias;
          last_smem[stage * kBlockN + row] = last;
        }
        if (lane == 0) {
          mask_smem[stage * 4 + producer_warp] =
              (needs_mask ? kTileNeedsMask : 0) | (per_column_bias ? kTileNeedsBias : 0);
          common_bias_smem[stage * 4 + producer_warp] = warp_bias;
          first_last_smem[stage * 4 + producer_warp] = first_last;
        }
        __syncwarp();
        // Copies: pass i moves rows warp_row0 + i * kRowsPerPass + lane / kChunksPerRow, one
        // 16-byte chunk per lane, so each row is read as whole 128/256-byte runs.
        const uint32_t k_dst = smem_addr(k_smem + stage * Traits::kKvBytes);
        const uint32_t v_dst = smem_addr(v_smem + stage * Traits::kKvBytes);
#pragma unroll
        for (int i = 0; i < kWarpRows / Traits::kRowsPerPass; ++i) {
          const int row = warp_row0 + copy_row0 + i * Traits::kRowsPerPass;
          const char* k_src = row_src[row];
          const char* v_src = row_src[kBlockN + row];
          const uint32_t offset = swizzled_128b<kBlockN>(row, copy_chunk);
          const bool valid = k_src != nullptr;
          cp_async_16(k_dst + offset, valid ? k_src + copy_chunk * 16 : info.k_base[0],
                      valid ? 16 : 0);
          cp_async_16(v_dst + offset, valid ? v_src + copy_chunk * 16 : info.v_base[0],
                      valid ? 16 : 0);
        }
        // The stage is full when every producer thread's metadata stores are released and its
        // copies have landed.
        mbarrier_arrive(smem_addr(&full_bar[stage]));
        mbarrier_arrive_on_copies(smem_addr(&full_bar[stage]));
        // row_src is rewritten by the next tile only after every lane has issued these copies.
        __syncwarp();
      }
    }
    cp_async_wait_all();
    return;
  }

  // ================= Consumer warpgroups: 64 query rows each. ==================================
  claim_registers<Traits::kConsumerRegisters>();
  const int warpgroup = tid / 128;
  const int warp_in_group = (tid / 32) % 4;
  // Accumulator fragments (wgmma m64nN f32): this thread holds rows g and g + 8 of its warp's 16
  // rows, columns 8j + 2t and 8j + 2t + 1 of every n8 group j, at [4j + {0, 1}] and [4j + {2, 3}].
  const int g = lane / 4, t4 = lane % 4;
  const int row_in_block = warpgroup * 64 + warp_in_group * 16 + g;
  float acc_o[Traits::kColumnBlocks][32];
  float acc_s[kSRegs];
  float row_max[2] = {kNegInf, kNegInf};
  float row_sum[2] = {0.0f, 0.0f};
  // The smallest last constituent over the plan row's units: query i sees a unit iff it is
  // <= i + shift (causal), or != kNoUnit. Tracked per tile, so the epilogue can tell a row that sees
  // nothing (O = 0) from one whose every logit is -inf (NaN), with no work per element.
  int32_t row_first_last = kNoUnit;
#pragma unroll
  for (int cb = 0; cb < Traits::kColumnBlocks; ++cb) {
#pragma unroll
    for (int i = 0; i < 32; ++i) acc_o[cb][i] = 0.0f;
  }
#pragma unroll
  for (int i = 0; i < kSRegs; ++i) acc_s[i] = 0.0f;

  int tile_count = 0;  // tiles consumed by this CTA so far: the ring position
  int q_count = 0;     // Q buffers used so far
  for (int row_index = blockIdx.x; row_index < num_rows; row_index += gridDim.x) {
    const int q_block = row_index % params.num_q_blocks;
    const int head = (row_index / params.num_q_blocks) % params.heads_q;
    const int batch = row_index / (params.num_q_blocks * params.heads_q);
    const int q_first = q_block * kBlockM;
    int32_t region_start[kAttentionLevels + 1];
    int32_t list_offset[kAttentionLevels];
    row_layout(params, row_index, region_start, list_offset);
    const int num_tiles = (region_start[kAttentionLevels] + kBlockN - 1) / kBlockN;
#pragma unroll
    for (int cb = 0; cb < Traits::kColumnBlocks; ++cb) {
#pragma unroll
      for (int i = 0; i < 32; ++i) acc_o[cb][i] = 0.0f;
    }
    row_max[0] = row_max[1] = kNegInf;
    row_sum[0] = row_sum[1] = 0.0f;
    row_first_last = kNoUnit;
    const int q_buffer = q_count % Traits::kQBuffers;
    if (num_tiles > 0) ++q_count;

    // Q descriptor of this warpgroup's 64 rows; each k16 step moves 32 bytes inside a swizzle
    // column and a column block (64 elements) moves kBlockM * 128 bytes.
    const uint64_t q_desc =
        make_smem_desc(smem_addr(q_smem + q_buffer * Traits::kQBytes) + warpgroup * 64 * 128);

    for (int tile = 0; tile < num_tiles; ++tile, ++tile_count) {
      const int stage = tile_count % kStages;
      mbarrier_wait(smem_addr(&full_bar[stage]), (tile_count / kStages) & 1);
      // The copies were written through the generic proxy; wgmma reads through the async proxy.
      fence_proxy_async();
      const int4 flags = *reinterpret_cast<const int4*>(mask_smem + stage * 4);
      const float4 warp_bias = *reinterpret_cast<const float4*>(common_bias_smem + stage * 4);
      const int4 first_last = *reinterpret_cast<const int4*>(first_last_smem + stage * 4);
      row_first_last = min(row_first_last, min(min(first_last.x, first_last.y),
                                               min(first_last.z, first_last.w)));
      const int tile_flags = flags.x | flags.y | flags.z | flags.w;
      const bool apply_mask = (tile_flags & kTileNeedsMask) != 0;
      // A tile whose columns all carry the same bias b (every row exists, one level, no ragged
      // pooled token: e.g. all level-1 keys, b = 0, or all level-8, b = 3) and no causal test keeps
      // raw logits and folds scale and bias into the exponent, exp2(s * scale + b - max): one FFMA
      // per element fewer. A negative scale would turn the max of raw logits into a min, so it
      // takes the per-column path (the public API rejects one anyway).
      const bool common_bias = tile_flags == 0 && warp_bias.x == warp_bias.y &&
                               warp_bias.y == warp_bias.z && warp_bias.z == warp_bias.w &&
                               params.scale_log2 > 0.0f;
      const float logit_scale = common_bias ? params.scale_log2 : 1.0f;
      const float logit_offset = common_bias ? warp_bias.x : 0.0f;
      const uint64_t k_desc = make_smem_desc(smem_addr(k_smem + stage * Traits::kKvBytes));
      const uint64_t v_desc = make_smem_desc(smem_addr(v_smem + stage * Traits::kKvBytes));
      const float* bias = bias_smem + stage * kBlockN;
      const int32_t* last = last_smem + stage * kBlockN;

      // S = Q K^T over D in k16 steps.
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < kHeadDim / 16; ++kk) {
        const uint32_t q_offset = (kk / 4) * kBlockM * 128 + (kk % 4) * 32;
        const uint32_t k_offset = (kk / 4) * kBlockN * 128 + (kk % 4) * 32;
        if (kk == 0) {
          Wgmma<Element, kBlockN>::ss_first(acc_s, desc_advance(q_desc, q_offset),
                                            desc_advance(k_desc, k_offset));
        } else {
          Wgmma<Element, kBlockN>::ss(acc_s, desc_advance(q_desc, q_offset),
                                      desc_advance(k_desc, k_offset), 1);
        }
      }
      wgmma_commit();
      wgmma_wait<0>();
      fence_registers(acc_s);

      // Base-2 logits with the column bias; the causal test only on tiles that need it.
      if (!common_bias) {
#pragma unroll
        for (int nj = 0; nj < kNTiles; ++nj) {
          const float2 col_bias = *reinterpret_cast<const float2*>(bias + nj * 8 + 2 * t4);
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            acc_s[nj * 4 + e] =
                fmaf(acc_s[nj * 4 + e], params.scale_log2, (e & 1) ? col_bias.y : col_bias.x);
          }
        }
      }
      if (apply_mask) {
#pragma unroll
        for (int nj = 0; nj < kNTiles; ++nj) {
          const int2 col_last = *reinterpret_cast<const int2*>(last + nj * 8 + 2 * t4);
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int query = q_first + row_in_block + (e >= 2 ? 8 : 0);
            const int key_last = (e & 1) ? col_last.y : col_last.x;
            if (key_last > query + causal_shift) acc_s[nj * 4 + e] = kNegInf;
          }
        }
      }

      // Online softmax in base 2: running max (in scaled units), rescale O and the running sum,
      // P = exp2(S * logit_scale + logit_offset - max).
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        float tile_max = kNegInf;
#pragma unroll
        for (int nj = 0; nj < kNTiles; ++nj) {
          tile_max = fmaxf(tile_max, fmaxf(acc_s[nj * 4 + 2 * half], acc_s[nj * 4 + 2 * half + 1]));
        }
        const float new_max =
            fmaxf(row_max[half], fmaf(quad_max(tile_max), logit_scale, logit_offset));
        const float base = new_max == kNegInf ? 0.0f : new_max;
        const float shift = logit_offset - base;
        const float rescale = fast_exp2(row_max[half] - base);
        row_max[half] = new_max;
        float sum = 0.0f;
#pragma unroll
        for (int nj = 0; nj < kNTiles; ++nj) {
#pragma unroll
          for (int e = 2 * half; e < 2 * half + 2; ++e) {
            acc_s[nj * 4 + e] = fast_exp2(fmaf(acc_s[nj * 4 + e], logit_scale, shift));
            sum += acc_s[nj * 4 + e];
          }
        }
        row_sum[half] = row_sum[half] * rescale + sum;
#pragma unroll
        for (int cb = 0; cb < Traits::kColumnBlocks; ++cb) {
#pragma unroll
          for (int j = 0; j < 8; ++j) {
            acc_o[cb][j * 4 + 2 * half] *= rescale;
            acc_o[cb][j * 4 + 2 * half + 1] *= rescale;
          }
        }
      }

      // O += P V: the S accumulators of n8 groups 2kk, 2kk + 1 are the A fragment of keys
      // [16kk, 16kk + 16); V's k16 step is 16 rows = 2048 bytes, a column block kBlockN * 128.
      uint32_t p_frag[kBlockN / 16][4];
#pragma unroll
      for (int kk = 0; kk < kBlockN / 16; ++kk) {
        p_frag[kk][0] = pack_pair<Element>(acc_s[8 * kk + 0], acc_s[8 * kk + 1]);
        p_frag[kk][1] = pack_pair<Element>(acc_s[8 * kk + 2], acc_s[8 * kk + 3]);
        p_frag[kk][2] = pack_pair<Element>(acc_s[8 * kk + 4], acc_s[8 * kk + 5]);
        p_frag[kk][3] = pack_pair<Element>(acc_s[8 * kk + 6], acc_s[8 * kk + 7]);
      }
#pragma unroll
      for (int cb = 0; cb < Traits::kColumnBlocks; ++cb) fence_registers(acc_o[cb]);
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < kBlockN / 16; ++kk) {
#pragma unroll
        for (int cb = 0; cb < Traits::kColumnBlocks; ++cb) {
          Wgmma<Element, 64>::rs(acc_o[cb], p_frag[kk],
                                 desc_advance(v_desc, cb * kBlockN * 128 + kk * 2048));
        }
      }
      wgmma_commit();
      wgmma_wait<0>();
#pragma unroll
      for (int cb = 0; cb < Traits::kColumnBlocks; ++cb) fence_registers(acc_o[cb]);
      // This thread's reads of the stage (wgmma, bias, last, flags) are complete: hand it back.
      mbarrier_arrive(smem_addr(&empty_bar[stage]));
    }

    if (num_tiles > 0) {
      // Every S = Q K^T of the row is complete (waited): the Q buffer can be refilled.
      mbarrier_arrive(smem_addr(&q_empty_bar[q_buffer]));
    }

    // Epilogue: O / l in the element type; LSE = ln2 * (max + log2 l). A row that sees no unit
    // gets O = 0 and LSE = -inf. A row that sees one has l >= 1 (its maximum contributes
    // exp2(0)) unless it met a non-finite logit: NaN (l is NaN), +inf (+inf - +inf is NaN) or
    // every logit -inf (l = 0). Its O and LSE are then NaN, as dense attention's are.
    char* out_base = static_cast<char*>(params.out) +
                     (batch * params.out_batch_stride + head * params.out_head_stride) * 2;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const float sum = quad_sum(row_sum[half]);
      const int query = q_first + row_in_block + half * 8;
      if (query >= params.seq_q) continue;
      const bool sees_a_unit = params.causal ? row_first_last <= query + causal_shift
                                             : row_first_last != kNoUnit;
      const bool finite = sum > 0.0f;  // false for NaN
      const float inv = sees_a_unit ? (finite ? 1.0f / sum : kNaN) : 0.0f;
      uint32_t* row_ptr = reinterpret_cast<uint32_t*>(out_base + query * params.out_row_stride * 2);
#pragma unroll
      for (int cb = 0; cb < Traits::kColumnBlocks; ++cb) {
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          // An empty row's accumulators are 0 unless v holds a non-finite value (0 * inf): write
          // 0 rather than acc * 0.
          const float lo = sees_a_unit ? acc_o[cb][j * 4 + 2 * half] * inv : 0.0f;
          const float hi = sees_a_unit ? acc_o[cb][j * 4 + 2 * half + 1] * inv : 0.0f;
          row_ptr[cb * 32 + j * 4 + t4] = pack_pair<Element>(lo, hi);
        }
      }
      if (params.lse != nullptr && t4 == 0) {
        params.lse[batch * params.lse_batch_stride + head * params.lse_head_stride +
                   query * params.lse_row_stride] =
            !sees_a_unit ? kNegInf : finite ? (row_max[half] + __log2f(sum)) * kLn2 : kNaN;
      }
    }
  }
}

}  // namespace psa::cuda
