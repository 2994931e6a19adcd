// Benchmark of the CUDA attention forward on the WORKLOADS.md shapes (PERFORMANCE.md method):
// random bf16 q, k, v (never zeros), two input sets rotated so that repeated runs do not sit in
// L2, CUDA-event timing, median of --iters runs after --warmup runs. Plans: all-full (every block
// level 1), only-8x (every block level 8, density 1/8) and topk-like mixes at densities ~0.1,
// 0.15 and 0.3 (per-level fractions of a row's blocks, the blocks chosen at random per row), for
// block_n 64 and 128, block_m 128. Plan "call" times the whole call at the plug-and-play default
// config (block 128 x 64, topk .1/.15/.15/.35): pyramid, estimator, planner and attention, each
// stage on its own events. Prints a table; --json PATH writes the rows as JSON.
//
// Usage: psa_bench [--json PATH] [--shapes wan1.3b,cogvideox,wan14b] [--iters N] [--warmup N]
//                  [--plans full,only8x,d0.10,d0.15,d0.30,call] [--block-n 64,128]
#include <cuda_runtime.h>

#include <algorithm>
#include <array>
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

struct Shape {
  std::string name;
  int64_t batch, heads, seq, head_dim;
};
const Shape kShapes[] = {
    {"wan1.3b", 1, 12, 32760, 128},
    {"cogvideox", 1, 48, 17776, 64},
    {"wan14b", 1, 40, 75600, 128},
};

// A plan family: the fraction of a row's blocks at levels 1, 2, 4, 8 (the rest skipped).
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

// Stage times of the whole call, in ms.
struct CallTimes {
  double pyramid_ms = 0.0, estimate_ms = 0.0, planner_ms = 0.0, attention_ms = 0.0;
  double total_ms() const { return pyramid_ms + estimate_ms + planner_ms + attention_ms; }
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

bool check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    std::fprintf(stderr, "CUDA error in %s: %s\n", what, cudaGetErrorString(e));
    return false;
  }
  return true;
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

struct Inputs {
  void* q = nullptr;
  void* k = nullptr;
  void* v = nullptr;
  void* pooled_k[psa::kNumPooledLevels] = {};
  void* pooled_v[psa::kNumPooledLevels] = {};
  psa::TensorView qv, kv, vv;
  psa::PyramidView pyramid;
};

struct Row {
  std::string shape, plan;
  int block_n;
  double density;
  std::array<double, 5> level_fraction;
  double median_ms;
  double dense_tflops, effective_tflops;
  bool whole_call = false;
  CallTimes call;
};


double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// The whole call at the plug-and-play default config on rotated input sets: build_pyramid,
// estimate_importance, plan_from_scores and attention_forward, each between its own events.
// Fills the row's stage medians, its plan's density and level fractions.
bool time_whole_call(Row* row, const Inputs* sets, int num_sets, const psa::TensorView& out,
                     const psa::TensorView& lse, int iters, int warmup) {
  const psa::Config config = psa::default_config();
  const psa::TensorView& q0 = sets[0].qv;
  const int64_t b = q0.shape[0], h = q0.shape[1], l = q0.shape[2];
  const psa::PlanShape ps = psa::plan_shape(b, h, l, l, config);
  psa::HostPlan host_plan = psa::make_host_plan(b, h, l, l, config);
  void* scores = nullptr;
  void* counts = nullptr;
  void* blocks = nullptr;
  void* workspace = nullptr;
  const size_t ws_bytes = psa::plan_workspace_bytes(ps, psa::Device::kCuda);
  const size_t counts_bytes = static_cast<size_t>(psa::numel(host_plan.counts.view())) * 4;
  const size_t blocks_bytes = static_cast<size_t>(psa::numel(host_plan.blocks.view())) * 4;
  if (!check(cudaMalloc(&scores, static_cast<size_t>(ps.batch * ps.heads * ps.num_q_blocks *
                                                     ps.num_k_blocks) * 4), "cudaMalloc scores") ||
      !check(cudaMalloc(&counts, counts_bytes), "cudaMalloc plan") ||
      !check(cudaMalloc(&blocks, blocks_bytes), "cudaMalloc plan") ||
      !check(cudaMalloc(&workspace, std::max<size_t>(ws_bytes, 1)), "cudaMalloc workspace")) {
    return false;
  }
  const psa::TensorView scores_view =
      psa::make_view(scores, psa::DType::kFloat32,
                     {ps.batch, ps.heads, ps.num_q_blocks, ps.num_k_blocks}, psa::Device::kCuda);
  psa::PlanView plan = host_plan.view();
  plan.counts.data = counts;
  plan.counts.device = psa::Device::kCuda;
  plan.blocks.data = blocks;
  plan.blocks.device = psa::Device::kCuda;

  cudaEvent_t ev[5];
  for (auto& e : ev) cudaEventCreate(&e);
  std::vector<double> pyramid, estimate, planner, attention, total;
  for (int it = 0; it < warmup + iters; ++it) {
    const Inputs& in = sets[it % num_sets];
    cudaEventRecord(ev[0]);
    psa::Status st = psa::build_pyramid(in.pyramid, in.kv, in.vv);
    cudaEventRecord(ev[1]);
    if (st.ok()) st = psa::estimate_importance(scores_view, in.qv, in.kv, config);
    cudaEventRecord(ev[2]);
    if (st.ok()) {
      st = psa::plan_from_scores(plan, scores_view, in.kv, config, workspace, ws_bytes);
    }
    cudaEventRecord(ev[3]);
    if (st.ok()) {
      st = psa::attention_forward(out, lse, in.qv, in.kv, in.vv, in.pyramid, plan, config);
    }
    cudaEventRecord(ev[4]);
    if (!st.ok()) {
      std::fprintf(stderr, "whole call: %s\n", st.to_string().c_str());
      return false;
    }
    if (!check(cudaEventSynchronize(ev[4]), "whole call")) return false;
    float ms[4];
    for (int i = 0; i < 4; ++i) cudaEventElapsedTime(&ms[i], ev[i], ev[i + 1]);
    if (it >= warmup) {
      pyramid.push_back(ms[0]);
      estimate.push_back(ms[1]);
      planner.push_back(ms[2]);
      attention.push_back(ms[3]);
      total.push_back(ms[0] + ms[1] + ms[2] + ms[3]);
    }
  }
  for (auto& e : ev) cudaEventDestroy(e);
  row->call.pyramid_ms = median(pyramid);
  row->call.estimate_ms = median(estimate);
  row->call.planner_ms = median(planner);
  row->call.attention_ms = median(attention);
  row->median_ms = median(total);

  // The plan of the last run, for its density and level fractions.
  bool ok = check(cudaMemcpy(host_plan.counts.data<int32_t>(), counts, counts_bytes,
                             cudaMemcpyDeviceToHost), "copy plan") &&
            check(cudaMemcpy(host_plan.blocks.data<int32_t>(), blocks, blocks_bytes,
                             cudaMemcpyDeviceToHost), "copy plan");
  psa::PlanStats stats;
  if (ok) {
    const psa::Status st = psa::plan_statistics(&stats, host_plan.view());
    if (!st.ok()) {
      std::fprintf(stderr, "plan_statistics: %s\n", st.to_string().c_str());
      ok = false;
    }
  }
  row->density = stats.density;
  for (int i = 0; i < 5; ++i) row->level_fraction[i] = stats.level_fraction[i];
  row->block_n = config.block_n;
  row->whole_call = true;
  cudaFree(scores);
  cudaFree(counts);
  cudaFree(blocks);
  cudaFree(workspace);
  return ok;
}

}  // namespace

int main(int argc, char** argv) {
  std::string json_path, shapes_arg = "wan1.3b,cogvideox,wan14b";
  std::string plans_arg = "full,only8x,d0.10,d0.15,d0.30,call", block_n_arg = "64,128";
  int iters = 10, warmup = 3;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string key = argv[i], value = argv[i + 1];
    if (key == "--json") json_path = value;
    else if (key == "--shapes") shapes_arg = value;
    else if (key == "--plans") plans_arg = value;
    else if (key == "--block-n") block_n_arg = value;
    else if (key == "--iters") iters = std::max(1, std::stoi(value));
    else if (key == "--warmup") warmup = std::max(0, std::stoi(value));
    else {
      std::fprintf(stderr, "unknown option %s\n", key.c_str());
      return 2;
    }
  }
  const auto wanted_shapes = split(shapes_arg);
  const auto wanted_plans = split(plans_arg);
  std::vector<int> block_ns;
  for (const auto& s : split(block_n_arg)) block_ns.push_back(std::stoi(s));

  cudaDeviceProp prop{};
  if (!check(cudaGetDeviceProperties(&prop, 0), "cudaGetDeviceProperties")) return 1;
  std::printf("device: %s\n", prop.name);

  std::mt19937_64 rng(12345);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<uint16_t> pool((1 << 24) + 4099);
  for (auto& x : pool) {
    float f = normal(rng);
    uint32_t bits;
    std::memcpy(&bits, &f, 4);
    x = static_cast<uint16_t>((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
  }

  std::vector<Row> rows;
  std::printf("%-10s %-7s %4s %7s %28s %10s %10s %10s\n", "shape", "plan", "bn", "density",
              "levels 0/1/2/4/8", "ms", "dense TF/s", "eff TF/s");
  for (const Shape& shape : kShapes) {
    if (std::find(wanted_shapes.begin(), wanted_shapes.end(), shape.name) == wanted_shapes.end()) {
      continue;
    }
    const int64_t b = shape.batch, h = shape.heads, l = shape.seq, d = shape.head_dim;
    constexpr int kSets = 2;
    Inputs sets[kSets];
    const int64_t n = b * h * l * d;
    for (int s = 0; s < kSets; ++s) {
      Inputs& in = sets[s];
      if (!check(cudaMalloc(&in.q, n * 2), "cudaMalloc q") ||
          !check(cudaMalloc(&in.k, n * 2), "cudaMalloc k") ||
          !check(cudaMalloc(&in.v, n * 2), "cudaMalloc v")) {
        return 1;
      }
      if (!fill_random(in.q, n, pool, 3 * s + 1) || !fill_random(in.k, n, pool, 3 * s + 2) ||
          !fill_random(in.v, n, pool, 3 * s + 3)) {
        return 1;
      }
      in.qv = psa::make_view(in.q, psa::DType::kBFloat16, {b, h, l, d}, psa::Device::kCuda);
      in.kv = psa::make_view(in.k, psa::DType::kBFloat16, {b, h, l, d}, psa::Device::kCuda);
      in.vv = psa::make_view(in.v, psa::DType::kBFloat16, {b, h, l, d}, psa::Device::kCuda);
      for (int lv = 0; lv < psa::kNumPooledLevels; ++lv) {
        const int64_t pl = (l + (2 << lv) - 1) / (2 << lv);
        if (!check(cudaMalloc(&in.pooled_k[lv], b * h * pl * d * 2), "cudaMalloc pyramid") ||
            !check(cudaMalloc(&in.pooled_v[lv], b * h * pl * d * 2), "cudaMalloc pyramid")) {
          return 1;
        }
        in.pyramid.k[lv] = psa::make_view(in.pooled_k[lv], psa::DType::kBFloat16, {b, h, pl, d},
                                          psa::Device::kCuda);
        in.pyramid.v[lv] = psa::make_view(in.pooled_v[lv], psa::DType::kBFloat16, {b, h, pl, d},
                                          psa::Device::kCuda);
      }
      const psa::Status st = psa::build_pyramid(in.pyramid, in.kv, in.vv);
      if (!st.ok()) {
        // The timing does not depend on the pooled values; fill them when no pyramid kernel runs.
        std::fprintf(stderr, "build_pyramid: %s (filling the pyramid with random values)\n",
                     st.to_string().c_str());
        for (int lv = 0; lv < psa::kNumPooledLevels; ++lv) {
          const int64_t pn = psa::numel(in.pyramid.k[lv]);
          if (!fill_random(in.pooled_k[lv], pn, pool, 100 + lv) ||
              !fill_random(in.pooled_v[lv], pn, pool, 200 + lv)) {
            return 1;
          }
        }
      }
    }
    void* out = nullptr;
    float* lse = nullptr;
    if (!check(cudaMalloc(&out, n * 2), "cudaMalloc out") ||
        !check(cudaMalloc(&lse, b * h * l * 4), "cudaMalloc lse")) {
      return 1;
    }
    const psa::TensorView out_view =
        psa::make_view(out, psa::DType::kBFloat16, {b, h, l, d}, psa::Device::kCuda);
    const psa::TensorView lse_view =
        psa::make_view(lse, psa::DType::kFloat32, {b, h, l}, psa::Device::kCuda);

    for (int block_n : block_ns) {
      psa::Config config;
      config.block_m = 128;
      config.block_n = block_n;
      for (const PlanSpec& spec : kPlans) {
        if (std::find(wanted_plans.begin(), wanted_plans.end(), spec.name) == wanted_plans.end()) {
          continue;
        }
        // Level map -> plan on the host: per row, a random permutation of the blocks gives the
        // first round(f1 * Nk) level 1, the next level 2, ...
        psa::HostPlan plan = psa::make_host_plan(b, h, l, l, config);
        const int64_t mq = plan.counts.shape()[2], nk = plan.blocks.shape()[3];
        auto* counts = plan.counts.data<int32_t>();
        auto* blocks = plan.blocks.data<int32_t>();
        std::vector<int32_t> perm(static_cast<size_t>(nk));
        std::array<double, 5> level_count = {};
        double density_sum = 0.0;
        for (int64_t row = 0; row < b * h * mq; ++row) {
          std::iota(perm.begin(), perm.end(), 0);
          std::shuffle(perm.begin(), perm.end(), rng);
          int64_t start = 0, n_out = 0;
          double row_density = 0.0;
          for (int lv = 0; lv < psa::kNumLevels; ++lv) {
            int64_t count = std::llround(spec.fraction[lv] * static_cast<double>(nk));
            count = std::min(count, nk - start);
            if (lv == 0 && count == 0 && spec.fraction[0] > 0.0) count = 1;
            std::vector<int32_t> chosen(perm.begin() + start, perm.begin() + start + count);
            std::sort(chosen.begin(), chosen.end());
            for (int32_t j : chosen) blocks[row * nk + n_out++] = j;
            counts[row * psa::kNumLevels + lv] = static_cast<int32_t>(count);
            level_count[lv + 1] += static_cast<double>(count);
            row_density += static_cast<double>(count) / psa::kLevelFactors[lv];
            start += count;
          }
          level_count[0] += static_cast<double>(nk - start);
          for (; n_out < nk; ++n_out) blocks[row * nk + n_out] = 0;
          density_sum += row_density / static_cast<double>(nk);
        }
        const double total_pairs = static_cast<double>(b * h * mq * nk);
        Row r;
        r.shape = shape.name;
        r.plan = spec.name;
        r.block_n = block_n;
        r.density = density_sum / static_cast<double>(b * h * mq);
        for (int i = 0; i < 5; ++i) r.level_fraction[i] = level_count[i] / total_pairs;

        void* dev_counts = nullptr;
        void* dev_blocks = nullptr;
        const size_t counts_bytes = static_cast<size_t>(psa::numel(plan.counts.view())) * 4;
        const size_t blocks_bytes = static_cast<size_t>(psa::numel(plan.blocks.view())) * 4;
        if (!check(cudaMalloc(&dev_counts, counts_bytes), "cudaMalloc plan") ||
            !check(cudaMalloc(&dev_blocks, blocks_bytes), "cudaMalloc plan") ||
            !check(cudaMemcpy(dev_counts, counts, counts_bytes, cudaMemcpyHostToDevice), "copy") ||
            !check(cudaMemcpy(dev_blocks, blocks, blocks_bytes, cudaMemcpyHostToDevice), "copy")) {
          return 1;
        }
        psa::PlanView pv = plan.view();
        pv.counts.data = dev_counts;
        pv.counts.device = psa::Device::kCuda;
        pv.blocks.data = dev_blocks;
        pv.blocks.device = psa::Device::kCuda;

        cudaEvent_t start_ev, stop_ev;
        cudaEventCreate(&start_ev);
        cudaEventCreate(&stop_ev);
        std::vector<float> times;
        for (int it = 0; it < warmup + iters; ++it) {
          const Inputs& in = sets[it % kSets];
          cudaEventRecord(start_ev);
          const psa::Status st = psa::attention_forward(out_view, lse_view, in.qv, in.kv, in.vv,
                                                        in.pyramid, pv, config);
          cudaEventRecord(stop_ev);
          if (!st.ok()) {
            std::fprintf(stderr, "attention_forward: %s\n", st.to_string().c_str());
            return 1;
          }
          if (!check(cudaEventSynchronize(stop_ev), "attention_forward")) return 1;
          float ms = 0.0f;
          cudaEventElapsedTime(&ms, start_ev, stop_ev);
          if (it >= warmup) times.push_back(ms);
        }
        cudaEventDestroy(start_ev);
        cudaEventDestroy(stop_ev);
        cudaFree(dev_counts);
        cudaFree(dev_blocks);
        std::sort(times.begin(), times.end());
        r.median_ms = times[times.size() / 2];
        const double dense_flops = 4.0 * static_cast<double>(b * h) * static_cast<double>(l) *
                                   static_cast<double>(l) * static_cast<double>(d);
        r.dense_tflops = dense_flops / (r.median_ms * 1e-3) / 1e12;
        r.effective_tflops = r.density * r.dense_tflops;
        rows.push_back(r);
        std::printf("%-10s %-7s %4d %7.4f %5.3f/%5.3f/%5.3f/%5.3f/%5.3f %10.3f %10.1f %10.1f\n",
                    r.shape.c_str(), r.plan.c_str(), r.block_n, r.density, r.level_fraction[0],
                    r.level_fraction[1], r.level_fraction[2], r.level_fraction[3],
                    r.level_fraction[4], r.median_ms, r.dense_tflops, r.effective_tflops);
        std::fflush(stdout);
      }
    }
    if (std::find(wanted_plans.begin(), wanted_plans.end(), "call") != wanted_plans.end()) {
      Row r;
      r.shape = shape.name;
      r.plan = "call";
      if (!time_whole_call(&r, sets, kSets, out_view, lse_view, iters, warmup)) return 1;
      const double dense_flops = 4.0 * static_cast<double>(b * h) * static_cast<double>(l) *
                                 static_cast<double>(l) * static_cast<double>(d);
      r.dense_tflops = dense_flops / (r.median_ms * 1e-3) / 1e12;
      r.effective_tflops = r.density * r.dense_tflops;
      rows.push_back(r);
      std::printf("%-10s %-7s %4d %7.4f %5.3f/%5.3f/%5.3f/%5.3f/%5.3f %10.3f %10.1f %10.1f"
                  "  (pyramid %.3f, estimate %.3f, planner %.3f, attention %.3f ms)\n",
                  r.shape.c_str(), r.plan.c_str(), r.block_n, r.density, r.level_fraction[0],
                  r.level_fraction[1], r.level_fraction[2], r.level_fraction[3],
                  r.level_fraction[4], r.median_ms, r.dense_tflops, r.effective_tflops,
                  r.call.pyramid_ms, r.call.estimate_ms, r.call.planner_ms, r.call.attention_ms);
      std::fflush(stdout);
    }
    for (auto& in : sets) {
      cudaFree(in.q);
      cudaFree(in.k);
      cudaFree(in.v);
      for (int lv = 0; lv < psa::kNumPooledLevels; ++lv) {
        cudaFree(in.pooled_k[lv]);
        cudaFree(in.pooled_v[lv]);
      }
    }
    cudaFree(out);
    cudaFree(lse);
  }

  if (!json_path.empty()) {
    std::ofstream f(json_path);
    f << "{\n  \"device\": \"" << prop.name << "\",\n  \"rows\": [\n";
    for (size_t i = 0; i < rows.size(); ++i) {
      const Row& r = rows[i];
      f << "    {\"shape\": \"" << r.shape << "\", \"plan\": \"" << r.plan
        << "\", \"block_n\": " << r.block_n << ", \"density\": " << r.density
        << ", \"level_fraction\": [" << r.level_fraction[0] << ", " << r.level_fraction[1] << ", "
        << r.level_fraction[2] << ", " << r.level_fraction[3] << ", " << r.level_fraction[4]
        << "], \"median_ms\": " << r.median_ms << ", \"dense_tflops\": " << r.dense_tflops
        << ", \"effective_tflops\": " << r.effective_tflops;
      if (r.whole_call) {
        f << ", \"pyramid_ms\": " << r.call.pyramid_ms << ", \"estimate_ms\": "
          << r.call.estimate_ms << ", \"planner_ms\": " << r.call.planner_ms
          << ", \"attention_ms\": " << r.call.attention_ms;
      }
      f << "}"
        << (i + 1 < rows.size() ? ",\n" : "\n");
    }
    f << "  ]\n}\n";
  }
  return 0;
}
