#include "common/validate.h"

#include <algorithm>
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
  const size_t element = dtype_size(t.dtype);
  if (element == 0) {
    return invalid_argument(std::string(name) + " has an unknown dtype code " +
                            std::to_string(static_cast<int>(t.dtype)));
  }
  if (t.device != Device::kCpu && t.device != Device::kCuda) {
    return invalid_argument(std::string(name) + " has an unknown device code " +
                            std::to_string(static_cast<int>(t.device)) + " (expected cpu or cuda)");
  }
  for (int d = 0; d < rank; ++d) {
    if (t.shape[d] < 0) {
      return invalid_argument(std::string(name) + " must have every dimension >= 0, got " +
                              shape_string(t));
    }
    if (t.stride[d] < 0) {
      return invalid_argument(std::string(name) + " has a negative stride in dimension " +
                              std::to_string(d));
    }
  }
  // An empty view (a dimension of 0, as torch.empty((0, ...)) makes) holds no element: its data
  // pointer may be null and it addresses no memory.
  if (numel(t) == 0) return Status();
  if (t.data == nullptr) return invalid_argument(std::string(name) + " has a null data pointer");
  int64_t max_offset = 0;
  for (int d = 0; d < rank; ++d) {
    int64_t extent = 0;
    if (mul_overflows(t.shape[d] - 1, t.stride[d], &extent) || max_offset > INT64_MAX - extent) {
      return invalid_argument(std::string(name) + " " + shape_string(t) +
                              ": its element offsets overflow 64-bit indexing");
    }
    max_offset += extent;
  }
  // A broadcast view (stride 0) may address few bytes yet hold more elements than int64 counts;
  // every copy the CPU reference makes is sized by the count.
  if (numel(t) < 0) {
    return invalid_argument(std::string(name) + " " + shape_string(t) +
                            ": its element count overflows int64");
  }
  int64_t last_byte = 0;
  if (mul_overflows(max_offset, static_cast<int64_t>(element), &last_byte) ||
      last_byte > INT64_MAX - static_cast<int64_t>(element)) {
    return invalid_argument(std::string(name) + " " + shape_string(t) +
                            ": its byte offsets overflow 64-bit indexing");
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
  if (s->head_dim < 1) {
    return invalid_argument("q must have a head dimension D >= 1, got " + shape_string(q));
  }
  PSA_RETURN_IF_ERROR(check_shape(k, "k", "(B, Hkv, Lk, D)",
                                  {s->batch, s->heads_kv, s->seq_k, s->head_dim}));
  PSA_RETURN_IF_ERROR(check_shape(v, "v", "(B, Hkv, Lk, D)",
                                  {s->batch, s->heads_kv, s->seq_k, s->head_dim}));
  // B, Hq, Lq and Lk may be 0 (an empty problem); Hkv = 0 only together with Hq = 0.
  if (s->heads_kv == 0 ? s->heads_q != 0 : s->heads_q % s->heads_kv != 0) {
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
  for (const auto& [length, field] : {std::pair{plan.seq_q, "plan.seq_q (Lq)"},
                                       {plan.seq_k, "plan.seq_k (Lk)"}}) {
    if (length < 0 || length > kMaxIndex32) {
      return invalid_argument(std::string(field) + " must be in [0, 2^31 - 1], got " +
                              std::to_string(length));
    }
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

// ---- Memory overlap ----------------------------------------------------------------------------

namespace {

using Wide = __int128;  // byte offsets and their sums and differences, free of overflow

// One dimension's contribution to a byte offset: coefficient c in [lo, hi] times `stride` bytes.
struct Term {
  Wide stride, lo, hi;
};

Wide floor_div(Wide a, Wide b) { return a / b - ((a % b != 0) && (a < 0)); }
Wide ceil_div_wide(Wide a, Wide b) { return a / b + ((a % b != 0) && (a > 0)); }

// Whether sum(c_i * stride_i) over terms[k..] can land in [target_lo, target_hi] (with some c
// non-zero when `need_nonzero` and none chosen yet). Terms come sorted by decreasing stride, so a
// regular layout leaves one candidate per term; `budget` bounds irregular ones, and running out
// answers "yes" (the caller then reports an overlap rather than guess).
bool reachable(const std::vector<Term>& terms, const std::vector<Wide>& rest_lo,
               const std::vector<Wide>& rest_hi, size_t k, Wide target_lo, Wide target_hi,
               bool need_nonzero, int64_t* budget) {
  if (--*budget < 0) return true;
  if (k == terms.size()) return !need_nonzero && target_lo <= 0 && 0 <= target_hi;
  const Term& t = terms[k];
  Wide c_min = ceil_div_wide(target_lo - rest_hi[k + 1], t.stride);
  Wide c_max = floor_div(target_hi - rest_lo[k + 1], t.stride);
  if (c_min < t.lo) c_min = t.lo;
  if (c_max > t.hi) c_max = t.hi;
  for (Wide c = c_min; c <= c_max; ++c) {
    if (reachable(terms, rest_lo, rest_hi, k + 1, target_lo - c * t.stride,
                  target_hi - c * t.stride, need_nonzero && c == 0, budget)) {
      return true;
    }
  }
  return false;
}

// Whether some choice of coefficients puts the byte distance sum(c * stride) in [lo, hi].
bool solvable(std::vector<Term> terms, Wide lo, Wide hi, bool need_nonzero) {
  constexpr int64_t kSearchBudget = int64_t{1} << 16;
  std::sort(terms.begin(), terms.end(), [](const Term& a, const Term& b) {
    return a.stride > b.stride;
  });
  std::vector<Wide> rest_lo(terms.size() + 1, 0), rest_hi(terms.size() + 1, 0);
  for (size_t k = terms.size(); k-- > 0;) {
    rest_lo[k] = rest_lo[k + 1] + terms[k].lo * terms[k].stride;
    rest_hi[k] = rest_hi[k + 1] + terms[k].hi * terms[k].stride;
  }
  int64_t budget = kSearchBudget;
  return reachable(terms, rest_lo, rest_hi, 0, lo, hi, need_nonzero, &budget);
}

// Adds the dimensions of `t` as terms with coefficients in [0, n-1] (sign +1) or [-(n-1), 0]
// (sign -1); dimensions of one element or stride 0 move no byte. Equal strides are merged.
void add_terms(std::vector<Term>* terms, const TensorView& t, int sign) {
  const Wide element = static_cast<Wide>(dtype_size(t.dtype));
  for (int d = 0; d < t.rank; ++d) {
    if (t.shape[d] < 2 || t.stride[d] == 0) continue;
    const Wide stride = static_cast<Wide>(t.stride[d]) * element;
    const Wide n = t.shape[d] - 1;
    const Wide lo = sign > 0 ? 0 : -n, hi = sign > 0 ? n : 0;
    bool merged = false;
    for (Term& term : *terms) {
      if (term.stride == stride) {
        term.lo += lo;
        term.hi += hi;
        merged = true;
      }
    }
    if (!merged) terms->push_back({stride, lo, hi});
  }
}

// [first, last] byte addresses a valid view touches.
void byte_range(const TensorView& t, Wide* first, Wide* last) {
  Wide max_offset = 0;
  for (int d = 0; d < t.rank; ++d) max_offset += static_cast<Wide>(t.shape[d] - 1) * t.stride[d];
  const Wide element = static_cast<Wide>(dtype_size(t.dtype));
  *first = static_cast<Wide>(reinterpret_cast<uintptr_t>(t.data));
  *last = *first + max_offset * element + element - 1;
}

std::string strides_string(const TensorView& t) {
  return format_dims(t.stride, t.rank >= 0 && t.rank <= kMaxRank ? t.rank : 0);
}

}  // namespace

Status check_no_internal_overlap(const TensorView& t, const char* name) {
  if (numel(t) == 0) return Status();
  const Wide element = static_cast<Wide>(dtype_size(t.dtype));
  bool overlap = false;
  for (int d = 0; d < t.rank; ++d) overlap = overlap || (t.shape[d] > 1 && t.stride[d] == 0);
  if (!overlap) {
    // Two distinct elements i != j overlap when sum((i_d - j_d) * stride_d) lands within one
    // element's bytes; the coefficients i_d - j_d range over [-(n-1), n-1].
    std::vector<Term> terms;
    std::vector<Wide> strides;
    for (int d = 0; d < t.rank; ++d) {
      if (t.shape[d] < 2) continue;
      const Wide stride = static_cast<Wide>(t.stride[d]) * element;
      for (Wide s : strides) overlap = overlap || s == stride;  // two dims step alike
      strides.push_back(stride);
      terms.push_back({stride, -(static_cast<Wide>(t.shape[d]) - 1), t.shape[d] - 1});
    }
    overlap = overlap || solvable(terms, -(element - 1), element - 1, /*need_nonzero=*/true);
  }
  if (overlap) {
    return invalid_argument(std::string(name) + " " + shape_string(t) + " with strides " +
                            strides_string(t) +
                            " has elements that overlap in memory; an output needs a distinct "
                            "address for every element");
  }
  return Status();
}

Status check_no_overlap(const TensorView& a, const char* a_name, const TensorView& b,
                        const char* b_name) {
  if (a.data == nullptr || b.data == nullptr) return Status();
  if (a.rank < 0 || a.rank > kMaxRank || b.rank < 0 || b.rank > kMaxRank) return Status();
  if (a.device != b.device || a.device_index != b.device_index) return Status();
  if (numel(a) == 0 || numel(b) == 0) return Status();
  Wide a_first = 0, a_last = 0, b_first = 0, b_last = 0;
  byte_range(a, &a_first, &a_last);
  byte_range(b, &b_first, &b_last);
  if (a_last < b_first || b_last < a_first) return Status();
  // Element i of a covers [A, A + ea), element j of b covers [B, B + eb), with A = a0 + sum(i *
  // stride_a) and B = b0 + sum(j * stride_b). They meet iff A - B lies in [-(ea - 1), eb - 1].
  const Wide ea = static_cast<Wide>(dtype_size(a.dtype)), eb = static_cast<Wide>(dtype_size(b.dtype));
  std::vector<Term> terms;
  add_terms(&terms, a, +1);
  add_terms(&terms, b, -1);
  const Wide base = a_first - b_first;
  if (solvable(terms, -(ea - 1) - base, (eb - 1) - base, /*need_nonzero=*/false)) {
    return invalid_argument(std::string(a_name) + " and " + std::string(b_name) +
                            " overlap in memory (psa never works in place): " + a_name + " " +
                            shape_string(a) + " with strides " + strides_string(a) + ", " +
                            b_name + " " + shape_string(b) + " with strides " +
                            strides_string(b));
  }
  return Status();
}

Status check_outputs(std::initializer_list<NamedView> outputs,
                     std::initializer_list<NamedView> inputs) {
  for (auto o = outputs.begin(); o != outputs.end(); ++o) {
    if (o->view->data == nullptr) continue;
    PSA_RETURN_IF_ERROR(check_no_internal_overlap(*o->view, o->name));
    for (auto other = outputs.begin(); other != o; ++other) {
      PSA_RETURN_IF_ERROR(check_no_overlap(*o->view, o->name, *other->view, other->name));
    }
    for (const NamedView& in : inputs) {
      PSA_RETURN_IF_ERROR(check_no_overlap(*o->view, o->name, *in.view, in.name));
    }
  }
  return Status();
}

}  // namespace psa::detail
