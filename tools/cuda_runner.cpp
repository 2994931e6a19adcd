// The `psa run --device cuda` pipeline: device buffers allocated here with the CUDA runtime (the
// library never allocates caller-visible memory), every stage enqueued on one stream and timed
// with CUDA events. Compiled only when the CUDA backend is (PSA_WITH_CUDA), so that a CPU-only
// build never needs CUDA headers.
#include <cuda_runtime.h>

#include <algorithm>
#include <string>
#include <vector>

#include "metrics.h"
#include "runner.h"

namespace psa::tools {

namespace {

Status cuda_check(cudaError_t error, const std::string& what) {
  if (error == cudaSuccess) return Status();
  return Status(StatusCode::kCudaError, what + ": " + cudaGetErrorString(error));
}

// Device memory released when the owner goes out of scope, on every return path.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() {
    if (ptr_ != nullptr) cudaFree(ptr_);
  }
  Status allocate(size_t bytes, const std::string& name) {
    return cuda_check(cudaMalloc(&ptr_, std::max<size_t>(bytes, 1)), "cudaMalloc " + name);
  }
  void* get() const { return ptr_; }

 private:
  void* ptr_ = nullptr;
};

// A contiguous device tensor and its view.
struct DeviceTensor {
  DeviceBuffer buffer;
  TensorView view;

  Status allocate(DType dtype, const std::vector<int64_t>& shape, const std::string& name) {
    size_t bytes = dtype_size(dtype);
    for (int64_t s : shape) bytes *= static_cast<size_t>(s);
    PSA_RETURN_IF_ERROR(buffer.allocate(bytes, name));
    view =
        make_view(buffer.get(), dtype, static_cast<int>(shape.size()), shape.data(), Device::kCuda);
    return Status();
  }
  size_t bytes() const { return static_cast<size_t>(numel(view)) * dtype_size(view.dtype); }
  // Copies `host` (converted to this tensor's dtype) to the device.
  Status upload(const HostTensor& host, const std::string& name) {
    const HostTensor converted = to_host(host.view(), view.dtype);
    return cuda_check(
        cudaMemcpy(view.data, converted.data<void>(), bytes(), cudaMemcpyHostToDevice),
        "upload " + name);
  }
  // Copies the device tensor to the host and widens it to fp32 (int32 stays int32).
  Status download(HostTensor* host, const std::string& name) const {
    std::vector<int64_t> shape(view.shape, view.shape + view.rank);
    HostTensor raw(view.dtype, shape);
    PSA_RETURN_IF_ERROR(
        cuda_check(cudaMemcpy(raw.data<void>(), view.data, bytes(), cudaMemcpyDeviceToHost),
                   "download " + name));
    *host = is_floating(view.dtype) ? to_host(raw.view(), DType::kFloat32) : raw;
    return Status();
  }
};

struct DevicePlan {
  DeviceTensor counts, blocks;
  PlanView view;

  Status allocate(const HostPlan& like) {
    PSA_RETURN_IF_ERROR(counts.allocate(DType::kInt32, like.counts.shape(), "plan counts"));
    PSA_RETURN_IF_ERROR(blocks.allocate(DType::kInt32, like.blocks.shape(), "plan blocks"));
    view.counts = counts.view;
    view.blocks = blocks.view;
    view.block_m = like.block_m;
    view.block_n = like.block_n;
    view.seq_q = like.seq_q;
    view.seq_k = like.seq_k;
    return Status();
  }
  Status upload(const HostPlan& plan) {
    PSA_RETURN_IF_ERROR(counts.upload(plan.counts, "plan counts"));
    return blocks.upload(plan.blocks, "plan blocks");
  }
  Status download(HostPlan* plan) const {
    PSA_RETURN_IF_ERROR(counts.download(&plan->counts, "plan counts"));
    return blocks.download(&plan->blocks, "plan blocks");
  }
};

class EventPair {
 public:
  EventPair() {
    cudaEventCreate(&start_);
    cudaEventCreate(&stop_);
  }
  ~EventPair() {
    cudaEventDestroy(start_);
    cudaEventDestroy(stop_);
  }
  cudaEvent_t start() const { return start_; }
  cudaEvent_t stop() const { return stop_; }

 private:
  cudaEvent_t start_ = nullptr, stop_ = nullptr;
};

// One untimed warm-up run, then `repeat` runs each bracketed by events on `stream`; *ms gets
// the median.
template <typename Stage>
Status timed(double* ms, int repeat, cudaStream_t stream, Stage stage) {
  PSA_RETURN_IF_ERROR(stage());
  PSA_RETURN_IF_ERROR(cuda_check(cudaStreamSynchronize(stream), "warm-up"));
  EventPair events;
  std::vector<double> times;
  for (int r = 0; r < repeat; ++r) {
    PSA_RETURN_IF_ERROR(cuda_check(cudaEventRecord(events.start(), stream), "cudaEventRecord"));
    PSA_RETURN_IF_ERROR(stage());
    PSA_RETURN_IF_ERROR(cuda_check(cudaEventRecord(events.stop(), stream), "cudaEventRecord"));
    PSA_RETURN_IF_ERROR(cuda_check(cudaEventSynchronize(events.stop()), "stage"));
    float elapsed = 0.0f;
    PSA_RETURN_IF_ERROR(cuda_check(cudaEventElapsedTime(&elapsed, events.start(), events.stop()),
                                   "cudaEventElapsedTime"));
    times.push_back(elapsed);
  }
  *ms = quantile(times, 0.5);
  return Status();
}

class StreamOwner {
 public:
  ~StreamOwner() {
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }
  Status create() { return cuda_check(cudaStreamCreate(&stream_), "cudaStreamCreate"); }
  cudaStream_t get() const { return stream_; }

 private:
  cudaStream_t stream_ = nullptr;
};

}  // namespace

Status run_on_cuda(RunOutputs* outputs, const Inputs& inputs, DType dtype, int repeat) {
  repeat = std::max(repeat, 1);
  outputs->repeat = repeat;
  StageTimes& t = outputs->times;
  const Workload& w = inputs.workload;
  const std::vector<int64_t>& qs = w.q.shape();
  const std::vector<int64_t>& ks = w.k.shape();
  const int64_t batch = qs[0], heads = qs[1], seq = qs[2], dim = qs[3], heads_kv = ks[1];
  const Config& config = inputs.config;

  std::string reason;
  if (!cuda_attention_supported(dtype, dim, config.block_m, config.block_n, &reason)) {
    return unsupported("--device cuda: " + reason);
  }
  StreamOwner stream_owner;
  PSA_RETURN_IF_ERROR(stream_owner.create());
  cudaStream_t stream = stream_owner.get();
  const Stream s = stream;

  // Raster-order inputs, as an integration receives them.
  DeviceTensor q, k, v;
  PSA_RETURN_IF_ERROR(q.allocate(dtype, qs, "q"));
  PSA_RETURN_IF_ERROR(k.allocate(dtype, ks, "k"));
  PSA_RETURN_IF_ERROR(v.allocate(dtype, ks, "v"));
  PSA_RETURN_IF_ERROR(q.upload(w.q, "q"));
  PSA_RETURN_IF_ERROR(k.upload(w.k, "k"));
  PSA_RETURN_IF_ERROR(v.upload(w.v, "v"));

  // Rearrangement on the device: planning-order copies of q, k, v, and the inverse for outputs.
  const bool rearranged = !inputs.perm.empty();
  DeviceTensor pq, pk, pv, perm, inverse;
  TensorView q_plan = q.view, k_plan = k.view, v_plan = v.view;
  if (rearranged) {
    const int64_t n = static_cast<int64_t>(inputs.perm.size());
    HostTensor perm_host(DType::kInt64, {n}), inverse_host(DType::kInt64, {n});
    std::copy(inputs.perm.begin(), inputs.perm.end(), perm_host.data<int64_t>());
    std::copy(inputs.inverse.begin(), inputs.inverse.end(), inverse_host.data<int64_t>());
    PSA_RETURN_IF_ERROR(perm.allocate(DType::kInt64, {n}, "perm"));
    PSA_RETURN_IF_ERROR(inverse.allocate(DType::kInt64, {n}, "inverse perm"));
    PSA_RETURN_IF_ERROR(perm.upload(perm_host, "perm"));
    PSA_RETURN_IF_ERROR(inverse.upload(inverse_host, "inverse perm"));
    PSA_RETURN_IF_ERROR(pq.allocate(dtype, qs, "rearranged q"));
    PSA_RETURN_IF_ERROR(pk.allocate(dtype, ks, "rearranged k"));
    PSA_RETURN_IF_ERROR(pv.allocate(dtype, ks, "rearranged v"));
    const int64_t* p = static_cast<const int64_t*>(perm.view.data);
    PSA_RETURN_IF_ERROR(timed(&t.rearrange_ms, repeat, stream, [&] {
      PSA_RETURN_IF_ERROR(permute_tokens(pq.view, q.view, p, s));
      PSA_RETURN_IF_ERROR(permute_tokens(pk.view, k.view, p, s));
      return permute_tokens(pv.view, v.view, p, s);
    }));
    q_plan = pq.view;
    k_plan = pk.view;
    v_plan = pv.view;
  }

  DeviceTensor pyramid_k[kNumPooledLevels], pyramid_v[kNumPooledLevels];
  PyramidView pyramid;
  for (int l = 0; l < kNumPooledLevels; ++l) {
    const int64_t f = int64_t{2} << l;
    const std::vector<int64_t> shape = {batch, heads_kv, (seq + f - 1) / f, dim};
    PSA_RETURN_IF_ERROR(pyramid_k[l].allocate(dtype, shape, "pyramid k"));
    PSA_RETURN_IF_ERROR(pyramid_v[l].allocate(dtype, shape, "pyramid v"));
    pyramid.k[l] = pyramid_k[l].view;
    pyramid.v[l] = pyramid_v[l].view;
  }
  PSA_RETURN_IF_ERROR(timed(&t.pyramid_ms, repeat, stream,
                            [&] { return build_pyramid(pyramid, k_plan, v_plan, s); }));

  const PlanShape ps = plan_shape(batch, heads, seq, seq, config);
  DeviceTensor scores;
  PSA_RETURN_IF_ERROR(scores.allocate(
      DType::kFloat32, {ps.batch, ps.heads, ps.num_q_blocks, ps.num_k_blocks}, "scores"));
  PSA_RETURN_IF_ERROR(timed(&t.estimate_ms, repeat, stream, [&] {
    return estimate_importance(scores.view, q_plan, k_plan, config, s);
  }));

  const size_t workspace_bytes = plan_workspace_bytes(ps, Device::kCuda);
  DeviceBuffer workspace;
  PSA_RETURN_IF_ERROR(workspace.allocate(workspace_bytes, "planner workspace"));
  outputs->plan = make_host_plan(batch, heads, seq, seq, config);
  DevicePlan plan;
  PSA_RETURN_IF_ERROR(plan.allocate(outputs->plan));
  PSA_RETURN_IF_ERROR(timed(&t.planner_ms, repeat, stream, [&] {
    return plan_from_scores(plan.view, scores.view, k_plan, config, workspace.get(),
                            workspace_bytes, s);
  }));
  PSA_RETURN_IF_ERROR(plan.download(&outputs->plan));
  PSA_RETURN_IF_ERROR(plan_statistics(&outputs->stats, outputs->plan.view()));

  DeviceTensor out, lse;
  PSA_RETURN_IF_ERROR(out.allocate(dtype, qs, "out"));
  PSA_RETURN_IF_ERROR(lse.allocate(DType::kFloat32, {batch, heads, seq}, "lse"));
  PSA_RETURN_IF_ERROR(timed(&t.attention_ms, repeat, stream, [&] {
    return attention_forward(out.view, lse.view, q_plan, k_plan, v_plan, pyramid, plan.view, config,
                             s);
  }));

  // Binary block-sparse at PSA's measured density, same scores: candidate quotas are planned on
  // the device (untimed) until one matches, then that plan is timed.
  outputs->binary_plan = make_host_plan(batch, heads, seq, seq, config);
  DevicePlan binary_plan;
  PSA_RETURN_IF_ERROR(binary_plan.allocate(outputs->binary_plan));
  BinaryMatch match;
  PSA_RETURN_IF_ERROR(match_binary_density(
      &match, config, outputs->stats.density, seq, [&](const Config& candidate, double* density) {
        PSA_RETURN_IF_ERROR(plan_from_scores(binary_plan.view, scores.view, k_plan, candidate,
                                             workspace.get(), workspace_bytes, s));
        PSA_RETURN_IF_ERROR(binary_plan.download(&outputs->binary_plan));
        PlanStats stats;
        PSA_RETURN_IF_ERROR(plan_statistics(&stats, outputs->binary_plan.view()));
        *density = stats.density;
        return Status();
      }));
  const Config& binary = match.config;
  outputs->binary_equal_density = match.equal;
  PSA_RETURN_IF_ERROR(timed(&t.binary_planner_ms, repeat, stream, [&] {
    return plan_from_scores(binary_plan.view, scores.view, k_plan, binary, workspace.get(),
                            workspace_bytes, s);
  }));
  PSA_RETURN_IF_ERROR(binary_plan.download(&outputs->binary_plan));
  PSA_RETURN_IF_ERROR(plan_statistics(&outputs->binary_stats, outputs->binary_plan.view()));
  DeviceTensor binary_out, binary_lse;
  PSA_RETURN_IF_ERROR(binary_out.allocate(dtype, qs, "binary out"));
  PSA_RETURN_IF_ERROR(binary_lse.allocate(DType::kFloat32, {batch, heads, seq}, "binary lse"));
  PSA_RETURN_IF_ERROR(timed(&t.binary_attention_ms, repeat, stream, [&] {
    return attention_forward(binary_out.view, binary_lse.view, q_plan, k_plan, v_plan, pyramid,
                             binary_plan.view, binary, s);
  }));

  // Dense: the same kernel on an all-level-1 plan, built on the host and uploaded.
  HostPlan dense_host = make_host_plan(batch, heads, seq, seq, config);
  HostTensor ones(DType::kUInt8, {ps.batch, ps.heads, ps.num_q_blocks, ps.num_k_blocks});
  ones.fill(1.0);
  Config dense_config = config;
  dense_config.sim_cap = false;
  PSA_RETURN_IF_ERROR(plan_from_levels(dense_host.view(), ones.view(), TensorView(), dense_config));
  DevicePlan dense_plan;
  PSA_RETURN_IF_ERROR(dense_plan.allocate(dense_host));
  PSA_RETURN_IF_ERROR(dense_plan.upload(dense_host));
  DeviceTensor dense_out, dense_lse;
  PSA_RETURN_IF_ERROR(dense_out.allocate(dtype, qs, "dense out"));
  PSA_RETURN_IF_ERROR(dense_lse.allocate(DType::kFloat32, {batch, heads, seq}, "dense lse"));
  PSA_RETURN_IF_ERROR(timed(&t.dense_ms, repeat, stream, [&] {
    return attention_forward(dense_out.view, dense_lse.view, q_plan, k_plan, v_plan, pyramid,
                             dense_plan.view, dense_config, s);
  }));

  PSA_RETURN_IF_ERROR(cuda_check(cudaStreamSynchronize(stream), "pipeline"));
  // Outputs to the host in planning order, then to raster order on the host (dense attention
  // commutes with the permutation, so its output is restored the same way).
  HostTensor host_out, host_lse;
  PSA_RETURN_IF_ERROR(out.download(&host_out, "out"));
  PSA_RETURN_IF_ERROR(lse.download(&host_lse, "lse"));
  PSA_RETURN_IF_ERROR(permute_sequence(&outputs->out, host_out, inputs.inverse));
  PSA_RETURN_IF_ERROR(permute_sequence(&outputs->lse, host_lse, inputs.inverse));
  PSA_RETURN_IF_ERROR(binary_out.download(&host_out, "binary out"));
  PSA_RETURN_IF_ERROR(binary_lse.download(&host_lse, "binary lse"));
  PSA_RETURN_IF_ERROR(permute_sequence(&outputs->binary_out, host_out, inputs.inverse));
  PSA_RETURN_IF_ERROR(permute_sequence(&outputs->binary_lse, host_lse, inputs.inverse));
  PSA_RETURN_IF_ERROR(dense_out.download(&host_out, "dense out"));
  PSA_RETURN_IF_ERROR(dense_lse.download(&host_lse, "dense lse"));
  PSA_RETURN_IF_ERROR(permute_sequence(&outputs->dense_out, host_out, inputs.inverse));
  PSA_RETURN_IF_ERROR(permute_sequence(&outputs->dense_lse, host_lse, inputs.inverse));
  return Status();
}

}  // namespace psa::tools
