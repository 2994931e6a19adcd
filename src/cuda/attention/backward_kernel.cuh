// The pyramid sparse attention backward kernel (SPEC.md section 7) for Hopper: device code.
//
// A CTA computes the gradients of one plan row (batch, query head, query block) at a time, over
// the row's virtual key sequence exactly as the forward walks it (docs/design.md): the level-1
// blocks, then the pooled blocks of levels 2, 4, 8, gathered row by row into tiles of
// kBlockN = 64 virtual keys, so that pooled work costs in proportion to its tokens. Per tile:
//   S  = Q K^T,   P  = exp2(S * scale_log2 + bias - lse2)      (the forward's probabilities)
//   dP = dO V^T,  dS = P * (dP - delta)                         (delta = rowsum(dO * O))
//   dQ += dS K                                                   (registers, over the whole row)
//   dV_tile = P^T dO,  dK_tile = dS^T Q                          (added to fp32 accumulators)
// dQ stays in registers for the row (no atomics, deterministic). dK and dV of a virtual key are
// gradients of the key or pooled key it was gathered from: the tile's products are added to fp32
// accumulators of that level's row (one 8-byte reduction per two columns), and a separate kernel
// (backward_dispatch.cu) hands every pooled row's gradient to the c tokens it averages.
//
// Determinism: several plan rows add to the same accumulator row, so the order of the additions
// decides the fp32 rounding. With params.order set, the additions to one unit (batch, kv head,
// level, key block) happen in row order: a counter per unit and product counts the tiles already
// added; a tile waits until every earlier row of the kv group that attends the unit at that level
// has added all of its tiles (order = rank of the row among them), adds, and advances the counter
// one tile later (after a fence that by then costs nothing). Rows are handed out in order by an
// atomic counter (within a kv group, row order; several kv groups side by side), so a waited-on
// row always belongs to a CTA that has started and that releases its pieces before it waits
// itself: the earliest unfinished row never waits, and there is no deadlock whatever the number
// of CTAs resident.
//
// Layout (CTA = kNumConsumers consumer warpgroups of 64 query rows + one producer warpgroup):
//   - the producer fetches rows, loads Q and dO of the row (single-buffered) and gathers K/V tiles
//     into a kStages ring (the forward's gather, plus per-row accumulator offsets and the unit
//     counters to wait on);
//   - consumer warpgroup w computes S and dP for its 64 query rows (wgmma m64n64 SS), P and dS in
//     registers, stores P and dS as 16-bit (queries, keys) tiles in shared memory (double-
//     buffered), and after a barrier of the consumers issues dQ += dS K (RS) and one transposed
//     product over all kBlockM queries: warpgroup 0 dV_tile = P^T dO, warpgroup 1 dK_tile = dS^T Q
//     (wgmma m64n64 with both operands MN-major); a single consumer warpgroup (block_m 64) does
//     both products in turn.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "common/index_math.h"
#include "cuda/attention/attention_device.cuh"
#include "cuda/attention/backward_params.h"

namespace psa::cuda {

// Per-warp data of the producer for the current row: where each level's keys and values and
// accumulator rows live for this (batch, kv head), and the row's region starts.
struct BackwardRowInfo {
  const char* k_base[kAttentionLevels];
  const char* v_base[kAttentionLevels];
  int64_t k_row_bytes[kAttentionLevels];
  int64_t v_row_bytes[kAttentionLevels];
  int64_t acc_base[kAttentionLevels];          // element offset of (batch, kv head) in level l
  int32_t level_length[kAttentionLevels];      // ceil(Lk / f)
  int32_t region_start[kAttentionLevels + 1];  // R_1, R_2, R_4, R_8, end (virtual rows)
  int32_t list_offset[kAttentionLevels];
};

// What the producer publishes with each K/V stage besides the tiles.
template <int kBlockN, int kSlots>
struct BackwardStageMeta {
  int64_t acc_row[kBlockN];   // element offset of the virtual row in the accumulators; -1: none
  float bias[kBlockN];        // log2(c_p); -inf for a row that does not exist
  int32_t last[kBlockN];      // last real constituent (causal test)
  int32_t slot_unit[kSlots];  // unit counter index of the piece starting at row 4 * slot; -1: none
  int32_t slot_target[kSlots];
  int32_t flags[4];           // one word per producer warp (kTileNeedsMask)
};

//   kStages: K/V tiles in flight. Shared memory, D = 128 and block_m 128: Q 32 + dO 32 +
//   2 stages x (K 16 + V 16) + 2 buffers x (P 16 + dS 16) KiB = 192 KiB + metadata.
template <typename Element_, int kHeadDim_, int kBlockM_, int kStages_>
struct BackwardTraits {
  using Element = Element_;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kBlockM = kBlockM_;
  // 64 virtual keys per tile: S and dP (m64n64) and the transposed products (m64 keys x n64 of D
  // per instruction) then fit the registers next to dQ, and P and dS fit shared memory twice.
  static constexpr int kBlockN = 64;
  static constexpr int kStages = kStages_;
  static constexpr int kNumConsumers = kBlockM / 64;
  static constexpr int kNumConsumerThreads = kNumConsumers * 128;
  static constexpr int kNumProducerWarps = 4;
  static constexpr int kNumThreads = kNumConsumerThreads + 32 * kNumProducerWarps;
  static constexpr int kRowsPerProducerWarp = kBlockN / kNumProducerWarps;
  static constexpr int kProducerRegisters = 72;
  static constexpr int kConsumerRegisters = 216;
  static constexpr int kChunksPerRow = kHeadDim / 8;
  static constexpr int kRowsPerPass = 32 / kChunksPerRow;
  static constexpr int kColumnBlocks = kHeadDim / 64;
  // The smallest unit is 4 pooled rows (block_n 32 at level 8), and units start at multiples of
  // their size in the virtual sequence, so a piece of a unit starts at a row 4 * slot.
  static constexpr int kSlots = kBlockN / 4;
  using StageMeta = BackwardStageMeta<kBlockN, kSlots>;

  static constexpr int kQBytes = kBlockM * kHeadDim * 2;
  static constexpr int kKvBytes = kBlockN * kHeadDim * 2;
  static constexpr int kPBytes = kBlockM * kBlockN * 2;
  static constexpr int kAlign = 1024;
  // Tiles (Q, dO, the K/V ring, P and dS twice), stage metadata, mbarriers (full and empty per
  // stage, q_full, q_empty), the row slots (two for the producer, one for the consumers), the
  // producer's row addresses and one row info per producer warp.
  static constexpr int kSmemBytes =
      kAlign + 2 * kQBytes + 2 * kStages * kKvBytes + 4 * kPBytes +
      kStages * static_cast<int>(sizeof(StageMeta)) + (2 * kStages + 2) * 8 + 16 +
      2 * kBlockN * 8 + kNumProducerWarps * static_cast<int>(sizeof(BackwardRowInfo));

  static_assert(kHeadDim == 64 || kHeadDim == 128, "head dims 64 and 128 are instantiated");
  static_assert(kBlockM == 64 || kBlockM == 128, "one or two consumer warpgroups");
  static_assert(kRowsPerProducerWarp == 16 && kRowsPerProducerWarp % kRowsPerPass == 0 &&
                    (kBlockM / kNumProducerWarps) % kRowsPerPass == 0,
                "a producer warp covers its rows with one metadata pass and whole copy passes");
  static_assert(kQBytes % kAlign == 0 && kKvBytes % kAlign == 0 && kPBytes % kAlign == 0,
                "every tile starts on a swizzle-atom boundary");
  static_assert(sizeof(StageMeta) % 8 == 0, "stage metadata keeps 8-byte alignment");
  static_assert(kSmemBytes <= 227 * 1024, "fits the 227 KiB of shared memory of an sm_90 CTA");
};

namespace detail_backward {

constexpr int kProducerBarrier = 1;  // the producer warpgroup (128 threads)
constexpr int kConsumerBarrier = 2;  // all consumer warpgroups
constexpr int kWarpgroupBarrier = 3;  // + consumer warpgroup index: one warpgroup (128 threads)
// A unit counter that does not reach its target within this many polls (seconds) means a broken
// invariant; trapping reports it as a launch failure instead of hanging the device.
constexpr int kMaxPolls = 1 << 24;

// The ordered accumulation of one product (dK or dV) in one consumer warpgroup, for the thread
// that owns slot wg_tid < kSlots of each tile: the unit whose piece starts at that slot, the count
// its counter must reach first, the counter as read early in the tile, and the counter of the
// previous tile's piece, released one tile later so that its reductions have been performed by
// then (the fence is cheap) without holding anyone up for longer than a tile.
struct OrderedSlot {
  int unit = -1;
  int target = 0;
  int observed = 0;
  int pending = -1;
};

// The hand-out order of deterministic mode (BackwardParams::interleave): index k -> plan row.
__device__ __forceinline__ int dispatch_row(const BackwardParams& p, int k) {
  const int group = p.heads_q / p.heads_kv;
  const int group_in_block = k % p.interleave;
  int rest = k / p.interleave;
  const int q_block = rest % p.num_q_blocks;
  rest /= p.num_q_blocks;
  const int head_in_group = rest % group;
  rest /= group;
  const int group_blocks = p.heads_kv / p.interleave;
  const int group_block = rest % group_blocks;
  const int batch = rest / group_blocks;
  const int head = (group_block * p.interleave + group_in_block) * group + head_in_group;
  return (batch * p.heads_q + head) * p.num_q_blocks + q_block;
}

// Releases the previous tile's piece: every thread of the warpgroup has fenced its reductions
// (the kernel does so while the tile's S and dP products run), then the slot owner advances the
// counter.
__device__ __forceinline__ void release_pending(OrderedSlot& slot, int32_t* counters,
                                                int barrier_id) {
  using namespace detail_attention;
  named_barrier_sync(barrier_id, 128);
  if (slot.pending >= 0) red_add_relaxed_gpu(counters + slot.pending, 1);
  slot.pending = -1;
}

// Adds this thread's part of a (64 keys x D) product to the accumulators: key rows `row` and
// row + 8 of its warp's 16, columns cb * 64 + 8j + 2t and + 1. With `ordered`, first releases the
// previous tile's pieces and waits until the units of this tile have received every earlier
// row's share.
template <typename Traits>
__device__ __forceinline__ void add_tile_product(
    const float (&acc)[Traits::kColumnBlocks][32], float* region, int32_t* counters,
    const int64_t (&row_offset)[2], OrderedSlot& slot, bool ordered, int t4, int barrier_id) {
  using namespace detail_attention;
  if (ordered) {
    release_pending(slot, counters, barrier_id);
    if (slot.unit >= 0) {
      int polls = 0;
      for (int seen = slot.observed; seen < slot.target;
           seen = load_relaxed_gpu(counters + slot.unit)) {
        if (++polls > kMaxPolls) __trap();
        __nanosleep(32);
      }
      fence_acq_rel_gpu();  // acquire: the earlier rows' reductions are ordered before ours
    }
    named_barrier_sync(barrier_id, 128);
    slot.pending = slot.unit;
  }
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    if (row_offset[half] < 0) continue;
    float* dst = region + row_offset[half] + 2 * t4;
#pragma unroll
    for (int cb = 0; cb < Traits::kColumnBlocks; ++cb) {
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        red_add_f32x2(dst + cb * 64 + 8 * j, acc[cb][4 * j + 2 * half],
                      acc[cb][4 * j + 2 * half + 1]);
      }
    }
  }
}

}  // namespace detail_backward

template <typename Traits>
__global__ void __launch_bounds__(Traits::kNumThreads, 1)
    attention_backward_kernel(const BackwardParams params) {
  using namespace detail_attention;
  using namespace detail_backward;
  using Element = typename Traits::Element;
  using StageMeta = typename Traits::StageMeta;
  constexpr int kHeadDim = Traits::kHeadDim;
  constexpr int kBlockM = Traits::kBlockM;
  constexpr int kBlockN = Traits::kBlockN;
  constexpr int kStages = Traits::kStages;
  constexpr int kChunksPerRow = Traits::kChunksPerRow;
  constexpr int kColumnBlocks = Traits::kColumnBlocks;
  constexpr int kNTiles = kBlockN / 8;  // n8 column groups of S per thread
  constexpr int kSRegs = kBlockN / 2;   // S accumulator registers per thread (64 x 64 / 128)
  static_assert(sizeof(Element) == 2, "16-bit elements: 8 per 16-byte chunk");

  extern __shared__ unsigned char smem_raw[];
  const uint32_t raw_address = smem_addr(smem_raw);
  unsigned char* smem =
      smem_raw + ((Traits::kAlign - (raw_address % Traits::kAlign)) % Traits::kAlign);
  unsigned char* q_smem = smem;                            // (kBlockM, D)
  unsigned char* do_smem = q_smem + Traits::kQBytes;       // (kBlockM, D)
  unsigned char* k_smem = do_smem + Traits::kQBytes;       // kStages x (kBlockN, D)
  unsigned char* v_smem = k_smem + kStages * Traits::kKvBytes;
  unsigned char* p_smem = v_smem + kStages * Traits::kKvBytes;   // 2 x (kBlockM, kBlockN)
  unsigned char* ds_smem = p_smem + 2 * Traits::kPBytes;         // 2 x (kBlockM, kBlockN)
  StageMeta* meta = reinterpret_cast<StageMeta*>(ds_smem + 2 * Traits::kPBytes);
  uint64_t* full_bar = reinterpret_cast<uint64_t*>(meta + kStages);
  uint64_t* empty_bar = full_bar + kStages;
  uint64_t* q_full_bar = empty_bar + kStages;
  uint64_t* q_empty_bar = q_full_bar + 1;
  int32_t* next_row = reinterpret_cast<int32_t*>(q_empty_bar + 1);  // (2) producer's slots
  int32_t* consumer_row = next_row + 2;                             // the row in Q / dO
  const char** row_src = reinterpret_cast<const char**>(consumer_row + 2);  // (2, kBlockN)
  BackwardRowInfo* producer_info = reinterpret_cast<BackwardRowInfo*>(row_src + 2 * kBlockN);

  const int tid = threadIdx.x;
  const int lane = tid % 32;
  const int num_rows = params.batch * params.heads_q * params.num_q_blocks;
  const int causal_shift = params.seq_k - params.seq_q;
  const bool ordered = params.order != nullptr;

  if (tid == 0) {
    for (int s = 0; s < kStages; ++s) {
      mbarrier_init(smem_addr(&full_bar[s]), 2 * 32 * Traits::kNumProducerWarps);
      mbarrier_init(smem_addr(&empty_bar[s]), Traits::kNumConsumerThreads);
    }
    mbarrier_init(smem_addr(q_full_bar), 2 * 32 * Traits::kNumProducerWarps);
    mbarrier_init(smem_addr(q_empty_bar), Traits::kNumConsumerThreads);
  }
  __syncthreads();

  if (tid >= Traits::kNumConsumerThreads) {
    // ================= Producer warpgroup: rows in order, Q and dO, then the K/V tiles. ======
    release_registers<Traits::kProducerRegisters>();
    const int producer_tid = tid - Traits::kNumConsumerThreads;
    const int producer_warp = producer_tid / 32;
    BackwardRowInfo& info = producer_info[producer_warp];
    const int copy_chunk = lane % kChunksPerRow;
    const int copy_row0 = lane / kChunksPerRow;
    constexpr int kWarpRows = Traits::kRowsPerProducerWarp;
    const int warp_row0 = producer_warp * kWarpRows;
    int tile_count = 0;
    for (int row_count = 0;; ++row_count) {
      // The next row in row order. Two slots: a slot is rewritten two rows later, after every
      // producer warp has passed the barrier of the row in between.
      if (producer_tid == 0) next_row[row_count & 1] = atomicAdd(params.row_counter, 1);
      named_barrier_sync(kProducerBarrier, 32 * Traits::kNumProducerWarps);
      const int handed_out = next_row[row_count & 1];
      // Q and dO are single-buffered: wait until the consumers are done with the previous row.
      if (row_count > 0) mbarrier_wait(smem_addr(q_empty_bar), (row_count - 1) & 1);
      if (handed_out >= num_rows) {
        if (producer_tid == 0) *consumer_row = -1;
        mbarrier_arrive(smem_addr(q_full_bar));
        mbarrier_arrive_on_copies(smem_addr(q_full_bar));
        break;
      }
      const int row_index = ordered ? dispatch_row(params, handed_out) : handed_out;
      const int q_block = row_index % params.num_q_blocks;
      const int head = (row_index / params.num_q_blocks) % params.heads_q;
      const int batch = row_index / (params.num_q_blocks * params.heads_q);
      const int head_kv = head / (params.heads_q / params.heads_kv);
      const int64_t plan_row = row_index;
      const int q_first = q_block * kBlockM;
      __syncwarp();  // every lane is done with the previous row's `info`
      if (lane < kAttentionLevels) {
        const int l = lane;
        set_level_view(info, params, l, batch, head_kv);
        info.acc_base[l] = params.level_offset[l] +
                           (static_cast<int64_t>(batch) * params.heads_kv + head_kv) *
                               info.level_length[l] * kHeadDim;
      }
      if (lane == 0) row_layout(params, plan_row, info.region_start, info.list_offset);
      __syncwarp();
      const int num_virtual = info.region_start[kAttentionLevels];
      const int num_tiles = (num_virtual + kBlockN - 1) / kBlockN;
      const int32_t* block_list = params.blocks + plan_row * params.num_k_blocks;
      const int32_t* order_row = ordered ? params.order + plan_row * params.num_k_blocks : nullptr;

      // Q and dO of this row (each warp a quarter of the rows; zero-fill past Lq).
      if (producer_tid == 0) *consumer_row = row_index;
      {
        constexpr int kQRows = kBlockM / Traits::kNumProducerWarps;
        const char* q_base = static_cast<const char*>(params.q) +
                             (batch * params.q_batch_stride + head * params.q_head_stride) * 2;
        const char* do_base =
            static_cast<const char*>(params.dout) +
            (batch * params.dout_batch_stride + head * params.dout_head_stride) * 2;
        const uint32_t q_dst = smem_addr(q_smem);
        const uint32_t do_dst = smem_addr(do_smem);
#pragma unroll
        for (int i = 0; i < kQRows / Traits::kRowsPerPass; ++i) {
          const int row = producer_warp * kQRows + copy_row0 + i * Traits::kRowsPerPass;
          const int q_row = q_first + row;
          const bool valid = q_row < params.seq_q;
          const uint32_t offset = swizzled_128b<kBlockM>(row, copy_chunk);
          cp_async_16(q_dst + offset,
                      valid ? q_base + q_row * params.q_row_stride * 2 + copy_chunk * 16 : q_base,
                      valid ? 16 : 0);
          cp_async_16(do_dst + offset,
                      valid ? do_base + q_row * params.dout_row_stride * 2 + copy_chunk * 16
                            : do_base,
                      valid ? 16 : 0);
        }
      }
      mbarrier_arrive(smem_addr(q_full_bar));
      mbarrier_arrive_on_copies(smem_addr(q_full_bar));

      for (int tile = 0; tile < num_tiles; ++tile, ++tile_count) {
        const int stage = tile_count % kStages;
        // Row metadata: lane l < kWarpRows handles row warp_row0 + l.
        bool needs_mask = false;
        float bias = kNegInf;
        int32_t last = 0;
        int64_t acc_row = -1;
        int slot_unit = -1, slot_target = 0;
        const int row = warp_row0 + lane;
        const char* k_src = nullptr;
        const char* v_src = nullptr;
        if (lane < kWarpRows) {
          const int r = tile * kBlockN + row;
          const int level = (r >= info.region_start[1]) + (r >= info.region_start[2]) +
                            (r >= info.region_start[3]);
          if (r < num_virtual) {
            const int seg_shift = params.log2_block_n - level;  // block_n / f rows per block
            const int rel = r - info.region_start[level];
            const int in_unit = rel & ((1 << seg_shift) - 1);
            const int j = __ldg(block_list + info.list_offset[level] + (rel >> seg_shift));
            if (j >= 0 && j < params.num_k_blocks) {
              const int64_t p = (static_cast<int64_t>(j) << seg_shift) + in_unit;
              // Deterministic mode: the row's rank among the unit's rows picks its lane (a copy
              // of the accumulators) and the count of earlier pieces in that lane.
              int rank = -1;
              if (ordered) {
                const int entry = __ldg(order_row + j);
                if (entry >= 0 && (entry & 3) == level) rank = entry >> 2;
              }
              const int64_t lane_offset =
                  rank > 0 ? static_cast<int64_t>(rank % params.lanes) * params.lane_stride : 0;
              if (p < info.level_length[level]) {
                k_src = info.k_base[level] + p * info.k_row_bytes[level];
                v_src = info.v_base[level] + p * info.v_row_bytes[level];
                const int64_t last_token =
                    psa::detail::pooled_last_token(params.seq_k, 1 << level, p);
                bias = log2f(static_cast<float>(
                    psa::detail::pooled_count(params.seq_k, 1 << level, p)));
                last = static_cast<int32_t>(last_token);
                needs_mask = last_token > q_first + causal_shift;
                acc_row = lane_offset + info.acc_base[level] + p * kHeadDim;
              }
              // A piece of unit (batch, kv head, level, j) starts here: its first row, or the
              // first row of a tile that continues it (a 128-row level-1 block spans two tiles).
              if (rank >= 0 && (in_unit == 0 || row == 0)) {
                const int pieces = max(1, (params.block_n >> level) / kBlockN);
                slot_unit = (((batch * params.heads_kv + head_kv) * kAttentionLevels + level) *
                                 params.num_k_blocks + j) * params.lanes + rank % params.lanes;
                slot_target = (rank / params.lanes) * pieces;
              }
            }
          }
          row_src[row] = k_src;
          row_src[kBlockN + row] = v_src;
        }
        needs_mask = __any_sync(0xffffffffu, needs_mask) && params.causal;
        if (tile_count >= kStages) {
          mbarrier_wait(smem_addr(&empty_bar[stage]), ((tile_count / kStages) + 1) & 1);
        }
        StageMeta& m = meta[stage];
        if (lane < kWarpRows) {
          m.bias[row] = bias;
          m.last[row] = last;
          m.acc_row[row] = acc_row;
          if (row % 4 == 0) {
            m.slot_unit[row / 4] = slot_unit;
            m.slot_target[row / 4] = slot_target;
          }
        }
        if (lane == 0) m.flags[producer_warp] = needs_mask ? kTileNeedsMask : 0;
        __syncwarp();
        const uint32_t k_dst = smem_addr(k_smem + stage * Traits::kKvBytes);
        const uint32_t v_dst = smem_addr(v_smem + stage * Traits::kKvBytes);
#pragma unroll
        for (int i = 0; i < kWarpRows / Traits::kRowsPerPass; ++i) {
          const int copy_row = warp_row0 + copy_row0 + i * Traits::kRowsPerPass;
          const char* ks = row_src[copy_row];
          const char* vs = row_src[kBlockN + copy_row];
          const uint32_t offset = swizzled_128b<kBlockN>(copy_row, copy_chunk);
          const bool valid = ks != nullptr;
          cp_async_16(k_dst + offset, valid ? ks + copy_chunk * 16 : info.k_base[0],
                      valid ? 16 : 0);
          cp_async_16(v_dst + offset, valid ? vs + copy_chunk * 16 : info.v_base[0],
                      valid ? 16 : 0);
        }
        mbarrier_arrive(smem_addr(&full_bar[stage]));
        mbarrier_arrive_on_copies(smem_addr(&full_bar[stage]));
        __syncwarp();
      }
    }
    cp_async_wait_all();
    return;
  }

  // ================= Consumer warpgroups: 64 query rows each. ==================================
  claim_registers<Traits::kConsumerRegisters>();
  const int warpgroup = tid / 128;
  const int wg_tid = tid % 128;
  const int warp_in_group = wg_tid / 32;
  // Accumulator fragments (wgmma m64nN f32): rows g and g + 8 of the warp's 16, columns 8j + 2t
  // and + 1 of every n8 group j, at [4j + {0, 1}] and [4j + {2, 3}].
  const int g = lane / 4, t4 = lane % 4;
  const int row_in_block = warpgroup * 64 + warp_in_group * 16 + g;
  const int key_row = warp_in_group * 16 + g;  // key row of the transposed products
  float acc_dq[kColumnBlocks][32];
  float acc_t[kColumnBlocks][32];
  float acc_s[kSRegs];
  float acc_dp[kSRegs];

  // This warpgroup's product: dV = P^T dO for warpgroup 0, dK = dS^T Q for warpgroup 1; a single
  // consumer warpgroup does dV, then dK as its second product (slot_dk).
  const bool dk_product = warpgroup == 1;
  int32_t* const counters = dk_product ? params.sem_k : params.sem_v;
  float* const region = dk_product ? params.dk_acc : params.dv_acc;
  OrderedSlot slot, slot_dk;

  int tile_count = 0;
  for (int q_count = 0;; ++q_count) {
    mbarrier_wait(smem_addr(q_full_bar), q_count & 1);
    const int row_index = *consumer_row;
    if (row_index < 0) break;
    // Q and dO were written through the generic proxy (cp.async); wgmma reads the async proxy.
    fence_proxy_async();
    const int q_block = row_index % params.num_q_blocks;
    const int head = (row_index / params.num_q_blocks) % params.heads_q;
    const int batch = row_index / (params.num_q_blocks * params.heads_q);
    const int q_first = q_block * kBlockM;
    int32_t region_start[kAttentionLevels + 1];
    int32_t list_offset[kAttentionLevels];
    row_layout(params, row_index, region_start, list_offset);
    const int num_tiles = (region_start[kAttentionLevels] + kBlockN - 1) / kBlockN;
    float lse2[2], delta[2];
    {
      const int64_t terms = (static_cast<int64_t>(batch) * params.heads_q + head) *
                                params.row_terms_stride + q_first + row_in_block;
      lse2[0] = __ldg(params.lse2 + terms);
      lse2[1] = __ldg(params.lse2 + terms + 8);
      delta[0] = __ldg(params.delta + terms);
      delta[1] = __ldg(params.delta + terms + 8);
    }
#pragma unroll
    for (int cb = 0; cb < kColumnBlocks; ++cb) {
#pragma unroll
      for (int i = 0; i < 32; ++i) acc_dq[cb][i] = 0.0f;
    }
    const uint64_t q_desc = make_smem_desc(smem_addr(q_smem) + warpgroup * 64 * 128);
    const uint64_t do_desc = make_smem_desc(smem_addr(do_smem) + warpgroup * 64 * 128);

    for (int tile = 0; tile < num_tiles; ++tile, ++tile_count) {
      const int stage = tile_count % kStages;
      const int buffer = tile_count & 1;
      mbarrier_wait(smem_addr(&full_bar[stage]), (tile_count / kStages) & 1);
      fence_proxy_async();
      const StageMeta& m = meta[stage];
      const int4 flags = *reinterpret_cast<const int4*>(m.flags);
      const bool apply_mask = ((flags.x | flags.y | flags.z | flags.w) & kTileNeedsMask) != 0;
      const uint64_t k_desc = make_smem_desc(smem_addr(k_smem + stage * Traits::kKvBytes));
      const uint64_t v_desc = make_smem_desc(smem_addr(v_smem + stage * Traits::kKvBytes));
      if (ordered && wg_tid < Traits::kSlots) {
        // The units of this tile, and their counters read now so that the load's latency hides
        // behind the tile's products.
        slot.unit = m.slot_unit[wg_tid];
        slot.target = m.slot_target[wg_tid];
        if (slot.unit >= 0) slot.observed = load_relaxed_gpu(counters + slot.unit);
        if constexpr (Traits::kNumConsumers == 1) {
          slot_dk.unit = slot.unit;
          slot_dk.target = slot.target;
          if (slot.unit >= 0) slot_dk.observed = load_relaxed_gpu(params.sem_k + slot.unit);
        }
      }

      // S = Q K^T and dP = dO V^T over D in k16 steps (K and V tiles are both (keys, D)).
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < kHeadDim / 16; ++kk) {
        const uint32_t q_offset = (kk / 4) * kBlockM * 128 + (kk % 4) * 32;
        const uint32_t k_offset = (kk / 4) * kBlockN * 128 + (kk % 4) * 32;
        if (kk == 0) {
          Wgmma<Element, 64>::ss_first(acc_s, desc_advance(q_desc, q_offset),
                                       desc_advance(k_desc, k_offset));
          Wgmma<Element, 64>::ss_first(acc_dp, desc_advance(do_desc, q_offset),
                                       desc_advance(v_desc, k_offset));
        } else {
          Wgmma<Element, 64>::ss(acc_s, desc_advance(q_desc, q_offset),
                                 desc_advance(k_desc, k_offset), 1);
          Wgmma<Element, 64>::ss(acc_dp, desc_advance(do_desc, q_offset),
                                 desc_advance(v_desc, k_offset), 1);
        }
      }
      wgmma_commit();
      // Deterministic mode: the previous tile's reductions are ordered before its release (in
      // this tile's flush) by a fence that waits for them while the tensor cores work.
      if (ordered) fence_acq_rel_gpu();
      wgmma_wait<0>();
      fence_registers(acc_s);
      fence_registers(acc_dp);

      // P = exp2(S * scale_log2 + bias - lse2) (0 where masked, for missing rows and for rows
      // with no visible unit, whose lse2 is +inf) and dS = P * (dP - delta), in place.
#pragma unroll
      for (int nj = 0; nj < kNTiles; ++nj) {
        const float2 col_bias = *reinterpret_cast<const float2*>(m.bias + nj * 8 + 2 * t4);
        const int2 col_last = *reinterpret_cast<const int2*>(m.last + nj * 8 + 2 * t4);
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int half = e >> 1;
          float s = fmaf(acc_s[nj * 4 + e], params.scale_log2, (e & 1) ? col_bias.y : col_bias.x);
          if (apply_mask) {
            const int query = q_first + row_in_block + 8 * half;
            if (((e & 1) ? col_last.y : col_last.x) > query + causal_shift) s = kNegInf;
          }
          const float p = fast_exp2(s - lse2[half]);
          acc_dp[nj * 4 + e] = p * (acc_dp[nj * 4 + e] - delta[half]);
          acc_s[nj * 4 + e] = p;
        }
      }
      // 16-bit fragments: the accumulators of n8 groups 2kk, 2kk + 1 are the A fragment of keys
      // [16kk, 16kk + 16); [0], [2] hold row g and [1], [3] row g + 8.
      uint32_t p_frag[kBlockN / 16][4];
      uint32_t ds_frag[kBlockN / 16][4];
#pragma unroll
      for (int kk = 0; kk < kBlockN / 16; ++kk) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          p_frag[kk][i] = pack_pair<Element>(acc_s[8 * kk + 2 * i], acc_s[8 * kk + 2 * i + 1]);
          ds_frag[kk][i] = pack_pair<Element>(acc_dp[8 * kk + 2 * i], acc_dp[8 * kk + 2 * i + 1]);
        }
      }
      // P and dS of this warpgroup's rows into the (kBlockM, kBlockN) tiles of this buffer:
      // column group 2kk + i / 2 is 16-byte chunk 2kk + i / 2 of the row.
      {
        unsigned char* p_tile = p_smem + buffer * Traits::kPBytes;
        unsigned char* ds_tile = ds_smem + buffer * Traits::kPBytes;
#pragma unroll
        for (int kk = 0; kk < kBlockN / 16; ++kk) {
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            const int row = row_in_block + 8 * (i & 1);
            const uint32_t offset = swizzled_128b<kBlockM>(row, 2 * kk + i / 2) + 4 * t4;
            *reinterpret_cast<uint32_t*>(p_tile + offset) = p_frag[kk][i];
            *reinterpret_cast<uint32_t*>(ds_tile + offset) = ds_frag[kk][i];
          }
        }
      }
      // The stores above become visible to wgmma (async proxy) of every consumer warpgroup.
      fence_proxy_async();
      named_barrier_sync(kConsumerBarrier, Traits::kNumConsumerThreads);

      // This thread's accumulator rows, read before the stage is released.
      int64_t row_offset[2];
      row_offset[0] = m.acc_row[key_row];
      row_offset[1] = m.acc_row[key_row + 8];

      // dQ += dS K (K read as (keys, D): MN-major B, like V in the forward's P V), and the
      // transposed product of this warpgroup over all kBlockM queries: A = P^T or dS^T (the
      // (queries, keys) tile read MN-major), B = dO or Q (read MN-major); k16 steps move 16
      // query rows (2048 bytes), a column block of D moves kBlockM * 128 bytes.
      // dS of this warpgroup's 64 rows as the K-major A of dQ += dS K (k16 steps of keys move 32
      // bytes inside the 128-byte row).
      const uint64_t ds_rows_desc = make_smem_desc(
          smem_addr(ds_smem + buffer * Traits::kPBytes) + warpgroup * 64 * 128);
      const uint64_t a_desc = make_smem_desc(
          smem_addr((dk_product ? ds_smem : p_smem) + buffer * Traits::kPBytes));
      const uint64_t b_desc = make_smem_desc(smem_addr(dk_product ? q_smem : do_smem));
#pragma unroll
      for (int cb = 0; cb < kColumnBlocks; ++cb) fence_registers(acc_dq[cb]);
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < kBlockN / 16; ++kk) {
#pragma unroll
        for (int cb = 0; cb < kColumnBlocks; ++cb) {
          Wgmma<Element, 64>::ss_nt(acc_dq[cb], desc_advance(ds_rows_desc, kk * 32),
                                    desc_advance(k_desc, cb * kBlockN * 128 + kk * 2048));
        }
      }
#pragma unroll
      for (int kk = 0; kk < kBlockM / 16; ++kk) {
#pragma unroll
        for (int cb = 0; cb < kColumnBlocks; ++cb) {
          const uint64_t a = desc_advance(a_desc, kk * 2048);
          const uint64_t b = desc_advance(b_desc, cb * kBlockM * 128 + kk * 2048);
          if (kk == 0) {
            Wgmma<Element, 64>::ss_tt_first(acc_t[cb], a, b);
          } else {
            Wgmma<Element, 64>::ss_tt(acc_t[cb], a, b, 1);
          }
        }
      }
      wgmma_commit();
      wgmma_wait<0>();
#pragma unroll
      for (int cb = 0; cb < kColumnBlocks; ++cb) {
        fence_registers(acc_dq[cb]);
        fence_registers(acc_t[cb]);
      }
      // This thread's reads of the stage (K, V, metadata) are complete: hand it back.
      mbarrier_arrive(smem_addr(&empty_bar[stage]));

      add_tile_product<Traits>(acc_t, region, counters, row_offset, slot, ordered, t4,
                               kWarpgroupBarrier + warpgroup);
      if constexpr (Traits::kNumConsumers == 1) {
        // One warpgroup: dV above, dK = dS^T Q now.
        const uint64_t ds_desc = make_smem_desc(smem_addr(ds_smem + buffer * Traits::kPBytes));
        const uint64_t q_mn_desc = make_smem_desc(smem_addr(q_smem));
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < kBlockM / 16; ++kk) {
#pragma unroll
          for (int cb = 0; cb < kColumnBlocks; ++cb) {
            const uint64_t a = desc_advance(ds_desc, kk * 2048);
            const uint64_t b = desc_advance(q_mn_desc, cb * kBlockM * 128 + kk * 2048);
            if (kk == 0) {
              Wgmma<Element, 64>::ss_tt_first(acc_t[cb], a, b);
            } else {
              Wgmma<Element, 64>::ss_tt(acc_t[cb], a, b, 1);
            }
          }
        }
        wgmma_commit();
        wgmma_wait<0>();
#pragma unroll
        for (int cb = 0; cb < kColumnBlocks; ++cb) fence_registers(acc_t[cb]);
        add_tile_product<Traits>(acc_t, params.dk_acc, params.sem_k, row_offset, slot_dk, ordered,
                                 t4, kWarpgroupBarrier + warpgroup);
      }
    }

    // Every read of Q and dO of this row is complete: the producer may load the next row.
    mbarrier_arrive(smem_addr(q_empty_bar));

    // dQ = scale * sum over the row's tiles of dS K, in the element type; rows past Lq are padding.
    char* dq_base = static_cast<char*>(params.dq) +
                    (batch * params.dq_batch_stride + head * params.dq_head_stride) * 2;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int query = q_first + row_in_block + half * 8;
      if (query >= params.seq_q) continue;
      uint32_t* row_ptr = reinterpret_cast<uint32_t*>(dq_base + query * params.dq_row_stride * 2);
#pragma unroll
      for (int cb = 0; cb < kColumnBlocks; ++cb) {
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          row_ptr[cb * 32 + j * 4 + t4] =
              pack_pair<Element>(acc_dq[cb][j * 4 + 2 * half] * params.scale,
                                 acc_dq[cb][j * 4 + 2 * half + 1] * params.scale);
        }
      }
    }
  }
  if (ordered) {
    fence_acq_rel_gpu();
    release_pending(slot, counters, kWarpgroupBarrier + warpgroup);
    if constexpr (Traits::kNumConsumers == 1) {
      release_pending(slot_dk, params.sem_k, kWarpgroupBarrier + warpgroup);
    }
  }
}

}  // namespace psa::cuda
