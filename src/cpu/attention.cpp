// Pyramid sparse attention on the CPU (SPEC 6, 7): the reference every other backend is tested
// against. Plain loops in double over contiguous double copies of the inputs.
//
// A row of the plan lists key blocks per level; each (block J, level f) contributes the pooled
// tokens of level f inside J ("units"). Level 1 is the same rule with f = 1: c = 1, ln c = 0 and
// the unit is the key itself, so one code path serves every level.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "common/index_math.h"
#include "cpu/attention_common.h"
#include "cpu/cpu_backend.h"

namespace psa::cpu {
namespace {

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

// Sizes of one problem, read from the (validated) tensors and plan.
struct Problem {
  int64_t batch = 0, heads_q = 0, heads_kv = 0, seq_q = 0, seq_k = 0, head_dim = 0;
  int64_t group = 1;  // query heads per kv head (GQA)
  int64_t block_m = 0, block_n = 0, num_q_blocks = 0, num_k_blocks = 0;
  double scale = 0.0;
  bool causal = false;
  int64_t shift = 0;  // Lk - Lq: query i sees key j iff j <= i + shift
};

Problem make_problem(const TensorView& q, const TensorView& k, const PlanView& plan,
                     const Config& config) {
  Problem pb;
  pb.batch = q.shape[0];
  pb.heads_q = q.shape[1];
  pb.seq_q = q.shape[2];
  pb.head_dim = q.shape[3];
  pb.heads_kv = k.shape[1];
  pb.seq_k = k.shape[2];
  pb.group = pb.heads_q / pb.heads_kv;
  pb.block_m = plan.block_m;
  pb.block_n = plan.block_n;
  pb.num_q_blocks = plan.num_q_blocks();
  pb.num_k_blocks = plan.num_k_blocks();
  pb.scale = detail::effective_scale(config.softmax_scale, pb.head_dim);
  pb.causal = config.causal;
  pb.shift = detail::causal_shift(pb.seq_q, pb.seq_k);
  return pb;
}

// Keys and values of every level as contiguous double (B, Hkv, len_l, D); level index 0 holds
// the tokens themselves, 1..3 the pooled factors 2, 4, 8.
struct KvLevels {
  std::vector<double> k[kNumLevels], v[kNumLevels];
  int64_t length[kNumLevels] = {};
};

// One attended unit: a key token (level 1) or a pooled token of a key block.
struct Unit {
  const double* key;    // (D)
  const double* value;  // (D)
  double bias;          // ln(c_p); 0 for level 1
  int64_t first_token;  // constituents [first_token, first_token + count)
  int64_t count;        // c_p
};

bool unit_visible(const Problem& pb, const Unit& u, int64_t i) {
  // A pooled token is visible iff its last real constituent is (SPEC 6).
  return !pb.causal || detail::key_visible(i, u.first_token + u.count - 1, pb.shift);
}

// Appends the units of key block J at level index `level` for (b, kv head).
void append_block_units(std::vector<Unit>* units, const KvLevels& kv, const Problem& pb,
                        int64_t b, int64_t kvh, int level, int64_t block) {
  const int64_t factor = detail::level_factor(level);
  const int64_t first = detail::block_pooled_first(pb.block_n, factor, block);
  const int64_t count = detail::block_pooled_count(pb.seq_k, pb.block_n, factor, block);
  const int64_t slice = (b * pb.heads_kv + kvh) * kv.length[level] * pb.head_dim;
  for (int64_t p = first; p < first + count; ++p) {
    const int64_t c = detail::pooled_count(pb.seq_k, factor, p);
    units->push_back({kv.k[level].data() + slice + p * pb.head_dim,
                      kv.v[level].data() + slice + p * pb.head_dim,
                      std::log(static_cast<double>(c)), p * factor, c});
  }
}

int64_t plan_entry(const TensorView& t, int64_t b, int64_t h, int64_t row, int64_t col) {
  return static_cast<int64_t>(load(t, offset_of(t, b, h, row, col)));
}

// Every unit of plan row (b, h, I): its level-1 blocks, then level 2, 4, 8.
void row_units(std::vector<Unit>* units, const KvLevels& kv, const PlanView& plan,
               const Problem& pb, int64_t b, int64_t h, int64_t qblock) {
  units->clear();
  const int64_t kvh = h / pb.group;
  int64_t position = 0;
  for (int level = 0; level < kNumLevels; ++level) {
    const int64_t n = plan_entry(plan.counts, b, h, qblock, level);
    for (int64_t e = 0; e < n; ++e, ++position) {
      const int64_t block = plan_entry(plan.blocks, b, h, qblock, position);
      append_block_units(units, kv, pb, b, kvh, level, block);
    }
  }
}

// The logits of one query row over its units.
struct RowLogits {
  double max_logit = kNegInf;  // over the visible units (a NaN logit leaves it as it is)
  bool any_visible = false;    // false: the row sees no unit (O = 0, LSE = -inf)
};

// Logits of query row i over `units` into `logits` (-inf where invisible). Callers skip invisible
// units by unit_visible, never by the value -inf: a visible logit is -inf when q holds an infinity,
// and that row must not pass for an empty one.
RowLogits row_logits(double* logits, const double* q_row, const std::vector<Unit>& units,
                     const Problem& pb, int64_t i) {
  RowLogits r;
  for (size_t u = 0; u < units.size(); ++u) {
    if (!unit_visible(pb, units[u], i)) {
      logits[u] = kNegInf;
      continue;
    }
    logits[u] = pb.scale * dot(q_row, units[u].key, pb.head_dim) + units[u].bias;
    r.max_logit = std::max(r.max_logit, logits[u]);
    r.any_visible = true;
  }
  return r;
}

// Softmax of query row i over `units`: writes O_i (D) to `o` and returns LSE_i. A row that sees
// no unit gets O = 0 and LSE = -inf (never NaN). A non-finite logit makes a weight NaN (NaN itself,
// inf - inf against a max of +inf, or -inf - (-inf) when every visible logit is -inf), so O_i and
// LSE_i are NaN, as in dense attention. `logits` is scratch of units.size().
double attend_row(double* o, double* logits, const double* q_row, const std::vector<Unit>& units,
                  const Problem& pb, int64_t i) {
  std::fill(o, o + pb.head_dim, 0.0);
  const RowLogits r = row_logits(logits, q_row, units, pb, i);
  if (!r.any_visible) return kNegInf;
  double sum = 0.0;
  for (size_t u = 0; u < units.size(); ++u) {
    if (!unit_visible(pb, units[u], i)) continue;
    const double w = std::exp(logits[u] - r.max_logit);
    sum += w;
    for (int64_t d = 0; d < pb.head_dim; ++d) o[d] += w * units[u].value[d];
  }
  for (int64_t d = 0; d < pb.head_dim; ++d) o[d] /= sum;
  return r.max_logit + std::log(sum);
}

const double* row_ptr(const std::vector<double>& t, const Problem& pb, int64_t heads,
                      int64_t length, int64_t b, int64_t h, int64_t i) {
  return t.data() + ((b * heads + h) * length + i) * pb.head_dim;
}

}  // namespace

Status attention_forward(TensorView out, TensorView lse, const TensorView& q, const TensorView& k,
                         const TensorView& v, const PyramidView& pyramid, const PlanView& plan,
                         const Config& config) {
  const Problem pb = make_problem(q, k, plan, config);
  const std::vector<double> q_d = to_dense_double(q);
  KvLevels kv;
  kv.k[0] = to_dense_double(k);
  kv.v[0] = to_dense_double(v);
  kv.length[0] = pb.seq_k;
  for (int l = 1; l < kNumLevels; ++l) {
    kv.k[l] = to_dense_double(pyramid.k[l - 1]);
    kv.v[l] = to_dense_double(pyramid.v[l - 1]);
    kv.length[l] = detail::pooled_length(pb.seq_k, detail::level_factor(l));
  }
  const bool want_lse = lse.data != nullptr;

  parallel_for(pb.batch * pb.heads_q * pb.num_q_blocks, [&](int64_t task) {
    const int64_t qblock = task % pb.num_q_blocks;
    const int64_t h = (task / pb.num_q_blocks) % pb.heads_q;
    const int64_t b = task / (pb.num_q_blocks * pb.heads_q);
    std::vector<Unit> units;
    row_units(&units, kv, plan, pb, b, h, qblock);
    std::vector<double> logits(units.size()), o(static_cast<size_t>(pb.head_dim));
    const int64_t rows = detail::block_rows(pb.seq_q, pb.block_m, qblock);
    for (int64_t i = qblock * pb.block_m; i < qblock * pb.block_m + rows; ++i) {
      const double* q_row = row_ptr(q_d, pb, pb.heads_q, pb.seq_q, b, h, i);
      const double row_lse = attend_row(o.data(), logits.data(), q_row, units, pb, i);
      store_row(out, b, h, i, o.data());
      if (want_lse) store(lse, offset_of(lse, b, h, i), row_lse);
    }
  });
  return Status::ok_status();
}

Status attention_backward(TensorView dq, TensorView dk, TensorView dv, const TensorView& dout,
                          const TensorView& q, const TensorView& k, const TensorView& v,
                          const TensorView& /*out*/, const TensorView& /*lse*/,
                          const PlanView& plan, const Config& config) {
  const Problem pb = make_problem(q, k, plan, config);
  const std::vector<double> q_d = to_dense_double(q);
  const std::vector<double> dout_d = to_dense_double(dout);

  // The pooled levels as the forward read them: exact means rounded to the dtype of k and v,
  // which is what build_pyramid stores in a pyramid of that dtype.
  KvLevels kv;
  kv.k[0] = to_dense_double(k);
  kv.v[0] = to_dense_double(v);
  kv.length[0] = pb.seq_k;
  for (int l = 1; l < kNumLevels; ++l) {
    const int64_t factor = detail::level_factor(l);
    kv.length[l] = detail::pooled_length(pb.seq_k, factor);
    const size_t slice_size = static_cast<size_t>(kv.length[l] * pb.head_dim);
    kv.k[l].resize(slice_size * pb.batch * pb.heads_kv);
    kv.v[l].resize(slice_size * pb.batch * pb.heads_kv);
    for (int64_t s = 0; s < pb.batch * pb.heads_kv; ++s) {
      const size_t src = static_cast<size_t>(s * pb.seq_k * pb.head_dim);
      pool_means(kv.k[l].data() + s * slice_size, kv.k[0].data() + src, pb.seq_k, pb.head_dim,
                 factor);
      pool_means(kv.v[l].data() + s * slice_size, kv.v[0].data() + src, pb.seq_k, pb.head_dim,
                 factor);
    }
    for (double& x : kv.k[l]) x = round_to_dtype(x, k.dtype);
    for (double& x : kv.v[l]) x = round_to_dtype(x, v.dtype);
  }

  // Pass 1, per (b, h, query block). Each row's LSE_i and Delta_i = dout_i . O_i are recomputed in
  // double rather than read from `lse` and `out`, so that the gradient is exact whatever precision
  // those were stored in (an fp32 LSE alone moves every P of its row by up to 2^-24 |LSE|
  // relative); they are kept for pass 2. With the row's logits at hand, dQ follows:
  //   dq_i = scale * sum_u dS_u kbar_u, P_u = exp(s_u - LSE_i),
  //   dS_u = P_u (dout_i . vbar_u - Delta_i).
  const int64_t num_rows = pb.batch * pb.heads_q * pb.seq_q;
  std::vector<double> row_lse(static_cast<size_t>(num_rows)), delta(static_cast<size_t>(num_rows));
  parallel_for(pb.batch * pb.heads_q * pb.num_q_blocks, [&](int64_t task) {
    const int64_t qblock = task % pb.num_q_blocks;
    const int64_t h = (task / pb.num_q_blocks) % pb.heads_q;
    const int64_t b = task / (pb.num_q_blocks * pb.heads_q);
    std::vector<Unit> units;
    row_units(&units, kv, plan, pb, b, h, qblock);
    std::vector<double> logits(units.size()), o(static_cast<size_t>(pb.head_dim)),
        acc(static_cast<size_t>(pb.head_dim));
    const int64_t rows = detail::block_rows(pb.seq_q, pb.block_m, qblock);
    for (int64_t i = qblock * pb.block_m; i < qblock * pb.block_m + rows; ++i) {
      const int64_t r = (b * pb.heads_q + h) * pb.seq_q + i;
      const double* q_row = row_ptr(q_d, pb, pb.heads_q, pb.seq_q, b, h, i);
      const double* do_row = row_ptr(dout_d, pb, pb.heads_q, pb.seq_q, b, h, i);
      row_lse[r] = attend_row(o.data(), logits.data(), q_row, units, pb, i);
      delta[r] = dot(o.data(), do_row, pb.head_dim);
      std::fill(acc.begin(), acc.end(), 0.0);
      // A row that saw nothing has no gradient (LSE -inf only then); a NaN LSE spreads to the
      // row's dq and to the keys it reaches.
      if (row_lse[r] != kNegInf) {
        for (size_t u = 0; u < units.size(); ++u) {
          if (!unit_visible(pb, units[u], i)) continue;
          const double p = std::exp(logits[u] - row_lse[r]);
          const double ds = p * (dot(do_row, units[u].value, pb.head_dim) - delta[r]);
          for (int64_t d = 0; d < pb.head_dim; ++d) acc[d] += ds * units[u].key[d];
        }
        for (int64_t d = 0; d < pb.head_dim; ++d) acc[d] *= pb.scale;
      }
      store_row(dq, b, h, i, acc.data());
    }
  });

  // The plan as a level map (B, Hq, Mq, Nk) of level indices, -1 = skipped, so that pass 2 finds
  // the level of (I, J) without scanning rows.
  std::vector<int8_t> level_map(
      static_cast<size_t>(pb.batch * pb.heads_q * pb.num_q_blocks * pb.num_k_blocks), -1);
  for (int64_t b = 0; b < pb.batch; ++b) {
    for (int64_t h = 0; h < pb.heads_q; ++h) {
      for (int64_t qblock = 0; qblock < pb.num_q_blocks; ++qblock) {
        int8_t* row = level_map.data() +
                      ((b * pb.heads_q + h) * pb.num_q_blocks + qblock) * pb.num_k_blocks;
        int64_t position = 0;
        for (int level = 0; level < kNumLevels; ++level) {
          const int64_t n = plan_entry(plan.counts, b, h, qblock, level);
          for (int64_t e = 0; e < n; ++e, ++position) {
            row[plan_entry(plan.blocks, b, h, qblock, position)] = static_cast<int8_t>(level);
          }
        }
      }
    }
  }

  // Pass 2, dK and dV per (b, kv head, key block J), over every query head of the GQA group and
  // every query block that attends J: dkbar_u = scale * sum_i dS_iu q_i, dvbar_u = sum_i P_iu
  // dout_i; a pooled unit's gradient goes to each of its c constituents divided by c.
  parallel_for(pb.batch * pb.heads_kv * pb.num_k_blocks, [&](int64_t task) {
    const int64_t kblock = task % pb.num_k_blocks;
    const int64_t kvh = (task / pb.num_k_blocks) % pb.heads_kv;
    const int64_t b = task / (pb.num_k_blocks * pb.heads_kv);
    const int64_t key_first = kblock * pb.block_n;
    const int64_t key_rows = detail::block_rows(pb.seq_k, pb.block_n, kblock);
    std::vector<Unit> units[kNumLevels];
    std::vector<double> unit_dk[kNumLevels], unit_dv[kNumLevels];
    for (int level = 0; level < kNumLevels; ++level) {
      append_block_units(&units[level], kv, pb, b, kvh, level, kblock);
      unit_dk[level].assign(units[level].size() * pb.head_dim, 0.0);
      unit_dv[level].assign(units[level].size() * pb.head_dim, 0.0);
    }
    std::vector<double> logits;
    for (int64_t h = kvh * pb.group; h < (kvh + 1) * pb.group; ++h) {
      for (int64_t qblock = 0; qblock < pb.num_q_blocks; ++qblock) {
        const int level = level_map[((b * pb.heads_q + h) * pb.num_q_blocks + qblock) *
                                        pb.num_k_blocks + kblock];
        if (level < 0) continue;
        const std::vector<Unit>& us = units[level];
        double* gk = unit_dk[level].data();
        double* gv = unit_dv[level].data();
        logits.resize(us.size());
        const int64_t rows = detail::block_rows(pb.seq_q, pb.block_m, qblock);
        for (int64_t i = qblock * pb.block_m; i < qblock * pb.block_m + rows; ++i) {
          const int64_t r = (b * pb.heads_q + h) * pb.seq_q + i;
          if (row_lse[r] == kNegInf) continue;
          const double* q_row = row_ptr(q_d, pb, pb.heads_q, pb.seq_q, b, h, i);
          const double* do_row = row_ptr(dout_d, pb, pb.heads_q, pb.seq_q, b, h, i);
          row_logits(logits.data(), q_row, us, pb, i);
          for (size_t u = 0; u < us.size(); ++u) {
            if (!unit_visible(pb, us[u], i)) continue;
            const double p = std::exp(logits[u] - row_lse[r]);
            const double ds = p * (dot(do_row, us[u].value, pb.head_dim) - delta[r]);
            for (int64_t d = 0; d < pb.head_dim; ++d) {
              gk[u * pb.head_dim + d] += pb.scale * ds * q_row[d];
              gv[u * pb.head_dim + d] += p * do_row[d];
            }
          }
        }
      }
    }
    // (key_rows, D) gradients of the block's tokens: d mean / d k_j = 1/c for each constituent.
    std::vector<double> block_dk(static_cast<size_t>(key_rows * pb.head_dim), 0.0);
    std::vector<double> block_dv(block_dk.size(), 0.0);
    for (int level = 0; level < kNumLevels; ++level) {
      for (size_t u = 0; u < units[level].size(); ++u) {
        const Unit& unit = units[level][u];
        const double inv_count = 1.0 / static_cast<double>(unit.count);
        for (int64_t t = unit.first_token; t < unit.first_token + unit.count; ++t) {
          double* tk = block_dk.data() + (t - key_first) * pb.head_dim;
          double* tv = block_dv.data() + (t - key_first) * pb.head_dim;
          for (int64_t d = 0; d < pb.head_dim; ++d) {
            tk[d] += unit_dk[level][u * pb.head_dim + d] * inv_count;
            tv[d] += unit_dv[level][u * pb.head_dim + d] * inv_count;
          }
        }
      }
    }
    for (int64_t t = 0; t < key_rows; ++t) {
      store_row(dk, b, kvh, key_first + t, block_dk.data() + t * pb.head_dim);
      store_row(dv, b, kvh, key_first + t, block_dv.data() + t * pb.head_dim);
    }
  });
  return Status::ok_status();
}

}  // namespace psa::cpu
