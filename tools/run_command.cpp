#include <cmath>
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>

#include "commands.h"
#include "metrics.h"
#include "runner.h"

namespace psa::tools {

int report_error(const Status& status) {
  std::fprintf(stderr, "psa: error: %s\n", status.to_string().c_str());
  return status.code() == StatusCode::kNotBuilt ? kExitNotBuilt : kExitError;
}

namespace {

struct RunReport {
  Quality psa, binary;
  double psa_recall = std::nan(""), binary_recall = std::nan("");
};

Status parse_dtype(DType* dtype, const std::string& name, const std::string& device) {
  if (name == "auto") {
    *dtype = device == "cuda" ? DType::kBFloat16 : DType::kFloat32;
  } else if (name == "fp32") {
    *dtype = DType::kFloat32;
  } else if (name == "fp16") {
    *dtype = DType::kFloat16;
  } else if (name == "bf16") {
    *dtype = DType::kBFloat16;
  } else {
    return invalid_argument("--dtype must be auto, fp32, fp16 or bf16, got '" + name + "'");
  }
  if (device == "cuda" && *dtype == DType::kFloat32) {
    return invalid_argument("--dtype fp32 is CPU only; the CUDA backend computes fp16 or bf16");
  }
  return Status();
}

std::string fixed(double v, int digits) {
  if (std::isnan(v)) return "-";
  char buffer[32];
  std::snprintf(buffer, sizeof(buffer), "%.*f", digits, v);
  return buffer;
}

nlohmann::ordered_json json_number(double v) {
  return std::isfinite(v) ? nlohmann::ordered_json(v) : nlohmann::ordered_json(nullptr);
}

void print_table(const RunOptions& options, const Inputs& inputs, const Method& method,
                 const RunOutputs& o, const RunReport& r, DType dtype) {
  const WorkloadSpec& s = inputs.spec;
  std::printf(
      "psa run: %lldx%lldx%lld video + %lld text tokens (L = %lld), %lld heads x %lld, "
      "seed %llu, %s %s\n",
      static_cast<long long>(s.frames), static_cast<long long>(s.height),
      static_cast<long long>(s.width), static_cast<long long>(s.text_len),
      static_cast<long long>(inputs.q.shape()[2]), static_cast<long long>(s.heads),
      static_cast<long long>(s.head_dim), static_cast<unsigned long long>(s.seed),
      options.device.c_str(), dtype_name(dtype));
  std::printf("method:  %s (%s)\n", method.label.c_str(), describe_method(method).c_str());
  std::printf("workload: mean attention mass on the nearest 15%% of keys %.2f\n\n",
              inputs.workload.stats.mean_local_mass);
  std::printf("%-21s %8s %8s %9s %8s %7s %9s\n", "", "density", "rel L2", "cos mean", "cos p1",
              "recall", "attn ms");
  auto row = [&](const char* name, double density, const Quality& q, double recall, double ms) {
    std::printf("%-21s %8s %8s %9s %8s %7s %9s\n", name, fixed(density, 4).c_str(),
                fixed(q.rel_l2, 4).c_str(), fixed(q.cosine_mean, 5).c_str(),
                fixed(q.cosine_p1, 5).c_str(), fixed(recall, 3).c_str(), fixed(ms, 2).c_str());
  };
  row("PSA", o.stats.density, r.psa, r.psa_recall, o.times.attention_ms);
  row("binary block-sparse", o.binary_stats.density, r.binary, r.binary_recall,
      o.times.binary_attention_ms);
  Quality exact;
  exact.cosine_mean = exact.cosine_p1 = 1.0;
  row("dense", 1.0, exact, 1.0, o.times.dense_ms);

  const auto& f = o.stats.level_fraction;
  std::printf(
      "\nPSA blocks by level: 1: %.1f%%  2: %.1f%%  4: %.1f%%  8: %.1f%%  skipped: %.1f%%\n",
      100 * f[1], 100 * f[2], 100 * f[3], 100 * f[4], 100 * f[0]);
  std::printf("PSA density per head:");
  for (double d : o.stats.density_per_head) std::printf(" %.3f", d);
  std::printf(
      "\ntimes (ms%s): plan %.2f (estimate %.2f + planner %.2f), pyramid %.2f, "
      "rearrange %.2f, workload %.1f\n",
      o.repeat > 1 ? (", median of " + std::to_string(o.repeat)).c_str() : "", o.times.plan_ms(),
      o.times.estimate_ms, o.times.planner_ms, o.times.pyramid_ms, o.times.rearrange_ms,
      inputs.workload_ms);
  if (!o.binary_equal_density) {
    std::printf(
        "binary block-sparse cannot be planned at PSA's density here (nearest %.4f, more than "
        "half a block per row away): no equal-density comparison\n",
        o.binary_stats.density);
  } else if (r.binary.rel_l2 > 0.0) {
    std::printf("PSA error / binary error at equal density: %.2f\n",
                r.psa.rel_l2 / r.binary.rel_l2);
  }
}

void print_json(const RunOptions& options, const Inputs& inputs, const Method& method,
                const RunOutputs& o, const RunReport& r, DType dtype) {
  const WorkloadSpec& s = inputs.spec;
  nlohmann::ordered_json j;
  j["density"] = o.stats.density;
  j["rel_l2"] = json_number(r.psa.rel_l2);
  j["cosine"] = json_number(r.psa.cosine_mean);
  j["cosine_p1"] = json_number(r.psa.cosine_p1);
  j["lse_abs_err"] = json_number(r.psa.lse_abs_err);
  j["recall"] = json_number(r.psa_recall);
  j["binary_density"] = o.binary_stats.density;
  j["binary_equal_density"] = o.binary_equal_density;
  j["binary_rel_l2"] = json_number(r.binary.rel_l2);
  j["binary_cosine"] = json_number(r.binary.cosine_mean);
  j["binary_cosine_p1"] = json_number(r.binary.cosine_p1);
  j["binary_lse_abs_err"] = json_number(r.binary.lse_abs_err);
  j["binary_recall"] = json_number(r.binary_recall);
  j["plan_ms"] = o.times.plan_ms();
  j["estimate_ms"] = o.times.estimate_ms;
  j["planner_ms"] = o.times.planner_ms;
  j["pyramid_ms"] = o.times.pyramid_ms;
  j["attention_ms"] = o.times.attention_ms;
  j["binary_plan_ms"] = o.times.estimate_ms + o.times.binary_planner_ms;
  j["binary_attention_ms"] = o.times.binary_attention_ms;
  j["dense_ms"] = o.times.dense_ms;
  j["rearrange_ms"] = o.times.rearrange_ms;
  j["workload_ms"] = inputs.workload_ms;
  j["repeat"] = o.repeat;
  j["density_per_head"] = o.stats.density_per_head;
  const auto& f = o.stats.level_fraction;
  j["level_fraction"] = {{"0", f[0]}, {"1", f[1]}, {"2", f[2]}, {"4", f[3]}, {"8", f[4]}};
  j["device"] = options.device;
  j["dtype"] = dtype_name(dtype);
  j["method"] = method.label;
  j["method_description"] = describe_method(method);
  j["workload"] = {{"frames", s.frames},
                   {"height", s.height},
                   {"width", s.width},
                   {"text", s.text_len},
                   {"text_position", text_position_name(s.text_position)},
                   {"heads", s.heads},
                   {"head_dim", s.head_dim},
                   {"seq_len", inputs.q.shape()[2]},
                   {"seed", s.seed},
                   {"mean_local_mass", inputs.workload.stats.mean_local_mass}};
  std::cout << j.dump(2) << std::endl;
}

#if defined(PSA_WITH_CUDA)
// The inputs rounded to `dtype` and widened back to fp32: the dense reference of a 16-bit run
// then sees the same numbers the kernel saw, so rounding of the inputs is not counted as error.
HostTensor rounded(const HostTensor& t, DType dtype) {
  return to_host(to_host(t.view(), dtype).view(), DType::kFloat32);
}
#endif

}  // namespace

int run_command(const RunOptions& options) {
  if (options.device != "cpu" && options.device != "cuda") {
    return report_error(
        invalid_argument("--device must be cpu or cuda, got '" + options.device + "'"));
  }
  if (options.device == "cuda" && !cuda_backend_built()) {
    return report_error(Status(StatusCode::kNotBuilt, "psa was built without the CUDA backend"));
  }
  if (options.device == "cuda") {
    // Asked before any CUDA call, so that a machine without a GPU or driver hears that, and not
    // the first call's "CUDA driver version is insufficient for CUDA runtime version".
    std::string reason;
    if (!cuda_device_usable(&reason)) {
      return report_error(Status(StatusCode::kCudaError,
                                 "--device cuda: no usable CUDA device was found (" + reason +
                                     "); run on the CPU with --device cpu"));
    }
  }
  DType dtype = DType::kFloat32;
  Status st = parse_dtype(&dtype, options.dtype, options.device);
  if (!st.ok()) return report_error(st);

  Method method;
  st = resolve_method(&method, options.problem);
  if (!st.ok()) return report_error(st);
  if (method.dense) {
    return report_error(invalid_argument("--preset " + options.problem.preset +
                                         " is dense attention; choose a PSA preset"));
  }
  // The CPU runs in the chosen dtype; the GPU path gets fp32 inputs and rounds on upload.
  Inputs inputs;
  st = prepare_inputs(&inputs, options.problem, method,
                      options.device == "cpu" ? dtype : DType::kFloat32);
  if (!st.ok()) return report_error(st);

  RunOutputs outputs;
  HostTensor ref_out, ref_lse;
  if (options.device == "cpu") {
    st = run_on_cpu(&outputs, inputs, options.repeat);
    if (!st.ok()) return report_error(st);
    ref_out = outputs.dense_out;
    ref_lse = outputs.dense_lse;
  } else {
#if defined(PSA_WITH_CUDA)
    st = run_on_cuda(&outputs, inputs, dtype, options.repeat);
    if (!st.ok()) return report_error(st);
    // The reference is fp32 dense attention on the CPU over the inputs as the GPU saw them.
    const Workload& w = inputs.workload;
    const HostTensor q = rounded(w.q, dtype), k = rounded(w.k, dtype), v = rounded(w.v, dtype);
    ref_out = HostTensor(DType::kFloat32, q.shape());
    ref_lse = HostTensor(DType::kFloat32, {q.shape()[0], q.shape()[1], q.shape()[2]});
    st = dense_attention_forward(ref_out.view(), ref_lse.view(), q.view(), k.view(), v.view(),
                                 inputs.config.causal, inputs.config.softmax_scale);
    if (!st.ok()) return report_error(st);
#else
    return report_error(Status(StatusCode::kNotBuilt, "psa was built without the CUDA backend"));
#endif
  }

  RunReport report;
  report.psa = compare_outputs(outputs.out, outputs.lse, ref_out, ref_lse);
  report.binary = compare_outputs(outputs.binary_out, outputs.binary_lse, ref_out, ref_lse);
  if (options.recall) {
    // Recall is computed in planning order, where the plans' blocks are.
    HostTensor lse_planning, psa_levels, binary_levels;
    st = permute_sequence(&lse_planning, ref_lse, inputs.perm);
    if (st.ok()) st = plan_levels(&psa_levels, outputs.plan);
    if (st.ok()) st = plan_levels(&binary_levels, outputs.binary_plan);
    std::vector<double> recall;
    if (st.ok()) {
      st =
          attention_recall(&recall, inputs.q, inputs.k, lse_planning, {&psa_levels, &binary_levels},
                           outputs.plan.block_m, outputs.plan.block_n, inputs.config.softmax_scale);
    }
    if (!st.ok()) return report_error(st);
    report.psa_recall = recall[0];
    report.binary_recall = recall[1];
  }

  if (options.json) {
    print_json(options, inputs, method, outputs, report, dtype);
  } else {
    print_table(options, inputs, method, outputs, report, dtype);
  }
  return 0;
}

}  // namespace psa::tools
