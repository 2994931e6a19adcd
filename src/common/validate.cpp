#include "common/validate.h"

#include <vector>

#include "common/format.h"
#include "common/index_math.h"

namespace psa::detail {

namespace {

std::string dims_string(std::initializer_list<int64_t> dims) {
  return format_dims(dims.begin(), static_cast<int>(dims.size()));
}

// a * b with overflow detection for non-negative operands.
bool mul_overflows(int64_t a, int64_t b, int64_t* result) {
  if (a != 0 && b > INT64_MAX / a) return true;
  *result = a * b;
  return false;
}

}  // namespace

Status check_tensor(const TensorView& t, const char* name, int rank) {
  if (t.rank != rank) {
    return invalid_argument(std::string(name) + " must have rank " + std::to_string(rank) +
                            ", got rank " + std::to_string(t.rank) + " " + shape_string(t));
  }
  if (t.data == nullptr) return invalid_argument(std::string(name) + " has a null data pointer");
  int64_t max_offset = 0;
  for (int d = 0; d < rank; ++d) {
    if (t.shape[d] < 1) {
      return invalid_argument(std::string(name) + " must have every dimension >= 1, got " +
                              shape_string(t));
    }
    if (t.stride[d] < 0) {
      return invalid_argument(std::string(name) + " has a negative stride in dimension " +
                              std::to_string(d));
    }
    int64_t extent = 0;
    if (mul_overflows(t.shape[d] - 1, t.stride[d], &extent) || max_offset > INT64_MAX - extent) {
      return invalid_argument(std::string(name) + " " + shape_string(t) +
                              ": its element offsets overflow 64-bit indexing");
    }
    max_offset += extent;
  }
  return Status();
}

Status check_dtype(const TensorView& t, const char* name, std::initializer_list<DType> allowed) {
  std::string names;
  for (DType d : allowed) {
    if (d == t.dtype) return Status();
    names += (names.empty() ? "" : ", ") + std::string(dtype_name(d));
  }
  return invalid_argument(std::string(name) + " must have dtype " + names + ", got " +
                          dtype_name(t.dtype));
}

Status check_shape(const TensorView& t, const char* name, const char* dims,
                   std::initializer_list<int64_t> expected) {
  bool match = static_cast<int>(expected.size()) == t.rank;
  int d = 0;
  for (int64_t e : expected) {
    if (match && t.shape[d] != e) match = false;
    ++d;
  }
  if (!match) {
    return invalid_argument(std::string(name) + " must have shape " + dims + " = " +
                            dims_string(expected) + ", got " + shape_string(t));
  }
  return Status();
}

Status check_contiguous(const TensorView& t, const char* name) {
  if (!is_contiguous(t)) {
    return invalid_argument(std::string(name) + " must be contiguous (row-major), got shape " +
                            shape_string(t) + " with other strides");
  }
  return Status();
}

Status check_same_device(const TensorView& t, const char* name, const TensorView& reference,
                         const char* reference_name) {
  if (t.device != reference.device || t.device_index != reference.device_index) {
    return invalid_argument(std::string(name) + " is on " + device_name(t.device) + ":" +
                            std::to_string(t.device_index) + " but " + reference_name + " is on " +
                            device_name(reference.device) + ":" +
                            std::to_string(reference.device_index));
  }
  return Status();
}

Status check_compute_dtype(const TensorView& t, const char* name) {
  if (t.device == Device::kCpu) {
    return check_dtype(t, name,
                       {DType::kFloat32, DType::kFloat16, DType::kBFloat16, DType::kFloat64});
  }
  return check_dtype(t, name, {DType::kFloat16, DType::kBFloat16});
}

Status check_qkv(ProblemShape* s, const TensorView& q, const TensorView& k, const TensorView& v) {
  PSA_RETURN_IF_ERROR(check_tensor(q, "q", 4));
  PSA_RETURN_IF_ERROR(check_tensor(k, "k", 4));
  PSA_RETURN_IF_ERROR(check_tensor(v, "v", 4));
  PSA_RETURN_IF_ERROR(check_same_device(k, "k", q, "q"));
  PSA_RETURN_IF_ERROR(check_same_device(v, "v", q, "q"));
  PSA_RETURN_IF_ERROR(check_compute_dtype(q, "q"));
  if (k.dtype != q.dtype || v.dtype != q.dtype) {
    return invalid_argument(std::string("q, k and v must share one dtype, got q ") +
                            dtype_name(q.dtype) + ", k " + dtype_name(k.dtype) + ", v " +
                            dtype_name(v.dtype));
  }
  s->batch = q.shape[0];
  s->heads_q = q.shape[1];
  s->seq_q = q.shape[2];
  s->head_dim = q.shape[3];
  s->heads_kv = k.shape[1];
  s->seq_k = k.shape[2];
  PSA_RETURN_IF_ERROR(check_shape(k, "k", "(B, Hkv, Lk, D)",
                                  {s->batch, s->heads_kv, s->seq_k, s->head_dim}));
  PSA_RETURN_IF_ERROR(check_shape(v, "v", "(B, Hkv, Lk, D)",
                                  {s->batch, s->heads_kv, s->seq_k, s->head_dim}));
  if (s->heads_q % s->heads_kv != 0) {
    return invalid_argument("the number of query heads Hq = " + std::to_string(s->heads_q) +
                            " must be a multiple of the key/value heads Hkv = " +
                            std::to_string(s->heads_kv));
  }
  if (s->seq_q > kMaxIndex32 || s->seq_k > kMaxIndex32) {
    return invalid_argument("sequence lengths must be < 2^31 (32-bit row indices), got Lq = " +
                            std::to_string(s->seq_q) + ", Lk = " + std::to_string(s->seq_k));
  }
  if (q.device == Device::kCuda) {
    for (const auto& [t, name] : {std::pair{&q, "q"}, {&k, "k"}, {&v, "v"}}) {
      if (t->stride[3] != 1) {
        return invalid_argument(std::string(name) +
                                " must have a unit stride in the head dimension on CUDA, got " +
                                std::to_string(t->stride[3]));
      }
    }
  }
  return Status();
}

Status check_pyramid(const PyramidView& pyramid, const ProblemShape& s, const TensorView& k) {
  static const char* kKNames[] = {"pyramid.k[0] (factor 2)", "pyramid.k[1] (factor 4)",
                                  "pyramid.k[2] (factor 8)"};
  static const char* kVNames[] = {"pyramid.v[0] (factor 2)", "pyramid.v[1] (factor 4)",
                                  "pyramid.v[2] (factor 8)"};
  for (int l = 0; l < kNumPooledLevels; ++l) {
    const int64_t len = pooled_length(s.seq_k, kLevelFactors[l + 1]);
    for (const auto& [t, name] : {std::pair{&pyramid.k[l], kKNames[l]}, {&pyramid.v[l], kVNames[l]}}) {
      PSA_RETURN_IF_ERROR(check_tensor(*t, name, 4));
      PSA_RETURN_IF_ERROR(check_same_device(*t, name, k, "k"));
      PSA_RETURN_IF_ERROR(check_shape(*t, name, "(B, Hkv, ceil(Lk/f), D)",
                                      {s.batch, s.heads_kv, len, s.head_dim}));
      PSA_RETURN_IF_ERROR(check_contiguous(*t, name));
      if (k.device == Device::kCuda) {
        if (t->dtype != k.dtype) {
          return invalid_argument(std::string(name) + " must have k's dtype " +
                                  dtype_name(k.dtype) + " on CUDA, got " + dtype_name(t->dtype));
        }
      } else {
        PSA_RETURN_IF_ERROR(check_compute_dtype(*t, name));
      }
    }
  }
  return Status();
}

Status check_plan(const PlanView& plan, const ProblemShape& s, const TensorView& reference,
                  bool check_contents) {
  if (!is_power_of_two(plan.block_m) || !is_power_of_two(plan.block_n)) {
    return invalid_argument("plan.block_m and plan.block_n must be powers of two, got " +
                            std::to_string(plan.block_m) + " and " + std::to_string(plan.block_n));
  }
  if (plan.block_n < 8) {
    return invalid_argument("plan.block_n must be >= 8 (the largest pool factor), got " +
                            std::to_string(plan.block_n));
  }
  if (plan.seq_q != s.seq_q || plan.seq_k != s.seq_k) {
    return invalid_argument("the plan was made for Lq = " + std::to_string(plan.seq_q) +
                            ", Lk = " + std::to_string(plan.seq_k) + ", but q and k have Lq = " +
                            std::to_string(s.seq_q) + ", Lk = " + std::to_string(s.seq_k));
  }
  const int64_t mq = ceil_div(s.seq_q, plan.block_m);
  const int64_t nk = ceil_div(s.seq_k, plan.block_n);
  PSA_RETURN_IF_ERROR(check_tensor(plan.counts, "plan.counts", 4));
  PSA_RETURN_IF_ERROR(check_tensor(plan.blocks, "plan.blocks", 4));
  PSA_RETURN_IF_ERROR(check_dtype(plan.counts, "plan.counts", {DType::kInt32}));
  PSA_RETURN_IF_ERROR(check_dtype(plan.blocks, "plan.blocks", {DType::kInt32}));
  PSA_RETURN_IF_ERROR(check_same_device(plan.counts, "plan.counts", reference, "q"));
  PSA_RETURN_IF_ERROR(check_same_device(plan.blocks, "plan.blocks", reference, "q"));
  PSA_RETURN_IF_ERROR(check_shape(plan.counts, "plan.counts", "(B, Hq, Mq, 4)",
                                  {s.batch, s.heads_q, mq, kNumLevels}));
  PSA_RETURN_IF_ERROR(check_shape(plan.blocks, "plan.blocks", "(B, Hq, Mq, Nk)",
                                  {s.batch, s.heads_q, mq, nk}));
  PSA_RETURN_IF_ERROR(check_contiguous(plan.counts, "plan.counts"));
  PSA_RETURN_IF_ERROR(check_contiguous(plan.blocks, "plan.blocks"));
  if (numel(plan.blocks) > kMaxIndex32) {
    return invalid_argument("plan.blocks " + shape_string(plan.blocks) +
                            " has more than 2^31 - 1 entries (32-bit plan indexing)");
  }
  if (!check_contents || plan.counts.device != Device::kCpu) return Status();
  const auto* counts = static_cast<const int32_t*>(plan.counts.data);
  const auto* blocks = static_cast<const int32_t*>(plan.blocks.data);
  const int64_t rows = s.batch * s.heads_q * mq;
  std::vector<int64_t> seen(static_cast<size_t>(nk), -1);
  for (int64_t row = 0; row < rows; ++row) {
    int64_t total = 0;
    for (int l = 0; l < kNumLevels; ++l) {
      const int32_t c = counts[row * kNumLevels + l];
      if (c < 0) {
        return invalid_argument("plan.counts row " + std::to_string(row) + " level " +
                                std::to_string(kLevelFactors[l]) + " is negative: " +
                                std::to_string(c));
      }
      total += c;
    }
    if (total > nk) {
      return invalid_argument("plan.counts row " + std::to_string(row) + " lists " +
                              std::to_string(total) + " blocks, more than Nk = " +
                              std::to_string(nk));
    }
    for (int64_t e = 0; e < total; ++e) {
      const int32_t j = blocks[row * nk + e];
      if (j < 0 || j >= nk) {
        return invalid_argument("plan.blocks row " + std::to_string(row) + " entry " +
                                std::to_string(e) + " = " + std::to_string(j) +
                                " is outside [0, Nk = " + std::to_string(nk) + ")");
      }
      if (seen[static_cast<size_t>(j)] == row) {
        return invalid_argument("plan.blocks row " + std::to_string(row) + " lists key block " +
                                std::to_string(j) + " twice");
      }
      seen[static_cast<size_t>(j)] = row;
    }
  }
  return Status();
}

Status check_lse(const TensorView& lse, const ProblemShape& s, const TensorView& q, bool required) {
  if (lse.data == nullptr && lse.rank == 0) {
    return required ? invalid_argument("lse is required here: (B, Hq, Lq) float32") : Status();
  }
  PSA_RETURN_IF_ERROR(check_tensor(lse, "lse", 3));
  PSA_RETURN_IF_ERROR(check_same_device(lse, "lse", q, "q"));
  PSA_RETURN_IF_ERROR(check_dtype(lse, "lse", {DType::kFloat32}));
  PSA_RETURN_IF_ERROR(check_shape(lse, "lse", "(B, Hq, Lq)", {s.batch, s.heads_q, s.seq_q}));
  return check_contiguous(lse, "lse");
}

}  // namespace psa::detail
