// Benchmark of the CUDA stages on the model shapes (PERFORMANCE.md method): bf16 q, k, v, two input
// sets rotated so that repeated runs do not sit in L2, CUDA-event timing, median of --iters runs
// after --warmup runs, every output checked once (poisoned before the first run, then all finite).
//
// Inputs (--inputs): "structured" (default) takes q, k, v from the video-DiT-like workload
// generator (WORKLOADS.md; seeds 0 and 1 for the two sets) on each model's token grid, so that the
// estimator and planner see video-like attention; "random" takes i.i.d. normal values.
//
// Rows (--plans):
//   full, only8x          every block level 1 / every block level 8 (density 1/8);
//   d0.10, d0.15, d0.30   fixed per-level fractions of a row's blocks (the topk mixes below). With
//                         --fixed-plans scores (the default on structured inputs) a row's blocks
//                         are ranked by the estimator's scores on the inputs (the top f1 * Nk get
//                         level 1, the next f2 * Nk level 2, ...), so the kernel sees video-like,
//                         irregular plans; with "random" the ranking is a random permutation;
//   call                  the whole call at the plug-and-play default config (block 128 x 64, topk
//                         .1/.15/.15/.35) with block_n set to each --block-n: build_pyramid,
//                         estimate_importance, plan_from_scores and attention_forward, each stage
//                         between its own events;
//   presets               the whole call, stage by stage, for every shipped sparse preset on the
//                         shape of its model (Wan2.2 5B and CogVideoX1.5 have shapes of their own,
//                         used by the preset rows only).
// Prints a table; --json PATH writes the rows as JSON (bench/bench.py adds cuDNN's times).
//
// Usage: psa_bench [--json PATH] [--shapes wan1.3b,cogvideox,wan14b,wan2.2-5b,cogvideox1.5]
//                  [--plans full,only8x,d0.10,d0.15,d0.30,call,presets] [--block-n 64,128]
//                  [--inputs structured|random] [--fixed-plans scores|random]
//                  [--iters N] [--warmup N]
#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "psa/psa.h"

namespace {

// A model's attention shape and token grid (WORKLOADS.md).
struct Shape {
  std::string name;
  int64_t batch, heads, head_dim;
  int64_t frames, height, width;
  int64_t text_len;                   // text tokens first
  std::array<int64_t, 3> rope_split;  // all zero: Wan's 44/42/42 proportions
  std::vector<std::string> preset_models;
  bool presets_only;  // a shape of its own for some presets, not one of the three bench shapes
  int64_t seq() const { return text_len + frames * height * width; }
};
const Shape kShapes[] = {
    {"wan1.3b", 1, 12, 128, 21, 30, 52, 0, {0, 0, 0}, {"Wan2.1_1.3b", "Wan2.1_1.3b_4steps"}, false},
    {"cogvideox", 1, 48, 64, 13, 30, 45, 226, {16, 24, 24}, {"CogVideo_5b"}, false},
    {"wan14b", 1, 40, 128, 21, 45, 80, 0, {0, 0, 0}, {"Wan2.1_14b", "Wan2.2_A14B"}, false},
    {"wan2.2-5b", 1, 24, 128, 31, 22, 40, 0, {0, 0, 0}, {"Wan2.2_5B"}, true},
    {"cogvideox1.5", 1, 48, 64, 11, 48, 85, 226, {16, 24, 24}, {"CogVideo1.5_5b"}, true},
};

// A fixed plan family: the fraction of a row's blocks at levels 1, 2, 4, 8 (the rest skipped).
struct PlanSpec {
  std::string name;
  std::array<double, 4> fraction;
};
// Fractions from the topk ends of SPEC 9 (ends e1..e8 -> fractions e1, e2-e1, e4-e2, e8-e4):
// d0.15 is the plug-and-play default .10/.15/.15/.35; d0.10 uses .05/.10/.15/.30; d0.30 uses
// .25/.35/.40/.50. Density = f1 + f2/2 + f4/4 + f8/8, e.g. .10 + .05/2 + 0 + .20/8 = 0.15.
const PlanSpec kPlans[] = {
    {"full", {1.0, 0.0, 0.0, 0.0}},
    {"only8x", {0.0, 0.0, 0.0, 1.0}},
    {"d0.10", {0.05, 0.05, 0.05, 0.15}},
    {"d0.15", {0.10, 0.05, 0.00, 0.20}},
    {"d0.30", {0.25, 0.10, 0.05, 0.10}},
};

// One timed configuration. Stage times are medians in ms; a fixed plan has only attention_ms.
struct Row {
  std::string shape, plan, order, preset;
  int block_n = 0;
  double density = 0.0;
  std::array<double, 5> level_fraction = {};
  bool whole_call = false;
  double pyramid_ms = 0.0, estimate_ms = 0.0, planner_ms = 0.0, attention_ms = 0.0;
  double total_ms = 0.0;  // median of the per-run sums
  double dense_tflops = 0.0, effective_tflops = 0.0;  // of the attention kernel
};

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (!item.empty()) out.push_back(item);
  }
  return out;
}

bool contains(const std::vector<std::string>& list, const std::string& s) {
  return std::find(list.begin(), list.end(), s) != list.end();
}

bool check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    std::fprintf(stderr, "CUDA error in %s: %s\n", what, cudaGetErrorString(e));
    return false;
  }
  return true;
}

bool check(const psa::Status& st, const char* what) {
  if (!st.ok()) {
    std::fprintf(stderr, "%s: %s\n", what, st.to_string().c_str());
    return false;
  }
  return true;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Round to nearest even, fp32 -> bf16 bits.
uint16_t to_bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  return static_cast<uint16_t>((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}

// Fills `count` bf16 values on the device from a random host pool, at a seed-dependent offset.
bool fill_random(void* dst, int64_t count, const std::vector<uint16_t>& pool, uint64_t seed) {
  const int64_t n = static_cast<int64_t>(pool.size());
  int64_t done = 0, offset = static_cast<int64_t>((seed * 7919) % static_cast<uint64_t>(n));
  auto* out = static_cast<uint16_t*>(dst);
  while (done < count) {
    const int64_t chunk = std::min(count - done, n - offset);
    if (!check(cudaMemcpy(out + done, pool.data() + offset, chunk * 2, cudaMemcpyHostToDevice),
               "cudaMemcpy")) {
      return false;
    }
    done += chunk;
    offset = (offset + 12345) % n;
  }
  return true;
}

// An owning device allocation.
struct DeviceBuffer {
  void* ptr = nullptr;
  DeviceBuffer() = default;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() {
    if (ptr != nullptr) cudaFree(ptr);
  }
  bool allocate(size_t bytes, const char* what) {
    return check(cudaMalloc(&ptr, std::max<size_t>(bytes, 1)), what);
  }
};

struct Inputs {
  DeviceBuffer q, k, v;
  DeviceBuffer pooled_k[psa::kNumPooledLevels], pooled_v[psa::kNumPooledLevels];
  psa::TensorView qv, kv, vv;
  psa::PyramidView pyramid;
};

// The attention output and LSE of one shape.
struct Outputs {
  DeviceBuffer out, lse;
  psa::TensorView out_view, lse_view;
  int64_t numel = 0;
};

// Allocates one input set and fills it: from the workload generator (seed `set`) or the pool.
bool make_inputs(Inputs* in, const Shape& shape, bool structured, int set,
                 const std::vector<uint16_t>& pool) {
  const int64_t b = shape.batch, h = shape.heads, l = shape.seq(), d = shape.head_dim;
  const int64_t n = b * h * l * d;
  if (!in->q.allocate(n * 2, "cudaMalloc q") || !in->k.allocate(n * 2, "cudaMalloc k") ||
      !in->v.allocate(n * 2, "cudaMalloc v")) {
    return false;
  }
  if (structured) {
    psa::WorkloadSpec spec;
    spec.batch = b;
    spec.frames = shape.frames;
    spec.height = shape.height;
    spec.width = shape.width;
    spec.heads = h;
    spec.head_dim = d;
    spec.text_len = shape.text_len;
    spec.text_position = psa::TextPosition::kStart;
    spec.rope_split = shape.rope_split;
    spec.seed = static_cast<uint64_t>(set);
    spec.dtype = psa::DType::kBFloat16;
    psa::Workload wl;
    const auto t0 = std::chrono::steady_clock::now();
    if (!check(psa::generate_workload(&wl, spec), "generate_workload")) return false;
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("%s input set %d: workload generated in %.1f s, mean local mass %.2f\n",
                shape.name.c_str(), set, seconds, wl.stats.mean_local_mass);
    if (!check(cudaMemcpy(in->q.ptr, wl.q.data<uint16_t>(), n * 2, cudaMemcpyHostToDevice),
               "upload q") ||
        !check(cudaMemcpy(in->k.ptr, wl.k.data<uint16_t>(), n * 2, cudaMemcpyHostToDevice),
               "upload k") ||
        !check(cudaMemcpy(in->v.ptr, wl.v.data<uint16_t>(), n * 2, cudaMemcpyHostToDevice),
               "upload v")) {
      return false;
    }
  } else if (!fill_random(in->q.ptr, n, pool, 3 * set + 1) ||
             !fill_random(in->k.ptr, n, pool, 3 * set + 2) ||
             !fill_random(in->v.ptr, n, pool, 3 * set + 3)) {
    return false;
  }
  in->qv = psa::make_view(in->q.ptr, psa::DType::kBFloat16, {b, h, l, d}, psa::Device::kCuda);
  in->kv = psa::make_view(in->k.ptr, psa::DType::kBFloat16, {b, h, l, d}, psa::Device::kCuda);
  in->vv = psa::make_view(in->v.ptr, psa::DType::kBFloat16, {b, h, l, d}, psa::Device::kCuda);
  for (int lv = 0; lv < psa::kNumPooledLevels; ++lv) {
    const int64_t pl = (l + (2 << lv) - 1) / (2 << lv);
    if (!in->pooled_k[lv].allocate(b * h * pl * d * 2, "cudaMalloc pyramid") ||
        !in->pooled_v[lv].allocate(b * h * pl * d * 2, "cudaMalloc pyramid")) {
      return false;
    }
    in->pyramid.k[lv] = psa::make_view(in->pooled_k[lv].ptr, psa::DType::kBFloat16,
                                       {b, h, pl, d}, psa::Device::kCuda);
    in->pyramid.v[lv] = psa::make_view(in->pooled_v[lv].ptr, psa::DType::kBFloat16,
                                       {b, h, pl, d}, psa::Device::kCuda);
  }
  return check(psa::build_pyramid(in->pyramid, in->kv, in->vv), "build_pyramid");
}

// Poisons the output (0xFF bytes: bf16 NaN) before a row's first run.
bool poison_output(const Outputs& o) {
  return check(cudaMemset(o.out.ptr, 0xFF, static_cast<size_t>(o.numel) * 2), "poison out");
}

// After a row's first run: every output value finite and not all zero.
bool verify_output(const Outputs& o, const char* what) {
  std::vector<uint16_t> host(static_cast<size_t>(o.numel));
  if (!check(cudaMemcpy(host.data(), o.out.ptr, host.size() * 2, cudaMemcpyDeviceToHost),
             "download out")) {
    return false;
  }
  int64_t non_finite = 0, non_zero = 0;
  for (uint16_t x : host) {
    non_finite += (x & 0x7f80u) == 0x7f80u;
    non_zero += (x & 0x7fffu) != 0;
  }
  if (non_finite > 0 || non_zero == 0) {
    std::fprintf(stderr, "%s: output check failed: %lld non-finite values, %lld non-zero of %lld\n",
                 what, static_cast<long long>(non_finite), static_cast<long long>(non_zero),
                 static_cast<long long>(o.numel));
    return false;
  }
  return true;
}

// A device plan of the problem of `in` under `config`, with the host copy it came from or goes to.
struct DevicePlan {
  psa::HostPlan host;
  DeviceBuffer counts, blocks;
  size_t counts_bytes = 0, blocks_bytes = 0;
  psa::PlanView view;
  bool allocate(const psa::TensorView& q, const psa::Config& config) {
    const int64_t b = q.shape[0], h = q.shape[1], l = q.shape[2];
    host = psa::make_host_plan(b, h, l, l, config);
    counts_bytes = static_cast<size_t>(psa::numel(host.counts.view())) * 4;
    blocks_bytes = static_cast<size_t>(psa::numel(host.blocks.view())) * 4;
    if (!counts.allocate(counts_bytes, "cudaMalloc plan") ||
        !blocks.allocate(blocks_bytes, "cudaMalloc plan")) {
      return false;
    }
    view = host.view();
    view.counts.data = counts.ptr;
    view.counts.device = psa::Device::kCuda;
    view.blocks.data = blocks.ptr;
    view.blocks.device = psa::Device::kCuda;
    return true;
  }
  bool upload() {
    return check(cudaMemcpy(counts.ptr, host.counts.data<int32_t>(), counts_bytes,
                            cudaMemcpyHostToDevice), "upload plan") &&
           check(cudaMemcpy(blocks.ptr, host.blocks.data<int32_t>(), blocks_bytes,
                            cudaMemcpyHostToDevice), "upload plan");
  }
  bool download() {
    return check(cudaMemcpy(host.counts.data<int32_t>(), counts.ptr, counts_bytes,
                            cudaMemcpyDeviceToHost), "download plan") &&
           check(cudaMemcpy(host.blocks.data<int32_t>(), blocks.ptr, blocks_bytes,
                            cudaMemcpyDeviceToHost), "download plan");
  }
  // Density and level fractions of the host copy into `row`.
  bool statistics(Row* row) const {
    psa::PlanStats stats;
    if (!check(psa::plan_statistics(&stats, host.view()), "plan_statistics")) return false;
    row->density = stats.density;
    for (int i = 0; i < 5; ++i) row->level_fraction[i] = stats.level_fraction[i];
    return true;
  }
};

void set_tflops(Row* r, const Shape& shape) {
  const double l = static_cast<double>(shape.seq());
  const double dense_flops =
      4.0 * static_cast<double>(shape.batch * shape.heads) * l * l * static_cast<double>(shape.head_dim);
  r->dense_tflops = dense_flops / (r->attention_ms * 1e-3) / 1e12;
  r->effective_tflops = r->density * r->dense_tflops;
}

// The whole call under `config` on rotated input sets: build_pyramid, estimate_importance,
// plan_from_scores and attention_forward, each between its own events. Fills the row's stage
// medians and its plan's density and level fractions (of the last run).
bool time_whole_call(Row* row, const psa::Config& config, const Inputs* sets, int num_sets,
                     const Outputs& o, int iters, int warmup) {
  const psa::TensorView& q0 = sets[0].qv;
  const int64_t b = q0.shape[0], h = q0.shape[1], l = q0.shape[2];
  const psa::PlanShape ps = psa::plan_shape(b, h, l, l, config);
  DevicePlan plan;
  DeviceBuffer scores, workspace;
  const size_t ws_bytes = psa::plan_workspace_bytes(ps, psa::Device::kCuda);
  if (!plan.allocate(q0, config) ||
      !scores.allocate(static_cast<size_t>(ps.batch * ps.heads * ps.num_q_blocks * ps.num_k_blocks) * 4,
                       "cudaMalloc scores") ||
      !workspace.allocate(ws_bytes, "cudaMalloc workspace")) {
    return false;
  }
  const psa::TensorView scores_view =
      psa::make_view(scores.ptr, psa::DType::kFloat32,
                     {ps.batch, ps.heads, ps.num_q_blocks, ps.num_k_blocks}, psa::Device::kCuda);

  cudaEvent_t ev[5];
  for (auto& e : ev) cudaEventCreate(&e);
  std::vector<double> stage[4], total;
  bool ok = poison_output(o);
  for (int it = 0; ok && it < warmup + iters; ++it) {
    const Inputs& in = sets[it % num_sets];
    cudaEventRecord(ev[0]);
    psa::Status st = psa::build_pyramid(in.pyramid, in.kv, in.vv);
    cudaEventRecord(ev[1]);
    if (st.ok()) st = psa::estimate_importance(scores_view, in.qv, in.kv, config);
    cudaEventRecord(ev[2]);
    if (st.ok()) st = psa::plan_from_scores(plan.view, scores_view, in.kv, config, workspace.ptr,
                                            ws_bytes);
    cudaEventRecord(ev[3]);
    if (st.ok()) {
      st = psa::attention_forward(o.out_view, o.lse_view, in.qv, in.kv, in.vv, in.pyramid,
                                  plan.view, config);
    }
    cudaEventRecord(ev[4]);
    ok = check(st, "whole call") && check(cudaEventSynchronize(ev[4]), "whole call");
    if (ok && it == 0) ok = verify_output(o, "whole call");
    if (!ok || it < warmup) continue;
    double sum = 0.0;
    for (int i = 0; i < 4; ++i) {
      float ms = 0.0f;
      cudaEventElapsedTime(&ms, ev[i], ev[i + 1]);
      stage[i].push_back(ms);
      sum += ms;
    }
    total.push_back(sum);
  }
  for (auto& e : ev) cudaEventDestroy(e);
  if (!ok) return false;
  row->pyramid_ms = median(stage[0]);
  row->estimate_ms = median(stage[1]);
  row->planner_ms = median(stage[2]);
  row->attention_ms = median(stage[3]);
  row->total_ms = median(total);
  row->block_n = config.block_n;
  row->whole_call = true;
  return plan.download() && plan.statistics(row);
}

// Per plan row, the order in which its key blocks receive levels: the estimator's ranking of the
// row (highest score first, ties to the lower index) or a random permutation. (rows, Nk) int32.
bool block_orders(std::vector<int32_t>* order, const Inputs& in, const psa::Config& config,
                  bool from_scores, std::mt19937_64& rng) {
  const int64_t b = in.qv.shape[0], h = in.qv.shape[1], l = in.qv.shape[2];
  const psa::PlanShape ps = psa::plan_shape(b, h, l, l, config);
  const int64_t rows = ps.batch * ps.heads * ps.num_q_blocks, nk = ps.num_k_blocks;
  order->resize(static_cast<size_t>(rows * nk));
  std::vector<float> scores;
  if (from_scores) {
    DeviceBuffer dev;
    if (!dev.allocate(static_cast<size_t>(rows * nk) * 4, "cudaMalloc scores")) return false;
    const psa::TensorView view = psa::make_view(
        dev.ptr, psa::DType::kFloat32, {ps.batch, ps.heads, ps.num_q_blocks, nk},
        psa::Device::kCuda);
    scores.resize(static_cast<size_t>(rows * nk));
    if (!check(psa::estimate_importance(view, in.qv, in.kv, config), "estimate_importance") ||
        !check(cudaMemcpy(scores.data(), dev.ptr, scores.size() * 4, cudaMemcpyDeviceToHost),
               "download scores")) {
      return false;
    }
  }
  for (int64_t row = 0; row < rows; ++row) {
    int32_t* o = order->data() + row * nk;
    std::iota(o, o + nk, 0);
    if (from_scores) {
      const float* s = scores.data() + row * nk;
      std::stable_sort(o, o + nk, [s](int32_t a, int32_t c) { return s[a] > s[c]; });
    } else {
      std::shuffle(o, o + nk, rng);
    }
  }
  return true;
}

// A fixed plan: in each row, the first round(f1 * Nk) blocks of its order at level 1, the next
// round(f2 * Nk) at level 2, ... (each level's list ascending, as the plan format requires).
void fill_fixed_plan(psa::HostPlan* plan, const PlanSpec& spec, const std::vector<int32_t>& order) {
  const int64_t rows = plan->counts.numel() / psa::kNumLevels, nk = plan->blocks.shape()[3];
  auto* counts = plan->counts.data<int32_t>();
  auto* blocks = plan->blocks.data<int32_t>();
  for (int64_t row = 0; row < rows; ++row) {
    const int32_t* o = order.data() + row * nk;
    int32_t* out = blocks + row * nk;
    int64_t start = 0;
    for (int lv = 0; lv < psa::kNumLevels; ++lv) {
      int64_t count = std::llround(spec.fraction[lv] * static_cast<double>(nk));
      count = std::min(count, nk - start);
      if (lv == 0 && count == 0 && spec.fraction[0] > 0.0) count = 1;
      std::copy(o + start, o + start + count, out + start);
      std::sort(out + start, out + start + count);
      counts[row * psa::kNumLevels + lv] = static_cast<int32_t>(count);
      start += count;
    }
    std::fill(out + start, out + nk, 0);
  }
}

// The attention kernel alone on a fixed plan, on rotated input sets.
bool time_attention(Row* row, const DevicePlan& plan, const psa::Config& config,
                    const Inputs* sets, int num_sets, const Outputs& o, int iters, int warmup) {
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  std::vector<double> times;
  bool ok = poison_output(o);
  for (int it = 0; ok && it < warmup + iters; ++it) {
    const Inputs& in = sets[it % num_sets];
    cudaEventRecord(start);
    const psa::Status st = psa::attention_forward(o.out_view, o.lse_view, in.qv, in.kv, in.vv,
                                                  in.pyramid, plan.view, config);
    cudaEventRecord(stop);
    ok = check(st, "attention_forward") && check(cudaEventSynchronize(stop), "attention_forward");
    if (ok && it == 0) ok = verify_output(o, "attention_forward");
    if (!ok || it < warmup) continue;
    float ms = 0.0f;
    cudaEventElapsedTime(&ms, start, stop);
    times.push_back(ms);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  if (!ok) return false;
  row->attention_ms = median(times);
  row->total_ms = row->attention_ms;
  return true;
}

void print_row(const Row& r) {
  std::printf("%-12s %-7s %-7s %4d %7.4f %5.3f/%5.3f/%5.3f/%5.3f/%5.3f %9.3f %9.1f %9.1f",
              r.shape.c_str(), r.plan.c_str(), r.order.c_str(), r.block_n, r.density,
              r.level_fraction[0], r.level_fraction[1], r.level_fraction[2], r.level_fraction[3],
              r.level_fraction[4], r.total_ms, r.dense_tflops, r.effective_tflops);
  if (r.whole_call) {
    std::printf("  (pyramid %.3f, estimate %.3f, planner %.3f, attention %.3f ms)", r.pyramid_ms,
                r.estimate_ms, r.planner_ms, r.attention_ms);
  }
  if (!r.preset.empty()) std::printf("  %s", r.preset.c_str());
  std::printf("\n");
  std::fflush(stdout);
}

void write_json(const std::string& path, const char* device, const std::string& inputs,
                const std::string& fixed_plans, const std::vector<Row>& rows) {
  std::ofstream f(path);
  f.precision(9);
  f << "{\n  \"device\": \"" << device << "\",\n  \"inputs\": \"" << inputs
    << "\",\n  \"fixed_plans\": \"" << fixed_plans << "\",\n  \"rows\": [\n";
  for (size_t i = 0; i < rows.size(); ++i) {
    const Row& r = rows[i];
    f << "    {\"shape\": \"" << r.shape << "\", \"plan\": \"" << r.plan << "\", \"order\": \""
      << r.order << "\", \"preset\": \"" << r.preset << "\", \"block_n\": " << r.block_n
      << ", \"density\": " << r.density << ", \"level_fraction\": [" << r.level_fraction[0]
      << ", " << r.level_fraction[1] << ", " << r.level_fraction[2] << ", "
      << r.level_fraction[3] << ", " << r.level_fraction[4] << "], \"median_ms\": " << r.total_ms
      << ", \"attention_ms\": " << r.attention_ms << ", \"dense_tflops\": " << r.dense_tflops
      << ", \"effective_tflops\": " << r.effective_tflops
      << ", \"whole_call\": " << (r.whole_call ? "true" : "false");
    if (r.whole_call) {
      f << ", \"pyramid_ms\": " << r.pyramid_ms << ", \"estimate_ms\": " << r.estimate_ms
        << ", \"planner_ms\": " << r.planner_ms;
    }
    f << "}" << (i + 1 < rows.size() ? ",\n" : "\n");
  }
  f << "  ]\n}\n";
}

}  // namespace

int main(int argc, char** argv) {
  std::string json_path, shapes_arg = "wan1.3b,cogvideox,wan14b,wan2.2-5b,cogvideox1.5";
  std::string plans_arg = "full,only8x,d0.10,d0.15,d0.30,call,presets", block_n_arg = "64,128";
  std::string inputs = "structured", fixed_plans;
  int iters = 10, warmup = 3;
  for (int i = 1; i < argc; i += 2) {
    const std::string key = argv[i];
    if (i + 1 >= argc) {
      std::fprintf(stderr, "option %s needs a value\n", key.c_str());
      return 2;
    }
    const std::string value = argv[i + 1];
    if (key == "--json") json_path = value;
    else if (key == "--shapes") shapes_arg = value;
    else if (key == "--plans") plans_arg = value;
    else if (key == "--block-n") block_n_arg = value;
    else if (key == "--inputs") inputs = value;
    else if (key == "--fixed-plans") fixed_plans = value;
    else if (key == "--iters") iters = std::max(1, std::atoi(value.c_str()));
    else if (key == "--warmup") warmup = std::max(0, std::atoi(value.c_str()));
    else {
      std::fprintf(stderr, "unknown option %s\n", key.c_str());
      return 2;
    }
  }
  if (inputs != "structured" && inputs != "random") {
    std::fprintf(stderr, "--inputs must be structured or random, got %s\n", inputs.c_str());
    return 2;
  }
  const bool structured = inputs == "structured";
  if (fixed_plans.empty()) fixed_plans = structured ? "scores" : "random";
  if (fixed_plans != "scores" && fixed_plans != "random") {
    std::fprintf(stderr, "--fixed-plans must be scores or random, got %s\n", fixed_plans.c_str());
    return 2;
  }
  const auto wanted_shapes = split(shapes_arg);
  const auto wanted_plans = split(plans_arg);
  for (const auto& s : wanted_shapes) {
    const bool known = std::any_of(std::begin(kShapes), std::end(kShapes),
                                   [&](const Shape& x) { return x.name == s; });
    if (!known) {
      std::fprintf(stderr, "unknown shape %s\n", s.c_str());
      return 2;
    }
  }
  std::vector<int> block_ns;
  for (const auto& s : split(block_n_arg)) {
    const int bn = std::atoi(s.c_str());
    if (bn != 32 && bn != 64 && bn != 128) {
      std::fprintf(stderr, "--block-n values must be 32, 64 or 128, got %s\n", s.c_str());
      return 2;
    }
    block_ns.push_back(bn);
  }

  cudaDeviceProp prop{};
  if (!check(cudaGetDeviceProperties(&prop, 0), "cudaGetDeviceProperties")) return 1;
  std::printf("device: %s, inputs: %s, fixed plans ranked by %s\n", prop.name, inputs.c_str(),
              fixed_plans == "scores" ? "the estimator's scores" : "a random permutation");
  psa::PresetLibrary presets;
  if (!check(psa::PresetLibrary::load_builtin(&presets), "load_builtin")) return 1;

  std::mt19937_64 rng(12345);
  std::vector<uint16_t> pool;
  if (!structured) {
    std::normal_distribution<float> normal(0.0f, 1.0f);
    pool.resize((1 << 24) + 4099);
    for (auto& x : pool) x = to_bf16(normal(rng));
  }

  std::vector<Row> rows;
  std::printf("%-12s %-7s %-7s %4s %7s %29s %9s %9s %9s\n", "shape", "plan", "order", "bn",
              "density", "levels 0/1/2/4/8", "ms", "dense TF/s", "eff TF/s");
  for (const Shape& shape : kShapes) {
    if (!contains(wanted_shapes, shape.name)) continue;
    const bool want_presets = contains(wanted_plans, "presets");
    if (shape.presets_only && !want_presets) continue;
    const int64_t b = shape.batch, h = shape.heads, l = shape.seq(), d = shape.head_dim;
    constexpr int kSets = 2;
    Inputs sets[kSets];
    for (int s = 0; s < kSets; ++s) {
      if (!make_inputs(&sets[s], shape, structured, s, pool)) return 1;
    }
    Outputs o;
    o.numel = b * h * l * d;
    if (!o.out.allocate(o.numel * 2, "cudaMalloc out") ||
        !o.lse.allocate(b * h * l * 4, "cudaMalloc lse")) {
      return 1;
    }
    o.out_view = psa::make_view(o.out.ptr, psa::DType::kBFloat16, {b, h, l, d}, psa::Device::kCuda);
    o.lse_view = psa::make_view(o.lse.ptr, psa::DType::kFloat32, {b, h, l}, psa::Device::kCuda);

    for (int block_n : shape.presets_only ? std::vector<int>{} : block_ns) {
      psa::Config config;
      config.block_m = 128;
      config.block_n = block_n;
      config.tile_n = std::min(config.tile_n, block_n);
      std::vector<int32_t> order;
      for (const PlanSpec& spec : kPlans) {
        if (!contains(wanted_plans, spec.name)) continue;
        const bool ranked = spec.name != "full" && spec.name != "only8x";
        Row r;
        r.shape = shape.name;
        r.plan = spec.name;
        r.order = ranked ? fixed_plans : "-";
        r.block_n = block_n;
        if (order.empty() && !block_orders(&order, sets[0], config, fixed_plans == "scores", rng)) {
          return 1;
        }
        DevicePlan plan;
        if (!plan.allocate(sets[0].qv, config)) return 1;
        fill_fixed_plan(&plan.host, spec, order);
        if (!plan.upload() || !plan.statistics(&r) ||
            !time_attention(&r, plan, config, sets, kSets, o, iters, warmup)) {
          return 1;
        }
        set_tflops(&r, shape);
        rows.push_back(r);
        print_row(r);
      }
      if (contains(wanted_plans, "call")) {
        psa::Config call = psa::default_config();
        call.block_n = block_n;
        call.tile_n = std::min(call.tile_n, block_n);
        Row r;
        r.shape = shape.name;
        r.plan = "call";
        r.order = "planner";
        if (!time_whole_call(&r, call, sets, kSets, o, iters, warmup)) return 1;
        set_tflops(&r, shape);
        rows.push_back(r);
        print_row(r);
      }
    }
    if (want_presets) {
      for (const psa::ModelPresets& model : presets.models()) {
        if (!contains(shape.preset_models, model.model)) continue;
        for (const psa::Preset& preset : model.presets) {
          if (preset.dense) continue;
          psa::Config config = preset.config;
          if (config.text_len > 0) config.text_position = psa::TextPosition::kStart;
          Row r;
          r.shape = shape.name;
          r.plan = "preset";
          r.order = "planner";
          r.preset = model.model + ":" + preset.name;
          if (!time_whole_call(&r, config, sets, kSets, o, iters, warmup)) return 1;
          set_tflops(&r, shape);
          rows.push_back(r);
          print_row(r);
        }
      }
    }
  }
  if (!json_path.empty()) write_json(json_path, prop.name, inputs, fixed_plans, rows);
  return 0;
}
