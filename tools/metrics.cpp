#include "metrics.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <thread>

namespace psa::tools {

double quantile(std::vector<double> values, double q) {
  if (values.empty()) return std::numeric_limits<double>::quiet_NaN();
  std::sort(values.begin(), values.end());
  const size_t index = static_cast<size_t>(std::floor(q * static_cast<double>(values.size() - 1)));
  return values[index];
}

Quality compare_outputs(const HostTensor& out, const HostTensor& lse, const HostTensor& ref,
                        const HostTensor& ref_lse) {
  Quality quality;
  const int64_t d = out.shape().back();
  const int64_t rows = out.numel() / d;
  double diff2 = 0.0, ref2 = 0.0;
  std::vector<double> cosines(static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r) {
    double dot = 0.0, oo = 0.0, rr = 0.0;
    for (int64_t c = 0; c < d; ++c) {
      const double o = out.get(r * d + c), x = ref.get(r * d + c);
      dot += o * x;
      oo += o * o;
      rr += x * x;
      diff2 += (o - x) * (o - x);
    }
    ref2 += rr;
    // Two zero rows agree; one zero row against a non-zero one shares no direction.
    cosines[static_cast<size_t>(r)] =
        (oo == 0.0 || rr == 0.0) ? (oo == rr ? 1.0 : 0.0) : dot / std::sqrt(oo * rr);
  }
  quality.rel_l2 = ref2 > 0.0 ? std::sqrt(diff2 / ref2) : std::sqrt(diff2);
  double sum = 0.0;
  for (double c : cosines) sum += c;
  quality.cosine_mean = rows > 0 ? sum / static_cast<double>(rows) : 0.0;
  constexpr double kWorstRowsQuantile = 0.01;
  quality.cosine_p1 = quantile(cosines, kWorstRowsQuantile);

  if (lse.defined() && ref_lse.defined() && lse.numel() == ref_lse.numel()) {
    double err = 0.0;
    for (int64_t i = 0; i < lse.numel(); ++i) err += std::abs(lse.get(i) - ref_lse.get(i));
    quality.lse_abs_err = err / static_cast<double>(std::max<int64_t>(lse.numel(), 1));
  } else {
    quality.lse_abs_err = std::numeric_limits<double>::quiet_NaN();
  }
  return quality;
}

Status plan_levels(HostTensor* levels, const HostPlan& plan) {
  const PlanView view = plan.view();
  *levels = HostTensor(DType::kUInt8,
                       {view.batch(), view.heads(), view.num_q_blocks(), view.num_k_blocks()});
  return plan_to_levels(levels->view(), view);
}

Status attention_recall(std::vector<double>* recall, const HostTensor& q, const HostTensor& k,
                        const HostTensor& dense_lse, const std::vector<const HostTensor*>& levels,
                        int block_m, int block_n, float softmax_scale) {
  const int64_t batch = q.shape()[0], heads = q.shape()[1], seq_q = q.shape()[2];
  const int64_t dim = q.shape()[3], heads_kv = k.shape()[1], seq_k = k.shape()[2];
  const int64_t group = heads / heads_kv;
  const int64_t mq = (seq_q + block_m - 1) / block_m, nk = (seq_k + block_n - 1) / block_n;
  for (const HostTensor* map : levels) {
    if (map->dtype() != DType::kUInt8 || map->numel() != batch * heads * mq * nk) {
      return invalid_argument("recall: a level map must be (B, Hq, Mq, Nk) = (" +
                              std::to_string(batch) + ", " + std::to_string(heads) + ", " +
                              std::to_string(mq) + ", " + std::to_string(nk) + ") uint8");
    }
  }
  const double scale = softmax_scale > 0.0f ? softmax_scale : 1.0 / std::sqrt(double(dim));

  // fp32 copies so that the inner loop reads plain floats whatever the workload dtype.
  const HostTensor qf = to_host(q.view(), DType::kFloat32);
  const HostTensor kf = to_host(k.view(), DType::kFloat32);
  const float* qp = qf.data<float>();
  const float* kp = kf.data<float>();
  const size_t num_maps = levels.size();
  const int64_t rows = batch * heads * seq_q;

  // Per (batch, head) partial sums of every map's kept mass, filled by a few threads.
  std::vector<double> kept(static_cast<size_t>(batch * heads) * num_maps, 0.0);
  auto work = [&](int64_t bh) {
    const int64_t b = bh / heads, h = bh % heads, hk = h / group;
    const float* kh = kp + (b * heads_kv + hk) * seq_k * dim;
    std::vector<double> mass(num_maps);
    std::vector<const uint8_t*> rows_of(num_maps);
    for (int64_t i = 0; i < seq_q; ++i) {
      const float* qi = qp + ((b * heads + h) * seq_q + i) * dim;
      const double lse = dense_lse.get((b * heads + h) * seq_q + i);
      const int64_t qblock = i / block_m;
      for (size_t m = 0; m < num_maps; ++m) {
        rows_of[m] = levels[m]->data<uint8_t>() + ((b * heads + h) * mq + qblock) * nk;
        mass[m] = 0.0;
      }
      for (int64_t j = 0; j < seq_k; ++j) {
        const float* kj = kh + j * dim;
        float dot = 0.0f;
        for (int64_t c = 0; c < dim; ++c) dot += qi[c] * kj[c];
        const double p = std::exp(scale * dot - lse);
        const int64_t kblock = j / block_n;
        for (size_t m = 0; m < num_maps; ++m) {
          if (rows_of[m][kblock] != 0) mass[m] += p;
        }
      }
      for (size_t m = 0; m < num_maps; ++m) kept[static_cast<size_t>(bh) * num_maps + m] += mass[m];
    }
  };
  const int64_t jobs = batch * heads;
  const int64_t threads =
      std::max<int64_t>(1, std::min<int64_t>(jobs, std::thread::hardware_concurrency()));
  std::vector<std::thread> pool;
  for (int64_t t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      for (int64_t bh = t; bh < jobs; bh += threads) work(bh);
    });
  }
  for (std::thread& th : pool) th.join();

  recall->assign(num_maps, 0.0);
  for (int64_t bh = 0; bh < jobs; ++bh) {
    for (size_t m = 0; m < num_maps; ++m) {
      (*recall)[m] += kept[static_cast<size_t>(bh) * num_maps + m];
    }
  }
  for (double& r : *recall) r /= static_cast<double>(std::max<int64_t>(rows, 1));
  return Status();
}

}  // namespace psa::tools
