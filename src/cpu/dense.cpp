// Dense attention on the CPU: the reference for "all level 1 = dense" (SPEC 6). Written
// independently of attention.cpp (no plan, no units) so that the equality test compares two
// implementations. Same causal rule (bottom-right) and empty-row rule (O = 0, LSE = -inf).
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
// Rows (or keys) per parallel task: small enough to spread a short sequence over the threads,
// large enough that a task outweighs its scheduling.
constexpr int64_t kRowsPerTask = 16;

struct DenseProblem {
  int64_t batch = 0, heads_q = 0, heads_kv = 0, seq_q = 0, seq_k = 0, head_dim = 0, group = 1;
  double scale = 0.0;
  bool causal = false;
  int64_t shift = 0;

  const double* q_row(const std::vector<double>& t, int64_t b, int64_t h, int64_t i) const {
    return t.data() + ((b * heads_q + h) * seq_q + i) * head_dim;
  }
  const double* k_row(const std::vector<double>& t, int64_t b, int64_t h, int64_t j) const {
    return t.data() + ((b * heads_kv + h) * seq_k + j) * head_dim;
  }
  // Keys [0, end) are visible to query i.
  int64_t visible_end(int64_t i) const {
    return causal ? detail::max64(0, detail::min64(seq_k, i + shift + 1)) : seq_k;
  }
};

DenseProblem make_dense_problem(const TensorView& q, const TensorView& k, bool causal,
                                float scale) {
  DenseProblem pb;
  pb.batch = q.shape[0];
  pb.heads_q = q.shape[1];
  pb.seq_q = q.shape[2];
  pb.head_dim = q.shape[3];
  pb.heads_kv = k.shape[1];
  pb.seq_k = k.shape[2];
  pb.group = pb.heads_q / pb.heads_kv;
  pb.scale = detail::effective_scale(scale, pb.head_dim);
  pb.causal = causal;
  pb.shift = detail::causal_shift(pb.seq_q, pb.seq_k);
  return pb;
}

// Softmax of query row (b, h, i) over its visible keys: writes O_i (D) to `o` and returns LSE_i;
// a row that sees no key gets O = 0 and LSE = -inf. `s` is scratch of Lk.
double attend_row(double* o, double* s, const DenseProblem& pb, const std::vector<double>& q_d,
                  const std::vector<double>& k_d, const std::vector<double>& v_d, int64_t b,
                  int64_t h, int64_t i) {
  const int64_t kvh = h / pb.group, end = pb.visible_end(i);
  const double* qi = pb.q_row(q_d, b, h, i);
  std::fill(o, o + pb.head_dim, 0.0);
  if (end == 0) return kNegInf;
  double m = kNegInf;
  for (int64_t j = 0; j < end; ++j) {
    s[j] = pb.scale * dot(qi, pb.k_row(k_d, b, kvh, j), pb.head_dim);
    m = std::max(m, s[j]);
  }
  double sum = 0.0;
  for (int64_t j = 0; j < end; ++j) {
    const double w = std::exp(s[j] - m);
    sum += w;
    const double* vj = pb.k_row(v_d, b, kvh, j);
    for (int64_t d = 0; d < pb.head_dim; ++d) o[d] += w * vj[d];
  }
  for (int64_t d = 0; d < pb.head_dim; ++d) o[d] /= sum;
  return m + std::log(sum);
}

}  // namespace

Status dense_attention_forward(TensorView out, TensorView lse, const TensorView& q,
                               const TensorView& k, const TensorView& v, bool causal, float scale) {
  const DenseProblem pb = make_dense_problem(q, k, causal, scale);
  const std::vector<double> q_d = to_dense_double(q), k_d = to_dense_double(k),
                            v_d = to_dense_double(v);
  const int64_t chunks = detail::ceil_div(pb.seq_q, kRowsPerTask);
  parallel_for(pb.batch * pb.heads_q * chunks, [&](int64_t task) {
    const int64_t chunk = task % chunks;
    const int64_t h = (task / chunks) % pb.heads_q;
    const int64_t b = task / (chunks * pb.heads_q);
    std::vector<double> s(static_cast<size_t>(pb.seq_k)), o(static_cast<size_t>(pb.head_dim));
    const int64_t row_end = detail::min64(pb.seq_q, (chunk + 1) * kRowsPerTask);
    for (int64_t i = chunk * kRowsPerTask; i < row_end; ++i) {
      const double row_lse = attend_row(o.data(), s.data(), pb, q_d, k_d, v_d, b, h, i);
      store_row(out, b, h, i, o.data());
      if (lse.data != nullptr) store(lse, offset_of(lse, b, h, i), row_lse);
    }
  });
  return Status::ok_status();
}

Status dense_attention_backward(TensorView dq, TensorView dk, TensorView dv, const TensorView& dout,
                                const TensorView& q, const TensorView& k, const TensorView& v,
                                const TensorView& /*out*/, const TensorView& /*lse*/,
                                bool causal, float scale) {
  const DenseProblem pb = make_dense_problem(q, k, causal, scale);
  const std::vector<double> q_d = to_dense_double(q), k_d = to_dense_double(k),
                            v_d = to_dense_double(v), do_d = to_dense_double(dout);
  // Per row (B, Hq, Lq): LSE_i and Delta_i = dout_i . O_i recomputed in double rather than read
  // from `lse` and `out`, so that the gradient is exact whatever precision those were stored in.
  const int64_t num_rows = pb.batch * pb.heads_q * pb.seq_q;
  std::vector<double> row_lse(static_cast<size_t>(num_rows)), delta(static_cast<size_t>(num_rows));
  parallel_for(pb.batch * pb.heads_q, [&](int64_t slice) {
    const int64_t b = slice / pb.heads_q, h = slice % pb.heads_q;
    std::vector<double> s(static_cast<size_t>(pb.seq_k)), o(static_cast<size_t>(pb.head_dim));
    for (int64_t i = 0; i < pb.seq_q; ++i) {
      const int64_t r = slice * pb.seq_q + i;
      row_lse[r] = attend_row(o.data(), s.data(), pb, q_d, k_d, v_d, b, h, i);
      delta[r] = dot(do_d.data() + r * pb.head_dim, o.data(), pb.head_dim);
    }
  });

  // dQ per chunk of query rows: dq_i = scale * sum_j P_ij (dout_i . v_j - Delta_i) k_j.
  const int64_t q_chunks = detail::ceil_div(pb.seq_q, kRowsPerTask);
  parallel_for(pb.batch * pb.heads_q * q_chunks, [&](int64_t task) {
    const int64_t chunk = task % q_chunks;
    const int64_t h = (task / q_chunks) % pb.heads_q;
    const int64_t b = task / (q_chunks * pb.heads_q);
    const int64_t kvh = h / pb.group;
    std::vector<double> acc(static_cast<size_t>(pb.head_dim));
    const int64_t row_end = detail::min64(pb.seq_q, (chunk + 1) * kRowsPerTask);
    for (int64_t i = chunk * kRowsPerTask; i < row_end; ++i) {
      const int64_t r = (b * pb.heads_q + h) * pb.seq_q + i;
      std::fill(acc.begin(), acc.end(), 0.0);
      if (row_lse[r] != kNegInf) {
        const double* qi = pb.q_row(q_d, b, h, i);
        const double* doi = pb.q_row(do_d, b, h, i);
        for (int64_t j = 0; j < pb.visible_end(i); ++j) {
          const double* kj = pb.k_row(k_d, b, kvh, j);
          const double p = std::exp(pb.scale * dot(qi, kj, pb.head_dim) - row_lse[r]);
          const double ds = p * (dot(doi, pb.k_row(v_d, b, kvh, j), pb.head_dim) - delta[r]);
          for (int64_t d = 0; d < pb.head_dim; ++d) acc[d] += ds * kj[d];
        }
        for (int64_t d = 0; d < pb.head_dim; ++d) acc[d] *= pb.scale;
      }
      store_row(dq, b, h, i, acc.data());
    }
  });

  // dK, dV per chunk of keys, summed over every query head of the GQA group and every row.
  const int64_t k_chunks = detail::ceil_div(pb.seq_k, kRowsPerTask);
  parallel_for(pb.batch * pb.heads_kv * k_chunks, [&](int64_t task) {
    const int64_t chunk = task % k_chunks;
    const int64_t kvh = (task / k_chunks) % pb.heads_kv;
    const int64_t b = task / (k_chunks * pb.heads_kv);
    std::vector<double> gk(static_cast<size_t>(pb.head_dim)), gv(gk.size());
    const int64_t key_end = detail::min64(pb.seq_k, (chunk + 1) * kRowsPerTask);
    for (int64_t j = chunk * kRowsPerTask; j < key_end; ++j) {
      const double* kj = pb.k_row(k_d, b, kvh, j);
      const double* vj = pb.k_row(v_d, b, kvh, j);
      std::fill(gk.begin(), gk.end(), 0.0);
      std::fill(gv.begin(), gv.end(), 0.0);
      for (int64_t h = kvh * pb.group; h < (kvh + 1) * pb.group; ++h) {
        for (int64_t i = 0; i < pb.seq_q; ++i) {
          const int64_t r = (b * pb.heads_q + h) * pb.seq_q + i;
          if (row_lse[r] == kNegInf || j >= pb.visible_end(i)) continue;
          const double* qi = pb.q_row(q_d, b, h, i);
          const double* doi = pb.q_row(do_d, b, h, i);
          const double p = std::exp(pb.scale * dot(qi, kj, pb.head_dim) - row_lse[r]);
          const double ds = p * (dot(doi, vj, pb.head_dim) - delta[r]);
          for (int64_t d = 0; d < pb.head_dim; ++d) {
            gk[d] += pb.scale * ds * qi[d];
            gv[d] += p * doi[d];
          }
        }
      }
      store_row(dk, b, kvh, j, gk.data());
      store_row(dv, b, kvh, j, gv.data());
    }
  });
  return Status::ok_status();
}

}  // namespace psa::cpu
