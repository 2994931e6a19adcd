// The public API: every function checks its arguments (src/common/validate.h), then dispatches to
// the backend of the device its tensors live on. This file is the one dispatch point between the
// CPU reference (src/cpu) and the CUDA backend (src/cuda).
#include <cmath>
#include <limits>
#include <new>
#include <stdexcept>
#include <string>

#include "common/index_math.h"
#include "common/random.h"
#include "common/validate.h"
#include "cpu/cpu_backend.h"
#include "psa/ops.h"
#include "psa/rearrange.h"
#if defined(PSA_WITH_CUDA)
#include "cuda/cuda_backend.h"
#include "cuda/kernel_path.h"
#include "cuda/portable/portable_backend.h"
#endif

namespace psa {

namespace {

using detail::ProblemShape;

[[maybe_unused]] Status not_built(const char* what) {
  return Status(StatusCode::kNotBuilt, std::string(what) +
                                           ": psa was built without the CUDA backend "
                                           "(rebuild with nvcc available, or -DPSA_CUDA=ON)");
}

// Runs a backend. The backends allocate host memory (the CPU reference's working copies of its
// inputs, staging buffers); a failed allocation comes back as kOutOfMemory naming `what`, so that
// no exception leaves the API.
template <typename Fn>
Status run_backend(const char* what, Fn&& fn) {
  try {
    return fn();
  } catch (const std::bad_alloc&) {
    return Status(StatusCode::kOutOfMemory,
                  std::string(what) + ": out of host memory for the working copies of its inputs");
  } catch (const std::length_error&) {
    return Status(StatusCode::kOutOfMemory,
                  std::string(what) +
                      ": out of host memory: a working copy of its inputs exceeds the largest "
                      "host allocation");
  } catch (const std::exception& e) {
    return Status(StatusCode::kInternal, std::string(what) + ": unexpected exception: " + e.what());
  }
}

#if defined(PSA_WITH_CUDA)
// The kernels of the device `t` lives on (cuda/kernel_path.h): an error naming the card when it
// is older than compute capability 8.0.
Status cuda_path(const TensorView& t, cuda::KernelPath* path) {
  return cuda::kernel_path(t.device_index, path);
}
Status check_cuda_device(const TensorView& t) {
  cuda::KernelPath path = cuda::KernelPath::kHopper;
  return cuda_path(t, &path);
}
std::string backward_unsupported_reason(int device_index) {
  return "attention_backward on CUDA runs on compute capability 9.0 (Hopper) only; " +
         cuda::describe_device(device_index) + " runs the forward alone" +
         (cuda::portable_forced() ? " (PSA_FORCE_PORTABLE=1 is set)" : "");
}
#endif

// An input read with any strides: the shape, dtype and device of `like`.
Status check_input_like(const TensorView& t, const char* name, const TensorView& like,
                        const char* like_name) {
  PSA_RETURN_IF_ERROR(detail::check_tensor(t, name, like.rank));
  PSA_RETURN_IF_ERROR(detail::check_same_device(t, name, like, like_name));
  for (int d = 0; d < like.rank; ++d) {
    if (t.shape[d] != like.shape[d]) {
      return invalid_argument(std::string(name) + " must have the shape of " + like_name + " " +
                              shape_string(like) + ", got " + shape_string(t));
    }
  }
  if (t.dtype != like.dtype) {
    return invalid_argument(std::string(name) + " must have " + like_name + "'s dtype " +
                            dtype_name(like.dtype) + ", got " + dtype_name(t.dtype));
  }
  return Status();
}

// Checks `t` against q/k-derived expectations for outputs shaped like an input (on CUDA with a
// unit stride in the last dimension).
Status check_like(const TensorView& t, const char* name, const TensorView& like,
                  const char* like_name) {
  PSA_RETURN_IF_ERROR(check_input_like(t, name, like, like_name));
  if (t.device == Device::kCuda && t.stride[t.rank - 1] != 1) {
    return invalid_argument(std::string(name) +
                            " must have a unit stride in its last dimension on CUDA");
  }
  return Status();
}

Status check_scores(const TensorView& scores, const ProblemShape& s, const Config& config,
                    const TensorView& q) {
  const PlanShape p = plan_shape(s.batch, s.heads_q, s.seq_q, s.seq_k, config);
  PSA_RETURN_IF_ERROR(detail::check_tensor(scores, "scores", 4));
  PSA_RETURN_IF_ERROR(detail::check_same_device(scores, "scores", q, "q"));
  PSA_RETURN_IF_ERROR(detail::check_dtype(scores, "scores", {DType::kFloat32}));
  PSA_RETURN_IF_ERROR(detail::check_shape(scores, "scores", "(B, Hq, Mq, Nk)",
                                          {p.batch, p.heads, p.num_q_blocks, p.num_k_blocks}));
  return detail::check_contiguous(scores, "scores");
}

Status check_plan_matches_config(const PlanView& plan, const Config& config) {
  if (plan.block_m != config.block_m || plan.block_n != config.block_n) {
    return invalid_argument("the plan has block_m = " + std::to_string(plan.block_m) +
                            ", block_n = " + std::to_string(plan.block_n) +
                            " but config has block_m = " + std::to_string(config.block_m) +
                            ", block_n = " + std::to_string(config.block_n));
  }
  return Status();
}

// A level map (B, Hq, Mq, Nk) uint8 on the plan's device. Both backends read one with any strides
// (like q, k, v); one they write must be contiguous, so that no two entries share memory.
Status check_level_map(const TensorView& levels, const PlanView& plan, bool written) {
  PSA_RETURN_IF_ERROR(detail::check_tensor(levels, "levels", 4));
  PSA_RETURN_IF_ERROR(detail::check_same_device(levels, "levels", plan.counts, "the plan"));
  PSA_RETURN_IF_ERROR(detail::check_dtype(levels, "levels", {DType::kUInt8}));
  PSA_RETURN_IF_ERROR(detail::check_shape(
      levels, "levels", "(B, Hq, Mq, Nk)",
      {plan.batch(), plan.heads(), plan.num_q_blocks(), plan.num_k_blocks()}));
  return written ? detail::check_contiguous(levels, "levels") : Status();
}

// The shape of a plan's problem, for functions that see no q: (B, Hq, Lq) from the plan, Hkv and
// D unknown (0).
ProblemShape shape_of_plan(const PlanView& plan) {
  ProblemShape s;
  s.batch = plan.counts.rank == 4 ? plan.counts.shape[0] : 0;
  s.heads_q = plan.counts.rank == 4 ? plan.counts.shape[1] : 0;
  s.seq_q = plan.seq_q;
  s.seq_k = plan.seq_k;
  return s;
}

// k for the similarity cap: required when config.sim_cap, rank 4 with B and Hq % Hkv matching.
Status check_sim_k(const TensorView& k, const ProblemShape& s, const Config& config,
                   const TensorView& reference) {
  if (!config.sim_cap) return Status();
  PSA_RETURN_IF_ERROR(detail::check_tensor(k, "k (needed by the similarity cap)", 4));
  PSA_RETURN_IF_ERROR(detail::check_same_device(k, "k", reference, "the plan"));
  PSA_RETURN_IF_ERROR(detail::check_compute_dtype(k, "k"));
  if (k.shape[0] != s.batch || k.shape[2] != s.seq_k || s.heads_q % k.shape[1] != 0) {
    return invalid_argument("k must have shape (B, Hkv, Lk, D) with B = " +
                            std::to_string(s.batch) + ", Lk = " + std::to_string(s.seq_k) +
                            " and Hq = " + std::to_string(s.heads_q) +
                            " a multiple of Hkv, got " + shape_string(k));
  }
  return Status();
}

// A plan being written: counts and blocks share no memory with each other, with the planner's
// input (`source`: scores or levels) or with k when the similarity cap reads it.
Status check_plan_outputs(const PlanView& plan, const TensorView& source, const char* source_name,
                          const TensorView& k, const Config& config) {
  const TensorView none;
  return detail::check_outputs({{plan.counts, "plan.counts"}, {plan.blocks, "plan.blocks"}},
                               {{source, source_name}, {config.sim_cap ? k : none, "k"}});
}

// ---- Empty problems ----------------------------------------------------------------------------
// B, Hq, Lq or Lk may be 0, with the results of torch.nn.functional.scaled_dot_product_attention:
// outputs without elements stay untouched, and an output that has elements although nothing was
// computed holds what an empty sum gives: O = 0 and LSE = -inf for rows with no key (Lk = 0),
// zero gradients, and a plan of empty rows. No backend sees an empty problem.

constexpr double kMinusInfinity = -std::numeric_limits<double>::infinity();

// Writes `value` into every element of `t` on its device; nothing for a view without elements
// (an absent optional output included).
Status fill_output(TensorView t, double value, Stream stream) {
  if (numel(t) <= 0) return Status();
  if (t.device == Device::kCpu) return run_backend("fill", [&] { return cpu::fill(t, value); });
#if defined(PSA_WITH_CUDA)
  return run_backend("fill", [&] { return cuda::fill(t, value, stream); });
#else
  (void)stream;
  return not_built("fill");
#endif
}

// The forward of a problem with no query row or no key: O = 0, LSE = -inf. True in *done when the
// problem was empty (the status then says how the fill went).
Status forward_if_empty(bool* done, TensorView out, TensorView lse, const ProblemShape& s,
                        Stream stream) {
  *done = s.batch == 0 || s.heads_q == 0 || s.seq_q == 0 || s.seq_k == 0;
  if (!*done) return Status();
  PSA_RETURN_IF_ERROR(fill_output(out, 0.0, stream));
  return fill_output(lse, kMinusInfinity, stream);
}

// The backward of such a problem: every gradient 0 (dq, dk, dv may still have elements: dq when
// Lk = 0, dk and dv when Lq = 0 or Hq = 0).
Status backward_if_empty(bool* done, TensorView dq, TensorView dk, TensorView dv,
                         const ProblemShape& s, Stream stream) {
  *done = s.batch == 0 || s.heads_q == 0 || s.seq_q == 0 || s.seq_k == 0;
  if (!*done) return Status();
  PSA_RETURN_IF_ERROR(fill_output(dq, 0.0, stream));
  PSA_RETURN_IF_ERROR(fill_output(dk, 0.0, stream));
  return fill_output(dv, 0.0, stream);
}

// A plan without key blocks (Nk = 0) lists nothing: counts 0. True in *done when the plan has no
// row or no key block.
Status plan_if_empty(bool* done, const PlanView& plan, Stream stream) {
  *done = numel(plan.blocks) == 0;
  if (!*done) return Status();
  return fill_output(plan.counts, 0.0, stream);
}

}  // namespace

bool cuda_backend_built() {
#if defined(PSA_WITH_CUDA)
  return true;
#else
  return false;
#endif
}

bool cuda_device_usable(std::string* reason) {
#if defined(PSA_WITH_CUDA)
  return cuda::device_usable(reason);
#else
  if (reason) *reason = "psa was built without the CUDA backend";
  return false;
#endif
}

bool cuda_backward_usable(int device_index, std::string* reason) {
#if defined(PSA_WITH_CUDA)
  std::string why;
  cuda::KernelPath path = cuda::KernelPath::kPortable;
  const Status status = cuda::kernel_path(device_index, &path);
  if (!status.ok()) {
    why = status.message();
  } else if (path != cuda::KernelPath::kHopper) {
    why = backward_unsupported_reason(device_index);
  }
  if (reason) *reason = why;
  return why.empty();
#else
  (void)device_index;
  if (reason) *reason = "psa was built without the CUDA backend";
  return false;
#endif
}

bool cuda_attention_supported(DType dtype, int64_t head_dim, int block_m, int block_n,
                              std::string* reason) {
#if defined(PSA_WITH_CUDA)
  return cuda::attention_supported(dtype, head_dim, block_m, block_n, reason);
#else
  (void)dtype, (void)head_dim, (void)block_m, (void)block_n;
  if (reason) *reason = "psa was built without the CUDA backend";
  return false;
#endif
}

Status sample_block_offsets(int32_t* offsets, uint64_t seed, int64_t batch, int64_t head,
                            int block, int count) {
  // detail::sample_offsets shuffles a pool of `block` offsets on the stack (256 at most).
  constexpr int kMaxSampledBlock = 256;
  if (block < 1 || block > kMaxSampledBlock) {
    return invalid_argument("block must be in [1, 256], got " + std::to_string(block));
  }
  if (count < 0 || count > block) {
    return invalid_argument("count must be in [0, block = " + std::to_string(block) + "], got " +
                            std::to_string(count));
  }
  if (offsets == nullptr && count > 0) return invalid_argument("offsets must not be null");
  detail::sample_offsets(offsets, seed, batch, head, block, count);
  return Status();
}

// ---- Pyramid -------------------------------------------------------------------------------

Status build_pyramid(PyramidView pyramid, const TensorView& k, const TensorView& v,
                     Stream stream) {
  PSA_RETURN_IF_ERROR(detail::check_tensor(k, "k", 4));
  PSA_RETURN_IF_ERROR(detail::check_compute_dtype(k, "k"));
  PSA_RETURN_IF_ERROR(check_like(v, "v", k, "k"));
  if (k.device == Device::kCuda && k.stride[3] != 1) {
    return invalid_argument("k must have a unit stride in the head dimension on CUDA");
  }
  ProblemShape s;
  s.batch = k.shape[0];
  s.heads_kv = k.shape[1];
  s.seq_k = k.shape[2];
  s.head_dim = k.shape[3];
  PSA_RETURN_IF_ERROR(detail::check_pyramid(pyramid, s, k));
  PSA_RETURN_IF_ERROR(detail::check_outputs(
      {{pyramid.k[0], "pyramid.k[0]"}, {pyramid.k[1], "pyramid.k[1]"},
       {pyramid.k[2], "pyramid.k[2]"}, {pyramid.v[0], "pyramid.v[0]"},
       {pyramid.v[1], "pyramid.v[1]"}, {pyramid.v[2], "pyramid.v[2]"}},
      {{k, "k"}, {v, "v"}}));
  if (numel(k) == 0) return Status();  // every level is empty too
  if (k.device == Device::kCpu) {
    return run_backend("build_pyramid", [&] { return cpu::build_pyramid(pyramid, k, v); });
  }
#if defined(PSA_WITH_CUDA)
  PSA_RETURN_IF_ERROR(check_cuda_device(k));
  return run_backend("build_pyramid", [&] { return cuda::build_pyramid(pyramid, k, v, stream); });
#else
  (void)stream;
  return not_built("build_pyramid");
#endif
}

// ---- Estimator -----------------------------------------------------------------------------

Status estimate_importance(TensorView scores, const TensorView& q, const TensorView& k,
                           const Config& config, Stream stream) {
  PSA_RETURN_IF_ERROR(validate_config(config));
  ProblemShape s;
  PSA_RETURN_IF_ERROR(detail::check_qkv(&s, q, k, k));
  PSA_RETURN_IF_ERROR(check_scores(scores, s, config, q));
  PSA_RETURN_IF_ERROR(detail::check_outputs({{scores, "scores"}}, {{q, "q"}, {k, "k"}}));
  if (numel(scores) == 0) return Status();  // no query block or no key block
  if (q.device == Device::kCpu) {
    return run_backend("estimate_importance",
                       [&] { return cpu::estimate_importance(scores, q, k, config); });
  }
#if defined(PSA_WITH_CUDA)
  cuda::KernelPath path = cuda::KernelPath::kHopper;
  PSA_RETURN_IF_ERROR(cuda_path(q, &path));
  return run_backend("estimate_importance", [&] {
    return path == cuda::KernelPath::kHopper
               ? cuda::estimate_importance(scores, q, k, config, stream)
               : cuda::portable::estimate_importance(scores, q, k, config, stream);
  });
#else
  (void)stream;
  return not_built("estimate_importance");
#endif
}

// ---- Planner -------------------------------------------------------------------------------

size_t plan_workspace_bytes(const PlanShape& shape, Device device) {
#if defined(PSA_WITH_CUDA)
  if (device == Device::kCuda) return cuda::plan_workspace_bytes(shape);
#endif
  (void)shape, (void)device;
  return 0;
}

Status plan_from_scores(PlanView plan, const TensorView& scores, const TensorView& k,
                        const Config& config, void* workspace, size_t workspace_bytes,
                        Stream stream) {
  PSA_RETURN_IF_ERROR(validate_config(config));
  PSA_RETURN_IF_ERROR(check_plan_matches_config(plan, config));
  ProblemShape s = shape_of_plan(plan);
  PSA_RETURN_IF_ERROR(detail::check_tensor(plan.counts, "plan.counts", 4));
  PSA_RETURN_IF_ERROR(detail::check_plan(plan, s, plan.counts, /*check_contents=*/false));
  PSA_RETURN_IF_ERROR(check_scores(scores, s, config, plan.counts));
  PSA_RETURN_IF_ERROR(check_sim_k(k, s, config, plan.counts));
  if (config.text_len > s.seq_k) {
    return invalid_argument("config.text_len = " + std::to_string(config.text_len) +
                            " exceeds the key length Lk = " + std::to_string(s.seq_k));
  }
  PSA_RETURN_IF_ERROR(check_plan_outputs(plan, scores, "scores", k, config));
  bool empty = false;
  PSA_RETURN_IF_ERROR(plan_if_empty(&empty, plan, stream));
  if (empty) return Status();
  if (plan.counts.device == Device::kCpu) {
    return run_backend("plan_from_scores",
                       [&] { return cpu::plan_from_scores(plan, scores, k, config); });
  }
#if defined(PSA_WITH_CUDA)
  const size_t needed = cuda::plan_workspace_bytes(plan_shape(s.batch, s.heads_q, s.seq_q,
                                                              s.seq_k, config));
  if (workspace_bytes < needed || (needed > 0 && workspace == nullptr)) {
    return invalid_argument("plan_from_scores needs a workspace of " + std::to_string(needed) +
                            " bytes on CUDA (plan_workspace_bytes), got " +
                            std::to_string(workspace_bytes));
  }
  PSA_RETURN_IF_ERROR(check_cuda_device(plan.counts));
  return run_backend("plan_from_scores", [&] {
    return cuda::plan_from_scores(plan, scores, k, config, workspace, workspace_bytes, stream);
  });
#else
  (void)workspace, (void)workspace_bytes, (void)stream;
  return not_built("plan_from_scores");
#endif
}

Status plan_from_levels(PlanView plan, const TensorView& levels, const TensorView& k,
                        const Config& config, Stream stream) {
  PSA_RETURN_IF_ERROR(validate_config(config));
  PSA_RETURN_IF_ERROR(check_plan_matches_config(plan, config));
  ProblemShape s = shape_of_plan(plan);
  PSA_RETURN_IF_ERROR(detail::check_tensor(plan.counts, "plan.counts", 4));
  PSA_RETURN_IF_ERROR(detail::check_plan(plan, s, plan.counts, /*check_contents=*/false));
  PSA_RETURN_IF_ERROR(check_level_map(levels, plan, /*written=*/false));
  PSA_RETURN_IF_ERROR(check_sim_k(k, s, config, plan.counts));
  PSA_RETURN_IF_ERROR(check_plan_outputs(plan, levels, "levels", k, config));
  bool empty = false;
  PSA_RETURN_IF_ERROR(plan_if_empty(&empty, plan, stream));
  if (empty) return Status();
  if (plan.counts.device == Device::kCpu) {
    return run_backend("plan_from_levels",
                       [&] { return cpu::plan_from_levels(plan, levels, k, config); });
  }
#if defined(PSA_WITH_CUDA)
  PSA_RETURN_IF_ERROR(check_cuda_device(plan.counts));
  return run_backend("plan_from_levels",
                     [&] { return cuda::plan_from_levels(plan, levels, k, config, stream); });
#else
  (void)stream;
  return not_built("plan_from_levels");
#endif
}

Status plan_to_levels(TensorView levels, const PlanView& plan, Stream stream) {
  ProblemShape s = shape_of_plan(plan);
  PSA_RETURN_IF_ERROR(detail::check_tensor(plan.counts, "plan.counts", 4));
  PSA_RETURN_IF_ERROR(detail::check_plan(plan, s, plan.counts, /*check_contents=*/true));
  PSA_RETURN_IF_ERROR(check_level_map(levels, plan, /*written=*/true));
  PSA_RETURN_IF_ERROR(detail::check_outputs(
      {{levels, "levels"}}, {{plan.counts, "plan.counts"}, {plan.blocks, "plan.blocks"}}));
  if (numel(levels) == 0) return Status();
  if (plan.counts.device == Device::kCpu) {
    return run_backend("plan_to_levels", [&] { return cpu::plan_to_levels(levels, plan); });
  }
#if defined(PSA_WITH_CUDA)
  PSA_RETURN_IF_ERROR(check_cuda_device(plan.counts));
  return run_backend("plan_to_levels", [&] { return cuda::plan_to_levels(levels, plan, stream); });
#else
  (void)stream;
  return not_built("plan_to_levels");
#endif
}

Status plan_statistics(PlanStats* stats, const PlanView& plan) {
  if (stats == nullptr) return invalid_argument("stats must not be null");
  ProblemShape s = shape_of_plan(plan);
  PSA_RETURN_IF_ERROR(detail::check_tensor(plan.counts, "plan.counts", 4));
  if (plan.counts.device != Device::kCpu) {
    return invalid_argument("plan_statistics reads a host plan; copy the plan to the CPU first");
  }
  PSA_RETURN_IF_ERROR(detail::check_plan(plan, s, plan.counts, /*check_contents=*/true));
  if (numel(plan.blocks) == 0) {
    // No (row, key block) pair: nothing is attended, densities and fractions are 0.
    PlanStats empty;
    empty.density_per_head.assign(static_cast<size_t>(s.heads_q), 0.0);
    *stats = empty;
    return Status();
  }
  return run_backend("plan_statistics", [&] { return cpu::plan_statistics(stats, plan); });
}

// ---- Attention -----------------------------------------------------------------------------

Status attention_forward(TensorView out, TensorView lse, const TensorView& q, const TensorView& k,
                         const TensorView& v, const PyramidView& pyramid, const PlanView& plan,
                         const Config& config, Stream stream) {
  PSA_RETURN_IF_ERROR(validate_config(config));
  ProblemShape s;
  PSA_RETURN_IF_ERROR(detail::check_qkv(&s, q, k, v));
  PSA_RETURN_IF_ERROR(check_like(out, "out", q, "q"));
  PSA_RETURN_IF_ERROR(detail::check_lse(lse, s, q, /*required=*/false));
  PSA_RETURN_IF_ERROR(detail::check_pyramid(pyramid, s, k));
  PSA_RETURN_IF_ERROR(detail::check_plan(plan, s, q, /*check_contents=*/true));
  PSA_RETURN_IF_ERROR(detail::check_outputs(
      {{out, "out"}, {lse, "lse"}},
      {{q, "q"}, {k, "k"}, {v, "v"}, {pyramid.k[0], "pyramid.k[0]"},
       {pyramid.k[1], "pyramid.k[1]"}, {pyramid.k[2], "pyramid.k[2]"},
       {pyramid.v[0], "pyramid.v[0]"}, {pyramid.v[1], "pyramid.v[1]"},
       {pyramid.v[2], "pyramid.v[2]"}, {plan.counts, "plan.counts"},
       {plan.blocks, "plan.blocks"}}));
  bool empty = false;
  PSA_RETURN_IF_ERROR(forward_if_empty(&empty, out, lse, s, stream));
  if (empty) return Status();
  if (q.device == Device::kCpu) {
    return run_backend("attention_forward", [&] {
      return cpu::attention_forward(out, lse, q, k, v, pyramid, plan, config);
    });
  }
#if defined(PSA_WITH_CUDA)
  std::string reason;
  if (!cuda::attention_supported(q.dtype, s.head_dim, plan.block_m, plan.block_n, &reason)) {
    return unsupported("attention_forward on CUDA: " + reason);
  }
  return run_backend("attention_forward", [&] {
    return cuda::attention_forward(out, lse, q, k, v, pyramid, plan, config, stream);
  });
#else
  (void)stream;
  return not_built("attention_forward");
#endif
}

size_t attention_backward_workspace_bytes(const TensorView& dout, const TensorView& q,
                                          const TensorView& k, const PlanView& plan,
                                          const Config& config) {
#if defined(PSA_WITH_CUDA)
  // A size query: arguments that attention_backward would reject get 0 (it reports them).
  const bool shaped = q.rank == 4 && k.rank == 4 && dout.rank == 4 && plan.block_m > 0 &&
                      plan.block_n > 0 && numel(q) > 0 && numel(k) > 0;
  if (shaped && q.device == Device::kCuda) {
    return cuda::attention_backward_workspace_bytes(dout, q, k, plan, config);
  }
#endif
  (void)dout, (void)q, (void)k, (void)plan, (void)config;
  return 0;
}

Status attention_backward(TensorView dq, TensorView dk, TensorView dv, const TensorView& dout,
                          const TensorView& q, const TensorView& k, const TensorView& v,
                          const TensorView& out, const TensorView& lse, const PlanView& plan,
                          const Config& config, void* workspace, size_t workspace_bytes,
                          Stream stream) {
  PSA_RETURN_IF_ERROR(validate_config(config));
  ProblemShape s;
  PSA_RETURN_IF_ERROR(detail::check_qkv(&s, q, k, v));
  PSA_RETURN_IF_ERROR(check_like(dq, "dq", q, "q"));
  PSA_RETURN_IF_ERROR(check_like(dk, "dk", k, "k"));
  PSA_RETURN_IF_ERROR(check_like(dv, "dv", v, "v"));
  // dout and out are only read: any strides (an expanded gradient has zero strides).
  PSA_RETURN_IF_ERROR(check_input_like(dout, "dout", q, "q"));
  PSA_RETURN_IF_ERROR(check_input_like(out, "out", q, "q"));
  PSA_RETURN_IF_ERROR(detail::check_lse(lse, s, q, /*required=*/true));
  PSA_RETURN_IF_ERROR(detail::check_plan(plan, s, q, /*check_contents=*/true));
  PSA_RETURN_IF_ERROR(detail::check_outputs(
      {{dq, "dq"}, {dk, "dk"}, {dv, "dv"}},
      {{dout, "dout"}, {q, "q"}, {k, "k"}, {v, "v"}, {out, "out"}, {lse, "lse"},
       {plan.counts, "plan.counts"}, {plan.blocks, "plan.blocks"}}));
  bool empty = false;
  PSA_RETURN_IF_ERROR(backward_if_empty(&empty, dq, dk, dv, s, stream));
  if (empty) return Status();
  if (q.device == Device::kCpu) {
    return run_backend("attention_backward", [&] {
      return cpu::attention_backward(dq, dk, dv, dout, q, k, v, out, lse, plan, config);
    });
  }
#if defined(PSA_WITH_CUDA)
  std::string reason;
  if (!cuda::attention_supported(q.dtype, s.head_dim, plan.block_m, plan.block_n, &reason)) {
    return unsupported("attention_backward on CUDA: " + reason);
  }
  cuda::KernelPath path = cuda::KernelPath::kHopper;
  PSA_RETURN_IF_ERROR(cuda_path(q, &path));
  if (path != cuda::KernelPath::kHopper) {
    return unsupported(backward_unsupported_reason(q.device_index));
  }
  return run_backend("attention_backward", [&] {
    return cuda::attention_backward(dq, dk, dv, dout, q, k, v, out, lse, plan, config, workspace,
                                    workspace_bytes, stream);
  });
#else
  (void)workspace, (void)workspace_bytes, (void)stream;
  return not_built("attention_backward");
#endif
}

Status dense_attention_forward(TensorView out, TensorView lse, const TensorView& q,
                               const TensorView& k, const TensorView& v, bool causal, float scale,
                               Stream stream) {
  (void)stream;
  ProblemShape s;
  PSA_RETURN_IF_ERROR(detail::check_qkv(&s, q, k, v));
  PSA_RETURN_IF_ERROR(check_like(out, "out", q, "q"));
  PSA_RETURN_IF_ERROR(detail::check_lse(lse, s, q, /*required=*/false));
  if (!(scale >= 0.0f) || !std::isfinite(scale)) {
    return invalid_argument("scale must be finite and >= 0 (0 = 1/sqrt(D)), got " +
                            std::to_string(scale));
  }
  PSA_RETURN_IF_ERROR(
      detail::check_outputs({{out, "out"}, {lse, "lse"}}, {{q, "q"}, {k, "k"}, {v, "v"}}));
  if (q.device == Device::kCpu) {
    bool empty = false;
    PSA_RETURN_IF_ERROR(forward_if_empty(&empty, out, lse, s, stream));
    if (empty) return Status();
    return run_backend("dense_attention_forward", [&] {
      return cpu::dense_attention_forward(out, lse, q, k, v, causal, scale);
    });
  }
  return unsupported(
      "dense_attention_forward is the CPU reference; on CUDA use attention_forward with an "
      "all-level-1 plan or cuDNN");
}

Status dense_attention_backward(TensorView dq, TensorView dk, TensorView dv, const TensorView& dout,
                                const TensorView& q, const TensorView& k, const TensorView& v,
                                const TensorView& out, const TensorView& lse, bool causal,
                                float scale, Stream stream) {
  (void)stream;
  ProblemShape s;
  PSA_RETURN_IF_ERROR(detail::check_qkv(&s, q, k, v));
  PSA_RETURN_IF_ERROR(check_like(dq, "dq", q, "q"));
  PSA_RETURN_IF_ERROR(check_like(dk, "dk", k, "k"));
  PSA_RETURN_IF_ERROR(check_like(dv, "dv", v, "v"));
  PSA_RETURN_IF_ERROR(check_like(dout, "dout", q, "q"));
  PSA_RETURN_IF_ERROR(check_like(out, "out", q, "q"));
  PSA_RETURN_IF_ERROR(detail::check_lse(lse, s, q, /*required=*/true));
  if (!(scale >= 0.0f) || !std::isfinite(scale)) {
    return invalid_argument("scale must be finite and >= 0 (0 = 1/sqrt(D)), got " +
                            std::to_string(scale));
  }
  PSA_RETURN_IF_ERROR(detail::check_outputs(
      {{dq, "dq"}, {dk, "dk"}, {dv, "dv"}},
      {{dout, "dout"}, {q, "q"}, {k, "k"}, {v, "v"}, {out, "out"}, {lse, "lse"}}));
  if (q.device == Device::kCpu) {
    bool empty = false;
    PSA_RETURN_IF_ERROR(backward_if_empty(&empty, dq, dk, dv, s, stream));
    if (empty) return Status();
    return run_backend("dense_attention_backward", [&] {
      return cpu::dense_attention_backward(dq, dk, dv, dout, q, k, v, out, lse, causal, scale);
    });
  }
  return unsupported("dense_attention_backward is the CPU reference only");
}

// ---- Rearrangement -------------------------------------------------------------------------

Status permute_tokens(TensorView out, const TensorView& in, const int64_t* perm, Stream stream) {
  PSA_RETURN_IF_ERROR(detail::check_tensor(in, "in", 4));
  PSA_RETURN_IF_ERROR(check_like(out, "out", in, "in"));
  if (perm == nullptr && in.shape[2] > 0) return invalid_argument("perm must not be null");
  PSA_RETURN_IF_ERROR(detail::check_outputs({{out, "out"}}, {{in, "in"}}));
  if (numel(in) == 0) return Status();
  if (in.device == Device::kCpu) {
    const int64_t n = in.shape[2];
    for (int64_t i = 0; i < n; ++i) {
      if (perm[i] < 0 || perm[i] >= n) {
        return invalid_argument("perm[" + std::to_string(i) + "] = " + std::to_string(perm[i]) +
                                " is outside [0, L = " + std::to_string(n) + ")");
      }
    }
    return run_backend("permute_tokens", [&] { return cpu::permute_tokens(out, in, perm); });
  }
#if defined(PSA_WITH_CUDA)
  PSA_RETURN_IF_ERROR(check_cuda_device(in));
  return run_backend("permute_tokens",
                     [&] { return cuda::permute_tokens(out, in, perm, stream); });
#else
  (void)stream;
  return not_built("permute_tokens");
#endif
}

}  // namespace psa
