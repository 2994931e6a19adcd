// The planner on the GPU (SPEC 5): scores or a caller's level map to a plan, the similarity cap,
// and plan -> level map. One CTA per row (b, h, I); the per-row rules (ranking, interval ends,
// forced blocks, the cap level) come from common/planner_rules.h, shared with the CPU reference,
// and the thresholdbound crossings follow detail::threshold_crossings with the same sequential
// sums and a parallel count, so the two produce the same plan for the same scores.
#include <cstdint>

#include <cub/block/block_radix_sort.cuh>

#include "common/index_math.h"
#include "common/planner_rules.h"
#include "cuda/cuda_backend.h"
#include "cuda/cuda_utils.cuh"

namespace psa::cuda {
namespace {

constexpr int kRowThreads = 256;
constexpr int kWarpSize = 32;
constexpr int kRowWarps = kRowThreads / kWarpSize;
// Similarity cap kernel: one warp per key block.
constexpr int kCapThreads = 128;
// Sort keys past the visible blocks: they sort after every real key.
constexpr uint64_t kPadKey = ~uint64_t{0};

// Where the rows of a plan live: counts (B, Hq, Mq, 4) and blocks (B, Hq, Mq, Nk) int32.
struct PlanOut {
  int32_t* counts;
  int64_t counts_stride[4];
  int32_t* blocks;
  int64_t blocks_stride[4];
};

// The keys of one kv head, for the similarity cap: (B, Hkv, Lk, D) any strides.
struct KeyView {
  const void* data;
  int64_t stride[4];
  int64_t seq, head_dim;
  float thresholds[kNumPooledLevels];
};

struct PlannerParams {
  PlanOut plan;
  const float* scores;  // (B, Hq, Mq, Nk)
  int64_t scores_stride[4];
  const uint8_t* cap;   // (B, Hkv, Nk) contiguous, or null without the similarity cap
  int64_t batch, heads_q, heads_kv, num_q_blocks, num_k_blocks, seq_q, seq_k;
  int64_t block_m, block_n, tile_n;
  bool topk;
  double ends[kNumLevels];
  double min_full_ratio;
  bool causal;
  detail::ForcedBlocks forced;
};

struct LevelsParams {
  PlanOut plan;
  const uint8_t* levels;  // (B, Hq, Mq, Nk)
  int64_t levels_stride[4];
  KeyView keys;           // used only when `sim_cap`
  bool sim_cap;
  int64_t batch, heads_q, heads_kv, num_q_blocks, num_k_blocks, block_n;
};

struct ToLevelsParams {
  PlanOut plan;
  uint8_t* levels;
  int64_t levels_stride[4];
  int64_t heads_q, num_q_blocks, num_k_blocks;
};

__device__ __forceinline__ int64_t next_pow2(int64_t x) {
  int64_t p = 1;
  while (p < x) p <<= 1;
  return p;
}

// A 32-bit word whose ascending order is score descending (NaN as -inf, -0 as +0, as
// detail::ranks_before compares).
__device__ __forceinline__ uint32_t sort_word(float score) {
  float s = detail::score_rank_key(score);
  if (s == 0.0f) s = 0.0f;
  uint32_t bits = __float_as_uint(s);
  // Monotone map float -> uint32 (negative values reversed), then reversed for descending.
  bits = (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
  return ~bits;
}

// A 64-bit key whose ascending order is the planner's row order: score descending, ties to the
// lower J.
__device__ __forceinline__ uint64_t sort_key(float score, int64_t j) {
  return (static_cast<uint64_t>(sort_word(score)) << 32) | static_cast<uint32_t>(j);
}

// Rows of up to kRowThreads * kMaxSortItems blocks are sorted by cub::BlockRadixSort in
// registers; longer ones by the bitonic sort in shared memory.
constexpr int kMaxSortItems = 16;

// Sorts the visible blocks [0, n) of `row` into `keys` (ascending planner order; entry pos holds
// the J at rank pos) with a block radix sort over kItems keys per thread. Each key is the score
// word over J's bits, so keys are distinct and no tie depends on the sort's stability; only the
// 32 + bits(J) low bits are sorted.
template <int kItems>
__device__ void radix_sort_row(uint64_t* keys, const float* row, int64_t n, int64_t num_k_blocks) {
  using Sort = cub::BlockRadixSort<uint64_t, kRowThreads, kItems>;
  __shared__ typename Sort::TempStorage temp;
  const int index_bits =
      max(1, 32 - __clz(static_cast<int>(detail::max64(num_k_blocks - 1, 1))));
  uint64_t items[kItems];
#pragma unroll
  for (int i = 0; i < kItems; ++i) {
    const int pos = threadIdx.x * kItems + i;
    items[i] = pos < n ? (static_cast<uint64_t>(sort_word(row[pos])) << index_bits) |
                             static_cast<uint64_t>(pos)
                       : ~uint64_t{0};
  }
  Sort(temp).Sort(items, 0, 32 + index_bits);
  const uint64_t mask = (uint64_t{1} << index_bits) - 1;
#pragma unroll
  for (int i = 0; i < kItems; ++i) keys[threadIdx.x * kItems + i] = items[i] & mask;
  __syncthreads();
}

// Ascending bitonic sort of keys[0, n), n a power of two, by the whole CTA.
__device__ void bitonic_sort(uint64_t* keys, int64_t n) {
  for (int64_t k = 2; k <= n; k <<= 1) {
    for (int64_t j = k >> 1; j > 0; j >>= 1) {
      for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
        const int64_t partner = i ^ j;
        if (partner > i) {
          const uint64_t a = keys[i], b = keys[partner];
          const bool ascending = (i & k) == 0;
          if ((a > b) == ascending) {
            keys[i] = b;
            keys[partner] = a;
          }
        }
      }
      __syncthreads();
    }
  }
}

// Writes a row from its level per key block (`levels`, Nk values in {0, 1, 2, 4, 8}, shared
// memory): the level-1 blocks ascending, then level 2, 4, 8; entries past the total are -1, as the
// CPU reference writes them. Ordered compaction by warp ballots, blockDim.x blocks at a time.
__device__ void write_row(const PlanOut& plan, int64_t b, int64_t h, int64_t i,
                          const uint8_t* levels, int64_t num_k_blocks) {
  __shared__ int warp_counts[kRowWarps];
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  int32_t* counts = plan.counts + b * plan.counts_stride[0] + h * plan.counts_stride[1] +
                    i * plan.counts_stride[2];
  int32_t* blocks = plan.blocks + b * plan.blocks_stride[0] + h * plan.blocks_stride[1] +
                    i * plan.blocks_stride[2];
  const int64_t bs = plan.blocks_stride[3];
  int64_t written = 0;  // identical in every thread
  for (int l = 0; l < kNumLevels; ++l) {
    const int factor = detail::level_factor(l);
    const int64_t level_start = written;
    for (int64_t chunk = 0; chunk < num_k_blocks; chunk += blockDim.x) {
      const int64_t j = chunk + threadIdx.x;
      const bool flag = j < num_k_blocks && levels[j] == factor;
      const unsigned ballot = __ballot_sync(0xffffffffu, flag);
      if (lane == 0) warp_counts[warp] = __popc(ballot);
      __syncthreads();
      int before = 0, total = 0;
      for (int w = 0; w < kRowWarps; ++w) {
        before += w < warp ? warp_counts[w] : 0;
        total += warp_counts[w];
      }
      if (flag) {
        const int64_t slot = written + before + __popc(ballot & ((1u << lane) - 1u));
        blocks[slot * bs] = static_cast<int32_t>(j);
      }
      written += total;
      __syncthreads();
    }
    if (threadIdx.x == 0) counts[l * plan.counts_stride[3]] = static_cast<int32_t>(written - level_start);
  }
  for (int64_t n = written + threadIdx.x; n < num_k_blocks; n += blockDim.x) blocks[n * bs] = -1;
}

// Groups of the finest pooled level (f = 2) in the largest block (256): scratch per warp.
constexpr int kMaxGroups = 128;

// cos(first, last) of two rows of D elements in double, summed in d order with separate roundings
// (__dmul_rn / __dadd_rn, no fused multiply-add), exactly as the CPU reference computes it.
template <typename T>
__device__ double row_cosine(const T* first, const T* last, int64_t stride_d, int64_t head_dim) {
  double dot = 0.0, n1 = 0.0, n2 = 0.0;
  for (int64_t d = 0; d < head_dim; ++d) {
    const double x = to_float(first[d * stride_d]);
    const double y = to_float(last[d * stride_d]);
    dot = __dadd_rn(dot, __dmul_rn(x, y));
    n1 = __dadd_rn(n1, __dmul_rn(x, x));
    n2 = __dadd_rn(n2, __dmul_rn(y, y));
  }
  const double norms = __dmul_rn(sqrt(n1), sqrt(n2));
  return norms > 0.0 ? __ddiv_rn(dot, norms) : 0.0;
}

// The similarity cap of key block `kblock` of (b, hkv), computed by one warp: for f = 2, 4, 8, the
// mean over the groups of f tokens inside the block of the cosine of the group's first and last
// real token (a one-token group counts 1, a zero vector 0). Lanes take groups; the cosines go
// through `scratch` (kNumPooledLevels x kMaxGroups doubles) so that one lane sums them in group
// order, as the CPU does: the sims, and so the cap, are bit-identical to the reference.
template <typename T>
__device__ int warp_block_cap(const KeyView& k, int64_t b, int64_t hkv, int64_t kblock,
                              int64_t block_n, double* scratch) {
  const int lane = threadIdx.x % kWarpSize;
  const T* base = static_cast<const T*>(k.data) + b * k.stride[0] + hkv * k.stride[1];
  const int64_t begin = kblock * block_n;
  const int64_t end = detail::min64(begin + block_n, k.seq);
  int64_t groups[kNumPooledLevels];
  for (int l = 0; l < kNumPooledLevels; ++l) {
    const int64_t f = int64_t{2} << l;  // pooled levels: factors 2, 4, 8
    groups[l] = detail::ceil_div(end - begin, f);
    for (int64_t g = lane; g < groups[l]; g += kWarpSize) {
      const int64_t first = begin + g * f;
      const int64_t last = detail::min64(first + f, end) - 1;
      scratch[l * kMaxGroups + g] =
          last == first ? 1.0
                        : row_cosine(base + first * k.stride[2], base + last * k.stride[2],
                                     k.stride[3], k.head_dim);
    }
  }
  __syncwarp();
  int cap = 1;
  if (lane == 0) {
    double sims[kNumPooledLevels];
    for (int l = 0; l < kNumPooledLevels; ++l) {
      double sum = 0.0;
      for (int64_t g = 0; g < groups[l]; ++g) sum = __dadd_rn(sum, scratch[l * kMaxGroups + g]);
      sims[l] = __ddiv_rn(sum, static_cast<double>(groups[l]));
    }
    cap = detail::similarity_cap_level(sims, k.thresholds);
  }
  cap = __shfl_sync(0xffffffffu, cap, 0);
  __syncwarp();  // scratch may be reused by the warp's next block
  return cap;
}

// Tokens of a key block staged at a time by the similarity cap kernel: a multiple of the largest
// pool factor, so that every group of every level lies inside one chunk.
constexpr int kCapChunk = 64;

// Shared memory of similarity_cap_kernel: a chunk of tokens (rows padded by one element, so that
// threads reading rows f apart hit different banks) and the cosines of every group.
__host__ __device__ inline size_t cap_chunk_stride(int64_t head_dim) { return head_dim + 1; }
template <typename T>
size_t cap_smem_bytes(int64_t block_n, int64_t head_dim) {
  const int64_t rows = block_n < kCapChunk ? block_n : kCapChunk;
  const size_t scratch = kNumPooledLevels * kMaxGroups * sizeof(double);
  const size_t tokens = static_cast<size_t>(rows) * cap_chunk_stride(head_dim) * sizeof(T);
  return scratch + (tokens + 15) / 16 * 16;
}

// cap: (B, Hkv, Nk) uint8 contiguous; one CTA per (b, hkv, J). The block's tokens go through
// shared memory kCapChunk at a time in coalesced loads (warp w takes tokens w, w + 4, ..., lanes
// the features); then thread t computes the cosine of one group of one level of the chunk from
// shared memory in d order with the CPU's roundings, so the sims are bit-identical to the
// reference (and to warp_block_cap); thread 0 sums them in group order. The warp-per-block kernel
// this replaces read each token row by a lane of its own, 32 cache lines a load.
template <typename T>
__global__ void __launch_bounds__(kCapThreads)
    similarity_cap_kernel(uint8_t* cap, KeyView k, int64_t heads_kv, int64_t num_k_blocks,
                          int64_t block_n) {
  extern __shared__ __align__(16) unsigned char smem[];
  double* cosines = reinterpret_cast<double*>(smem);  // (kNumPooledLevels, kMaxGroups)
  T* tokens = reinterpret_cast<T*>(cosines + kNumPooledLevels * kMaxGroups);
  const int64_t index = blockIdx.x;
  const int64_t kblock = index % num_k_blocks;
  const int64_t hkv = (index / num_k_blocks) % heads_kv;
  const int64_t b = index / (num_k_blocks * heads_kv);
  const T* base = static_cast<const T*>(k.data) + b * k.stride[0] + hkv * k.stride[1];
  const int64_t begin = kblock * block_n;
  const int64_t end = detail::min64(begin + block_n, k.seq);
  const int64_t stride = static_cast<int64_t>(cap_chunk_stride(k.head_dim));
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  constexpr int kWarps = kCapThreads / kWarpSize;

  for (int64_t c0 = begin; c0 < end; c0 += kCapChunk) {
    const int64_t c1 = detail::min64(c0 + kCapChunk, end);
    for (int64_t t = c0 + warp; t < c1; t += kWarps) {
      const T* row = base + t * k.stride[2];
      for (int64_t d = lane; d < k.head_dim; d += kWarpSize) {
        tokens[(t - c0) * stride + d] = row[d * k.stride[3]];
      }
    }
    __syncthreads();
    // Thread t: group t of factor 2, then of 4, then of 8 (the chunk holds at most 32 + 16 + 8).
    int slot = threadIdx.x;
    for (int l = 0; l < kNumPooledLevels; ++l) {
      const int64_t f = int64_t{2} << l;
      const int64_t groups = detail::ceil_div(c1 - c0, f);
      if (slot >= 0 && slot < groups) {
        const int64_t first = slot * f;
        const int64_t last = detail::min64(first + f, c1 - c0) - 1;
        double value = 1.0;  // a one-token group
        if (last != first) {
          const T* x = tokens + first * stride;
          const T* y = tokens + last * stride;
          double dot = 0.0, n1 = 0.0, n2 = 0.0;
          for (int64_t d = 0; d < k.head_dim; ++d) {
            const double a = to_float(x[d]);
            const double bb = to_float(y[d]);
            dot = __dadd_rn(dot, __dmul_rn(a, bb));
            n1 = __dadd_rn(n1, __dmul_rn(a, a));
            n2 = __dadd_rn(n2, __dmul_rn(bb, bb));
          }
          const double norms = __dmul_rn(sqrt(n1), sqrt(n2));
          value = norms > 0.0 ? __ddiv_rn(dot, norms) : 0.0;
        }
        cosines[l * kMaxGroups + (c0 - begin) / f + slot] = value;
      }
      slot -= static_cast<int>(groups);
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    double sims[kNumPooledLevels];
    for (int l = 0; l < kNumPooledLevels; ++l) {
      const int64_t f = int64_t{2} << l;
      const int64_t groups = detail::ceil_div(end - begin, f);
      double sum = 0.0;
      for (int64_t g = 0; g < groups; ++g) sum = __dadd_rn(sum, cosines[l * kMaxGroups + g]);
      sims[l] = __ddiv_rn(sum, static_cast<double>(groups));
    }
    cap[index] = static_cast<uint8_t>(detail::similarity_cap_level(sims, k.thresholds));
  }
}

// One CTA per row (b, h, I). Dynamic shared memory: sort keys (sort_slots(Nk) x u64), cumulative
// sums (Nk x f64), the row's scores (Nk x f32), its scores in sorted order (Nk x f32), levels
// (Nk x u8). kItems > 0: the radix sort with kItems keys per thread; 0: the bitonic sort.
template <int kItems>
__global__ void __launch_bounds__(kRowThreads) plan_from_scores_kernel(PlannerParams p) {
  extern __shared__ __align__(16) unsigned char smem[];
  __shared__ int64_t level_ends[kNumLevels];
  __shared__ int crossing_count[kNumLevels];
  const int64_t nk = p.num_k_blocks;
  const int64_t row_index = blockIdx.x;
  const int64_t i = row_index % p.num_q_blocks;
  const int64_t h = (row_index / p.num_q_blocks) % p.heads_q;
  const int64_t b = row_index / (p.num_q_blocks * p.heads_q);

  // Visible blocks are a prefix [0, V): block_visible is monotone in J.
  auto visible = [&](int64_t j) {
    return !p.causal || detail::block_visible(p.seq_q, p.seq_k, p.block_m, p.block_n, i, j);
  };
  int64_t num_visible = nk;
  if (p.causal) {
    num_visible = 0;
    for (int64_t chunk = 0; chunk < nk; chunk += blockDim.x) {
      const int64_t j = chunk + threadIdx.x;
      num_visible += __syncthreads_count(j < nk && visible(j));
    }
  }
  const int64_t padded = next_pow2(num_visible);
  uint64_t* keys = reinterpret_cast<uint64_t*>(smem);
  double* cumulative =
      reinterpret_cast<double*>(keys + (kItems > 0 ? kRowThreads * kItems : next_pow2(nk)));
  float* row = reinterpret_cast<float*>(cumulative + nk);
  float* sorted = row + nk;
  uint8_t* levels = reinterpret_cast<uint8_t*>(sorted + nk);

  const float* scores = p.scores + b * p.scores_stride[0] + h * p.scores_stride[1] +
                        i * p.scores_stride[2];
  for (int64_t j = threadIdx.x; j < nk; j += blockDim.x) {
    row[j] = scores[j * p.scores_stride[3]];
    levels[j] = 0;
  }
  __syncthreads();
  if (num_visible > 0) {
    if constexpr (kItems > 0) {
      radix_sort_row<kItems>(keys, row, num_visible, nk);
    } else {
      for (int64_t j = threadIdx.x; j < padded; j += blockDim.x) {
        keys[j] = j < num_visible ? sort_key(row[j], j) : kPadKey;
      }
      __syncthreads();
      bitonic_sort(keys, padded);
    }

    if (p.topk) {
      if (threadIdx.x == 0) {
        detail::topk_level_ends(level_ends, num_visible, p.ends, p.block_n, p.tile_n);
      }
    } else {
      for (int64_t pos = threadIdx.x; pos < num_visible; pos += blockDim.x) {
        sorted[pos] = row[static_cast<uint32_t>(keys[pos])];
      }
      if (threadIdx.x < kNumLevels) crossing_count[threadIdx.x] = 0;
      __syncthreads();
      // detail::threshold_crossings, split: the cumulative sums stay sequential in double in
      // sorted order (so that every E_k is bit-identical to the CPU's), then the counts
      // #{k : E_k <= e_l + slack}, which do not depend on order, are taken in parallel. Serial
      // on one thread, the divisions cost ~20 us per row of Nk = 256.
      if (threadIdx.x == 0) {
        double c = 0.0;
        for (int64_t k = 0; k < num_visible; ++k) {
          c += static_cast<double>(sorted[k]);
          cumulative[k] = c;
        }
      }
      __syncthreads();
      const double total = cumulative[num_visible - 1];
      const bool uniform = !(total > 0.0 && total <= detail::kMaxFiniteDouble);
      int counts[kNumLevels] = {0, 0, 0, 0};
      for (int64_t k = threadIdx.x; k < num_visible; k += blockDim.x) {
        const double e_k = uniform ? static_cast<double>(k + 1) / static_cast<double>(num_visible)
                                   : cumulative[k] / total;
        for (int l = 0; l < kNumLevels; ++l) {
          counts[l] += (e_k <= p.ends[l] + detail::kThresholdSlack) ? 1 : 0;
        }
      }
      for (int l = 0; l < kNumLevels; ++l) {
        if (counts[l] > 0) atomicAdd(&crossing_count[l], counts[l]);
      }
      __syncthreads();
      if (threadIdx.x == 0) {
        int64_t crossing[kNumLevels];
        for (int l = 0; l < kNumLevels; ++l) crossing[l] = crossing_count[l];
        detail::thresholdbound_level_ends(level_ends, crossing, num_visible, p.min_full_ratio,
                                          p.block_n, p.tile_n);
      }
    }
    __syncthreads();
    for (int64_t pos = threadIdx.x; pos < level_ends[kNumLevels - 1]; pos += blockDim.x) {
      levels[static_cast<uint32_t>(keys[pos])] =
          static_cast<uint8_t>(detail::level_of_position(level_ends, pos));
    }
    __syncthreads();
    // The cap, then the forced level-1 blocks (visible only): text columns and rows, diagonal,
    // sink, the best.
    const int64_t best = static_cast<uint32_t>(keys[0]);
    const uint8_t* cap_row =
        p.cap != nullptr ? p.cap + (b * p.heads_kv + h / (p.heads_q / p.heads_kv)) * nk : nullptr;
    for (int64_t j = threadIdx.x; j < nk; j += blockDim.x) {
      int level = levels[j];
      if (cap_row != nullptr) level = detail::apply_cap(level, cap_row[j]);
      if (j < num_visible && (detail::block_forced_full(p.forced, i, j) || j == best)) level = 1;
      levels[j] = static_cast<uint8_t>(level);
    }
    __syncthreads();
  }
  write_row(p.plan, b, h, i, levels, nk);
}

// One CTA per row. Level values outside {0, 1, 2, 4, 8} become 0 (the public API has no way to
// report a device-side error without a sync). With the cap, each warp computes the cap of the
// blocks it owns that are kept at a pooled level (level > 1; the cap cannot change 0 or 1).
template <typename T>
__global__ void __launch_bounds__(kRowThreads) plan_from_levels_kernel(LevelsParams p) {
  extern __shared__ __align__(16) unsigned char smem[];
  uint8_t* levels = smem;
  const int64_t nk = p.num_k_blocks;
  const int64_t row_index = blockIdx.x;
  const int64_t i = row_index % p.num_q_blocks;
  const int64_t h = (row_index / p.num_q_blocks) % p.heads_q;
  const int64_t b = row_index / (p.num_q_blocks * p.heads_q);
  const uint8_t* in = p.levels + b * p.levels_stride[0] + h * p.levels_stride[1] +
                      i * p.levels_stride[2];
  for (int64_t j = threadIdx.x; j < nk; j += blockDim.x) {
    const int level = in[j * p.levels_stride[3]];
    levels[j] = static_cast<uint8_t>(detail::is_valid_level(level) ? level : 0);
  }
  __syncthreads();
  if (p.sim_cap) {
    __shared__ double scratch[kRowWarps][kNumPooledLevels * kMaxGroups];
    const int64_t hkv = h / (p.heads_q / p.heads_kv);
    const int warp = threadIdx.x / kWarpSize;
    for (int64_t j = warp; j < nk; j += kRowWarps) {
      const int level = levels[j];
      if (level <= 1) continue;
      const int cap = warp_block_cap<T>(p.keys, b, hkv, j, p.block_n, scratch[warp]);
      if (threadIdx.x % kWarpSize == 0) levels[j] = static_cast<uint8_t>(detail::apply_cap(level, cap));
    }
    __syncthreads();
  }
  write_row(p.plan, b, h, i, levels, nk);
}

// One CTA per row: zeros, then the level of every listed block. Counts are clamped so that the
// row stays inside Nk entries and out-of-range block indices are skipped (the public API checks
// the plan's contents before calling).
__global__ void __launch_bounds__(kRowThreads) plan_to_levels_kernel(ToLevelsParams p) {
  const int64_t nk = p.num_k_blocks;
  const int64_t row_index = blockIdx.x;
  const int64_t i = row_index % p.num_q_blocks;
  const int64_t h = (row_index / p.num_q_blocks) % p.heads_q;
  const int64_t b = row_index / (p.num_q_blocks * p.heads_q);
  uint8_t* out = p.levels + b * p.levels_stride[0] + h * p.levels_stride[1] +
                 i * p.levels_stride[2];
  const int64_t ls = p.levels_stride[3];
  for (int64_t j = threadIdx.x; j < nk; j += blockDim.x) out[j * ls] = 0;
  __syncthreads();
  const int32_t* counts = p.plan.counts + b * p.plan.counts_stride[0] +
                          h * p.plan.counts_stride[1] + i * p.plan.counts_stride[2];
  const int32_t* blocks = p.plan.blocks + b * p.plan.blocks_stride[0] +
                          h * p.plan.blocks_stride[1] + i * p.plan.blocks_stride[2];
  int64_t start = 0;
  for (int l = 0; l < kNumLevels; ++l) {
    const int64_t count = detail::max64(counts[l * p.plan.counts_stride[3]], 0);
    const int64_t end = detail::min64(start + count, nk);
    for (int64_t n = start + threadIdx.x; n < end; n += blockDim.x) {
      const int64_t j = blocks[n * p.plan.blocks_stride[3]];
      if (j >= 0 && j < nk) out[j * ls] = static_cast<uint8_t>(detail::level_factor(l));
    }
    start = end;
  }
}

PlanOut plan_out(const PlanView& plan) {
  PlanOut o;
  o.counts = static_cast<int32_t*>(plan.counts.data);
  o.blocks = static_cast<int32_t*>(plan.blocks.data);
  for (int d = 0; d < 4; ++d) {
    o.counts_stride[d] = plan.counts.stride[d];
    o.blocks_stride[d] = plan.blocks.stride[d];
  }
  return o;
}

KeyView key_view(const TensorView& k, const Config& config) {
  KeyView v{};
  v.data = k.data;
  for (int d = 0; d < 4; ++d) v.stride[d] = k.stride[d];
  v.seq = k.shape[2];
  v.head_dim = k.shape[3];
  for (int l = 0; l < kNumPooledLevels; ++l) v.thresholds[l] = config.sim_thresholds[l];
  return v;
}

// Opts a kernel into more than the default 48 KiB of dynamic shared memory when a row needs it,
// and fails with a clear message when even the device's opt-in limit is too small.
template <typename Kernel>
Status prepare_shared_memory(Kernel kernel, size_t bytes, const char* what, int64_t num_k_blocks) {
  int device = 0, limit = 0;
  PSA_RETURN_IF_ERROR(cuda_check(cudaGetDevice(&device), "cudaGetDevice"));
  PSA_RETURN_IF_ERROR(cuda_check(
      cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device),
      "cudaDeviceGetAttribute"));
  // The kernel's static shared memory (the radix sort's) counts against the same limit.
  cudaFuncAttributes attributes{};
  PSA_RETURN_IF_ERROR(
      cuda_check(cudaFuncGetAttributes(&attributes, kernel), "cudaFuncGetAttributes"));
  const size_t total = bytes + attributes.sharedSizeBytes;
  if (total > static_cast<size_t>(limit)) {
    return unsupported(std::string(what) + ": a row of Nk = " + std::to_string(num_k_blocks) +
                       " key blocks needs " + std::to_string(total) +
                       " bytes of shared memory, more than this device's " +
                       std::to_string(limit));
  }
  return cuda_check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(bytes)),
                    "cudaFuncSetAttribute");
}

template <typename T>
Status launch_similarity_cap(uint8_t* cap, const TensorView& k, const Config& config,
                             cudaStream_t stream) {
  const int64_t num_k_blocks = detail::ceil_div(k.shape[2], config.block_n);
  const int64_t grid = k.shape[0] * k.shape[1] * num_k_blocks;
  if (grid > kMaxGridX) return unsupported("similarity cap: too many key blocks for one launch");
  const size_t smem = cap_smem_bytes<T>(config.block_n, k.shape[3]);
  PSA_RETURN_IF_ERROR(prepare_shared_memory(similarity_cap_kernel<T>, smem, "similarity cap",
                                            num_k_blocks));
  similarity_cap_kernel<T><<<static_cast<unsigned>(grid), kCapThreads, smem, stream>>>(
      cap, key_view(k, config), k.shape[1], num_k_blocks, config.block_n);
  return check_launch("similarity_cap_kernel");
}

Status check_key_dtype(const TensorView& k) {
  if (k.dtype == DType::kFloat16 || k.dtype == DType::kBFloat16 || k.dtype == DType::kFloat32) {
    return Status();
  }
  return unsupported(std::string("CUDA similarity cap supports k in float16, bfloat16 and float32, got ") +
                     dtype_name(k.dtype));
}

size_t cap_bytes(int64_t batch, int64_t heads, int64_t num_k_blocks) {
  // Rounded to 256 bytes so that a caller can place other buffers after it.
  constexpr size_t kAlign = 256;
  const size_t bytes = static_cast<size_t>(batch * heads * num_k_blocks);
  return (bytes + kAlign - 1) / kAlign * kAlign;
}

template <int kItems>
Status launch_plan_from_scores(const PlannerParams& p, int64_t rows, size_t smem,
                               cudaStream_t stream) {
  PSA_RETURN_IF_ERROR(prepare_shared_memory(plan_from_scores_kernel<kItems>, smem,
                                            "plan_from_scores", p.num_k_blocks));
  plan_from_scores_kernel<kItems><<<static_cast<unsigned>(rows), kRowThreads, smem, stream>>>(p);
  return check_launch("plan_from_scores_kernel");
}

}  // namespace

// The workspace holds the similarity cap (B, Hkv, Nk) uint8; Hkv <= Hq bounds it by (B, Hq, Nk).
size_t plan_workspace_bytes(const PlanShape& shape) {
  return cap_bytes(shape.batch, shape.heads, shape.num_k_blocks);
}

Status plan_from_scores(PlanView plan, const TensorView& scores, const TensorView& k,
                        const Config& config, void* workspace, size_t workspace_bytes,
                        Stream stream) {
  const int64_t batch = scores.shape[0], heads_q = scores.shape[1];
  const int64_t num_q_blocks = scores.shape[2], num_k_blocks = scores.shape[3];
  const int64_t rows = batch * heads_q * num_q_blocks;
  if (rows == 0 || num_k_blocks == 0) return Status();
  if (scores.dtype != DType::kFloat32) {
    return unsupported(std::string("CUDA plan_from_scores needs float32 scores, got ") +
                       dtype_name(scores.dtype));
  }
  if (rows > kMaxGridX) return unsupported("plan_from_scores: too many rows for one launch");
  DeviceGuard guard(scores.device_index);
  PSA_RETURN_IF_ERROR(guard.status());
  const cudaStream_t s = to_cuda_stream(stream);

  PlannerParams p{};
  p.plan = plan_out(plan);
  p.scores = static_cast<const float*>(scores.data);
  for (int d = 0; d < 4; ++d) p.scores_stride[d] = scores.stride[d];
  p.batch = batch;
  p.heads_q = heads_q;
  p.heads_kv = heads_q;
  p.num_q_blocks = num_q_blocks;
  p.num_k_blocks = num_k_blocks;
  p.seq_q = plan.seq_q;
  p.seq_k = plan.seq_k;
  p.block_m = config.block_m;
  p.block_n = config.block_n;
  p.tile_n = config.tile_n;
  p.topk = config.mode == PlanMode::kTopK;
  for (int l = 0; l < kNumLevels; ++l) p.ends[l] = config.ends[l];
  p.min_full_ratio = config.min_full_ratio;
  p.causal = config.causal;
  p.forced.seq_q = plan.seq_q;
  p.forced.seq_k = plan.seq_k;
  p.forced.block_m = config.block_m;
  p.forced.block_n = config.block_n;
  p.forced.text_len = config.text_len;
  p.forced.text_at_end = config.text_position == TextPosition::kEnd;
  p.forced.causal = config.causal;
  p.forced.keep_first_block = config.keep_first_block;

  if (config.sim_cap) {
    PSA_RETURN_IF_ERROR(check_key_dtype(k));
    p.heads_kv = k.shape[1];
    const size_t needed = cap_bytes(batch, p.heads_kv, num_k_blocks);
    if (workspace == nullptr || workspace_bytes < needed) {
      return invalid_argument("plan_from_scores with the similarity cap needs a workspace of " +
                              std::to_string(needed) + " bytes, got " +
                              std::to_string(workspace_bytes));
    }
    uint8_t* cap = static_cast<uint8_t*>(workspace);
    switch (k.dtype) {
      case DType::kFloat16: PSA_RETURN_IF_ERROR(launch_similarity_cap<__half>(cap, k, config, s)); break;
      case DType::kBFloat16:
        PSA_RETURN_IF_ERROR(launch_similarity_cap<__nv_bfloat16>(cap, k, config, s));
        break;
      default: PSA_RETURN_IF_ERROR(launch_similarity_cap<float>(cap, k, config, s)); break;
    }
    p.cap = cap;
  }

  // The fewest keys per thread of the radix sort that hold the row (measured on an H200: the
  // bitonic sort took 0.13 ms for Wan2.1 1.3B's 3072 rows of 512 blocks, kernel_notes.md).
  int items = 1;
  while (items <= kMaxSortItems && kRowThreads * items < num_k_blocks) items *= 2;
  int64_t slots = kRowThreads * static_cast<int64_t>(items);
  if (items > kMaxSortItems) {
    items = 0;
    for (slots = 1; slots < num_k_blocks;) slots <<= 1;
  }
  const size_t smem = static_cast<size_t>(slots) * sizeof(uint64_t) +
                      static_cast<size_t>(num_k_blocks) * (sizeof(double) + 2 * sizeof(float) + 1);
  switch (items) {
    case 1: return launch_plan_from_scores<1>(p, rows, smem, s);
    case 2: return launch_plan_from_scores<2>(p, rows, smem, s);
    case 4: return launch_plan_from_scores<4>(p, rows, smem, s);
    case 8: return launch_plan_from_scores<8>(p, rows, smem, s);
    case 16: return launch_plan_from_scores<16>(p, rows, smem, s);
    default: return launch_plan_from_scores<0>(p, rows, smem, s);
  }
}

Status plan_from_levels(PlanView plan, const TensorView& levels, const TensorView& k,
                        const Config& config, Stream stream) {
  const int64_t rows = levels.shape[0] * levels.shape[1] * levels.shape[2];
  const int64_t num_k_blocks = levels.shape[3];
  if (rows == 0 || num_k_blocks == 0) return Status();
  if (rows > kMaxGridX) return unsupported("plan_from_levels: too many rows for one launch");
  DeviceGuard guard(levels.device_index);
  PSA_RETURN_IF_ERROR(guard.status());
  LevelsParams p{};
  p.plan = plan_out(plan);
  p.levels = static_cast<const uint8_t*>(levels.data);
  for (int d = 0; d < 4; ++d) p.levels_stride[d] = levels.stride[d];
  p.sim_cap = config.sim_cap;
  p.batch = levels.shape[0];
  p.heads_q = levels.shape[1];
  p.heads_kv = levels.shape[1];
  p.num_q_blocks = levels.shape[2];
  p.num_k_blocks = num_k_blocks;
  p.block_n = config.block_n;
  DType key_dtype = DType::kFloat16;
  if (config.sim_cap) {
    PSA_RETURN_IF_ERROR(check_key_dtype(k));
    p.keys = key_view(k, config);
    p.heads_kv = k.shape[1];
    key_dtype = k.dtype;
  }
  const size_t smem = static_cast<size_t>(num_k_blocks);
  const cudaStream_t s = to_cuda_stream(stream);
  switch (key_dtype) {
    case DType::kBFloat16:
      PSA_RETURN_IF_ERROR(prepare_shared_memory(plan_from_levels_kernel<__nv_bfloat16>, smem,
                                                "plan_from_levels", num_k_blocks));
      plan_from_levels_kernel<__nv_bfloat16><<<static_cast<unsigned>(rows), kRowThreads, smem, s>>>(p);
      break;
    case DType::kFloat32:
      PSA_RETURN_IF_ERROR(prepare_shared_memory(plan_from_levels_kernel<float>, smem,
                                                "plan_from_levels", num_k_blocks));
      plan_from_levels_kernel<float><<<static_cast<unsigned>(rows), kRowThreads, smem, s>>>(p);
      break;
    default:
      PSA_RETURN_IF_ERROR(prepare_shared_memory(plan_from_levels_kernel<__half>, smem,
                                                "plan_from_levels", num_k_blocks));
      plan_from_levels_kernel<__half><<<static_cast<unsigned>(rows), kRowThreads, smem, s>>>(p);
      break;
  }
  return check_launch("plan_from_levels_kernel");
}

Status plan_to_levels(TensorView levels, const PlanView& plan, Stream stream) {
  const int64_t rows = plan.batch() * plan.heads() * plan.num_q_blocks();
  if (rows == 0 || plan.num_k_blocks() == 0) return Status();
  if (rows > kMaxGridX) return unsupported("plan_to_levels: too many rows for one launch");
  DeviceGuard guard(levels.device_index);
  PSA_RETURN_IF_ERROR(guard.status());
  ToLevelsParams p{};
  p.plan = plan_out(plan);
  p.levels = static_cast<uint8_t*>(levels.data);
  for (int d = 0; d < 4; ++d) p.levels_stride[d] = levels.stride[d];
  p.heads_q = plan.heads();
  p.num_q_blocks = plan.num_q_blocks();
  p.num_k_blocks = plan.num_k_blocks();
  plan_to_levels_kernel<<<static_cast<unsigned>(rows), kRowThreads, 0, to_cuda_stream(stream)>>>(p);
  return check_launch("plan_to_levels_kernel");
}

}  // namespace psa::cuda
