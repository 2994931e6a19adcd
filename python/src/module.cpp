// psa._C: a thin adapter over the C++ API in include/psa/*.h. Every function takes caller-owned
// outputs (NumPy arrays or torch tensors, allocated on the Python side), converts every array to a
// psa::TensorView without copying, calls the library with the GIL released, and turns a non-ok
// Status into a Python exception. Nothing here links libtorch.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/array.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "convert.h"
#include "psa/psa.h"

namespace psa::python {
namespace {

using OptIn = std::optional<InArray>;
using OptOut = std::optional<OutArray>;

// The plan crosses as its two int32 arrays plus the numbers a PlanView carries.
PlanView make_plan(TensorView counts, TensorView blocks, int block_m, int block_n, int64_t seq_q,
                   int64_t seq_k) {
  PlanView plan;
  plan.counts = counts;
  plan.blocks = blocks;
  plan.block_m = block_m;
  plan.block_n = block_n;
  plan.seq_q = seq_q;
  plan.seq_k = seq_k;
  return plan;
}

// Runs `call` (a library call returning a Status) with the GIL released, so that other Python
// threads run during long CPU work, and raises its error once the GIL is held again.
template <typename Call>
Status without_gil(Call&& call) {
  nb::gil_scoped_release release;
  return call();
}

// Levels 2, 4, 8 of the pyramid as three keys and three values.
template <typename Array>
PyramidView make_pyramid(const std::vector<Array>& k_levels, const std::vector<Array>& v_levels) {
  if (k_levels.size() != kNumPooledLevels || v_levels.size() != kNumPooledLevels) {
    throw_value_error("pyramid must hold " + std::to_string(kNumPooledLevels) +
                      " pooled keys and values (factors 2, 4, 8), got " +
                      std::to_string(k_levels.size()) + " and " +
                      std::to_string(v_levels.size()));
  }
  static const char* const kKeyNames[kNumPooledLevels] = {"pyramid.k[x2]", "pyramid.k[x4]",
                                                           "pyramid.k[x8]"};
  static const char* const kValueNames[kNumPooledLevels] = {"pyramid.v[x2]", "pyramid.v[x4]",
                                                             "pyramid.v[x8]"};
  PyramidView pyramid;
  for (int l = 0; l < kNumPooledLevels; ++l) {
    pyramid.k[l] = to_view(k_levels[l], kKeyNames[l]);
    pyramid.v[l] = to_view(v_levels[l], kValueNames[l]);
  }
  return pyramid;
}

DType dtype_from_name(const std::string& name) {
  if (name == "float32") return DType::kFloat32;
  if (name == "float16") return DType::kFloat16;
  if (name == "bfloat16") return DType::kBFloat16;
  if (name == "float64") return DType::kFloat64;
  throw_value_error("dtype must be one of float32, float16, bfloat16, float64, got '" + name +
                    "'");
}

void bind_config(nb::module_& m) {
  nb::enum_<PlanMode>(m, "PlanMode")
      .value("topk", PlanMode::kTopK)
      .value("thresholdbound", PlanMode::kThresholdBound);
  nb::enum_<TextPosition>(m, "TextPosition")
      .value("start", TextPosition::kStart)
      .value("end", TextPosition::kEnd);
  nb::enum_<RearrangeMethod>(m, "RearrangeMethod")
      .value("none", RearrangeMethod::kNone)
      .value("gilbert", RearrangeMethod::kGilbert)
      .value("tiles", RearrangeMethod::kTiles);

  nb::class_<Config>(m, "NativeConfig", "psa::Config, field for field (see include/psa/config.h).")
      .def(nb::init<>())
      .def_rw("block_m", &Config::block_m)
      .def_rw("block_n", &Config::block_n)
      .def_rw("tile_n", &Config::tile_n)
      .def_rw("mode", &Config::mode)
      .def_rw("ends", &Config::ends)
      .def_rw("min_full_ratio", &Config::min_full_ratio)
      .def_rw("samples_m", &Config::samples_m)
      .def_rw("samples_n", &Config::samples_n)
      .def_rw("head_offset", &Config::head_offset)
      .def_rw("seed", &Config::seed)
      .def_rw("text_len", &Config::text_len)
      .def_rw("text_position", &Config::text_position)
      .def_rw("sim_cap", &Config::sim_cap)
      .def_rw("sim_thresholds", &Config::sim_thresholds)
      .def_rw("causal", &Config::causal)
      .def_rw("keep_first_block", &Config::keep_first_block)
      .def_rw("softmax_scale", &Config::softmax_scale)
      .def_rw("deterministic", &Config::deterministic);

  m.def("validate_config", [](const Config& config) { check(validate_config(config)); },
        "Raises ValueError naming the first invalid field.");
  m.def("default_config", &default_config);
  m.def(
      "topk_row_density",
      [](const Config& config, int64_t num_k_blocks) {
        double density = 0.0;
        check(topk_row_density(&density, config, num_k_blocks));
        return density;
      },
      nb::arg("config"), nb::arg("num_k_blocks"));
}

void bind_presets(nb::module_& m) {
  nb::class_<Preset>(m, "NativePreset")
      .def_ro("model", &Preset::model)
      .def_ro("name", &Preset::name)
      .def_ro("description", &Preset::description)
      .def_ro("dense", &Preset::dense)
      .def_ro("config", &Preset::config)
      .def_ro("use_rearrange", &Preset::use_rearrange)
      .def_ro("rearrange", &Preset::rearrange)
      .def_prop_ro("tile_size",
                   [](const Preset& p) {
                     return std::make_tuple(p.tile_size[0], p.tile_size[1], p.tile_size[2]);
                   })
      .def_ro("warmup_steps", &Preset::warmup_steps)
      .def_ro("verbose", &Preset::verbose)
      .def_ro("attn_impl", &Preset::attn_impl);
  nb::class_<ModelPresets>(m, "NativeModelPresets")
      .def_ro("model", &ModelPresets::model)
      .def_ro("default_attention", &ModelPresets::default_attention)
      .def_prop_ro("video_scale",
                   [](const ModelPresets& p) {
                     return std::make_tuple(p.video_scale[0], p.video_scale[1], p.video_scale[2]);
                   })
      .def_ro("text_length", &ModelPresets::text_length)
      .def_ro("presets", &ModelPresets::presets);

  // Every model of a preset file (path), of YAML text, or of the built-in presets (neither).
  m.def(
      "load_presets",
      [](std::optional<std::string> path, std::optional<std::string> text,
         const std::string& source_name) {
        PresetLibrary library;
        if (path && text) throw_value_error("load_presets takes a path or a text, not both");
        if (path) {
          check(PresetLibrary::load_file(&library, *path));
        } else if (text) {
          check(PresetLibrary::load_string(&library, *text, source_name));
        } else {
          check(PresetLibrary::load_builtin(&library));
        }
        return library.models();
      },
      nb::arg("path").none() = nb::none(), nb::arg("text").none() = nb::none(),
      nb::arg("source_name") = "<string>");
}

void bind_rearrange(nb::module_& m) {
  nb::class_<RearrangeSpec>(m, "RearrangeSpec")
      .def(nb::init<>())
      .def_rw("method", &RearrangeSpec::method)
      .def_rw("frames", &RearrangeSpec::frames)
      .def_rw("height", &RearrangeSpec::height)
      .def_rw("width", &RearrangeSpec::width)
      .def_rw("tile_t", &RearrangeSpec::tile_t)
      .def_rw("tile_h", &RearrangeSpec::tile_h)
      .def_rw("tile_w", &RearrangeSpec::tile_w)
      .def_rw("text_len", &RearrangeSpec::text_len)
      .def_rw("text_position", &RearrangeSpec::text_position)
      .def("num_tokens", &RearrangeSpec::num_tokens);
  m.def("rearranged_text_position", &rearranged_text_position);

  // Host int64 arrays of the right length are allocated by the caller.
  auto host_int64 = [](OutArray& array, int64_t length, const char* name) -> int64_t* {
    const TensorView t = to_view(array, name);
    if (t.device != Device::kCpu || t.dtype != DType::kInt64 || t.rank != 1 ||
        t.shape[0] != length || (length > 1 && t.stride[0] != 1)) {
      throw_value_error(std::string(name) + " must be a contiguous CPU int64 array of shape (" +
                        std::to_string(length) + "), got " + dtype_name(t.dtype) + " " +
                        shape_string(t) + " on " + device_name(t.device));
    }
    return static_cast<int64_t*>(t.data);
  };
  m.def("gilbert_order",
        [host_int64](OutArray order, int64_t frames, int64_t height, int64_t width) {
          int64_t* out = host_int64(order, frames * height * width, "order");
          check(gilbert_order(out, frames, height, width));
        });
  m.def("tile_order",
        [host_int64](OutArray order, int64_t frames, int64_t height, int64_t width, int64_t tile_t,
                     int64_t tile_h, int64_t tile_w) {
          int64_t* out = host_int64(order, frames * height * width, "order");
          check(tile_order(out, frames, height, width, tile_t, tile_h, tile_w));
        });
  m.def("make_permutation", [host_int64](OutArray perm, const RearrangeSpec& spec) {
    int64_t* out = host_int64(perm, spec.num_tokens(), "perm");
    check(make_permutation(out, spec));
  });
  m.def("invert_permutation", [host_int64](OutArray inverse, OutArray perm) {
    const int64_t n = static_cast<int64_t>(perm.ndim() == 1 ? perm.shape(0) : 0);
    int64_t* in = host_int64(perm, n, "perm");
    int64_t* out = host_int64(inverse, n, "inverse");
    check(invert_permutation(out, in, n));
  });
  m.def(
      "permute_tokens",
      [](OutArray out, InArray in, InArray perm, uintptr_t stream) {
        const TensorView out_view = to_view(out, "out");
        const TensorView in_view = to_view(in, "in");
        const TensorView perm_view = to_view(perm, "perm");
        if (perm_view.dtype != DType::kInt64 || perm_view.rank != 1 ||
            (perm_view.shape[0] > 1 && perm_view.stride[0] != 1) ||
            perm_view.device != in_view.device) {
          throw_value_error("perm must be a contiguous int64 vector on the device of `in` (" +
                            std::string(device_name(in_view.device)) + "), got " +
                            dtype_name(perm_view.dtype) + " " + shape_string(perm_view) + " on " +
                            device_name(perm_view.device));
        }
        if (in_view.rank == 4 && perm_view.shape[0] != in_view.shape[2]) {
          throw_value_error("perm must have one entry per token (" +
                            std::to_string(in_view.shape[2]) + "), got " +
                            std::to_string(perm_view.shape[0]));
        }
        check(without_gil([&] {
          return permute_tokens(out_view, in_view, static_cast<const int64_t*>(perm_view.data),
                                to_stream(stream));
        }));
      },
      nb::arg("out"), nb::arg("input"), nb::arg("perm"), nb::arg("stream") = 0);
}

void bind_ops(nb::module_& m) {
  m.def(
      "build_pyramid",
      [](std::vector<OutArray> k_levels, std::vector<OutArray> v_levels, InArray k, InArray v,
         uintptr_t stream) {
        const PyramidView pyramid = make_pyramid(k_levels, v_levels);
        const TensorView kv = to_view(k, "k"), vv = to_view(v, "v");
        check(without_gil([&] {
          return build_pyramid(pyramid, kv, vv, to_stream(stream));
        }));
      },
      nb::arg("k_levels"), nb::arg("v_levels"), nb::arg("k"), nb::arg("v"),
      nb::arg("stream") = 0);

  m.def(
      "estimate_importance",
      [](OutArray scores, InArray q, InArray k, const Config& config, uintptr_t stream) {
        const TensorView s = to_view(scores, "scores"), qv = to_view(q, "q"), kv = to_view(k, "k");
        check(without_gil([&] {
          return estimate_importance(s, qv, kv, config, to_stream(stream));
        }));
      },
      nb::arg("scores"), nb::arg("q"), nb::arg("k"), nb::arg("config"), nb::arg("stream") = 0);

  m.def("sample_block_offsets", [](uint64_t seed, int64_t batch, int64_t head, int block,
                                   int count) {
    if (count < 0 || count > block) {
      throw_value_error("count must be in [0, block] = [0, " + std::to_string(block) + "], got " +
                        std::to_string(count));
    }
    std::vector<int32_t> offsets(static_cast<size_t>(count));
    check(sample_block_offsets(offsets.data(), seed, batch, head, block, count));
    return offsets;
  });

  m.def(
      "plan_workspace_bytes",
      [](int64_t batch, int64_t heads, int64_t num_q_blocks, int64_t num_k_blocks, bool cuda) {
        PlanShape shape;
        shape.batch = batch;
        shape.heads = heads;
        shape.num_q_blocks = num_q_blocks;
        shape.num_k_blocks = num_k_blocks;
        return plan_workspace_bytes(shape, cuda ? Device::kCuda : Device::kCpu);
      },
      nb::arg("batch"), nb::arg("heads"), nb::arg("num_q_blocks"), nb::arg("num_k_blocks"),
      nb::arg("cuda"));

  m.def(
      "plan_from_scores",
      [](OutArray counts, OutArray blocks, int block_m, int block_n, int64_t seq_q, int64_t seq_k,
         InArray scores, OptIn k, const Config& config, OptOut workspace, uintptr_t stream) {
        const PlanView plan = make_plan(to_view(counts, "plan.counts"),
                                        to_view(blocks, "plan.blocks"), block_m, block_n, seq_q,
                                        seq_k);
        const TensorView s = to_view(scores, "scores"), kv = to_view(k, "k");
        const TensorView ws = to_view(workspace, "workspace");
        const size_t ws_bytes = ws.empty() ? 0 : static_cast<size_t>(numel(ws)) *
                                                     dtype_size(ws.dtype);
        check(without_gil([&] {
          return plan_from_scores(plan, s, kv, config, ws.data, ws_bytes, to_stream(stream));
        }));
      },
      nb::arg("counts"), nb::arg("blocks"), nb::arg("block_m"), nb::arg("block_n"),
      nb::arg("seq_q"), nb::arg("seq_k"), nb::arg("scores"), nb::arg("k").none(),
      nb::arg("config"), nb::arg("workspace").none() = nb::none(), nb::arg("stream") = 0);

  m.def(
      "plan_from_levels",
      [](OutArray counts, OutArray blocks, int block_m, int block_n, int64_t seq_q, int64_t seq_k,
         InArray levels, OptIn k, const Config& config, uintptr_t stream) {
        const PlanView plan = make_plan(to_view(counts, "plan.counts"),
                                        to_view(blocks, "plan.blocks"), block_m, block_n, seq_q,
                                        seq_k);
        const TensorView lv = to_view(levels, "levels"), kv = to_view(k, "k");
        check(without_gil([&] {
          return plan_from_levels(plan, lv, kv, config, to_stream(stream));
        }));
      },
      nb::arg("counts"), nb::arg("blocks"), nb::arg("block_m"), nb::arg("block_n"),
      nb::arg("seq_q"), nb::arg("seq_k"), nb::arg("levels"), nb::arg("k").none(),
      nb::arg("config"), nb::arg("stream") = 0);

  m.def(
      "plan_to_levels",
      [](OutArray levels, InArray counts, InArray blocks, int block_m, int block_n, int64_t seq_q,
         int64_t seq_k, uintptr_t stream) {
        const PlanView plan = make_plan(to_view(counts, "plan.counts"),
                                        to_view(blocks, "plan.blocks"), block_m, block_n, seq_q,
                                        seq_k);
        const TensorView lv = to_view(levels, "levels");
        check(without_gil([&] {
          return plan_to_levels(lv, plan, to_stream(stream));
        }));
      },
      nb::arg("levels"), nb::arg("counts"), nb::arg("blocks"), nb::arg("block_m"),
      nb::arg("block_n"), nb::arg("seq_q"), nb::arg("seq_k"), nb::arg("stream") = 0);

  // Returns (density, level_fraction for levels 0, 1, 2, 4, 8, density_per_head).
  m.def(
      "plan_statistics",
      [](InArray counts, InArray blocks, int block_m, int block_n, int64_t seq_q, int64_t seq_k) {
        const PlanView plan = make_plan(to_view(counts, "plan.counts"),
                                        to_view(blocks, "plan.blocks"), block_m, block_n, seq_q,
                                        seq_k);
        PlanStats stats;
        check(plan_statistics(&stats, plan));
        return std::make_tuple(stats.density, stats.level_fraction, stats.density_per_head);
      },
      nb::arg("counts"), nb::arg("blocks"), nb::arg("block_m"), nb::arg("block_n"),
      nb::arg("seq_q"), nb::arg("seq_k"));

  m.def(
      "attention_forward",
      [](OutArray out, OptOut lse, InArray q, InArray k, InArray v, std::vector<InArray> k_levels,
         std::vector<InArray> v_levels, InArray counts, InArray blocks, int block_m, int block_n,
         const Config& config, uintptr_t stream) {
        const TensorView o = to_view(out, "out"), l = to_view(lse, "lse");
        const TensorView qv = to_view(q, "q"), kv = to_view(k, "k"), vv = to_view(v, "v");
        const PyramidView pyramid = make_pyramid(k_levels, v_levels);
        const PlanView plan = make_plan(to_view(counts, "plan.counts"),
                                        to_view(blocks, "plan.blocks"), block_m, block_n,
                                        qv.rank == 4 ? qv.shape[2] : 0,
                                        kv.rank == 4 ? kv.shape[2] : 0);
        check(without_gil([&] {
          return attention_forward(o, l, qv, kv, vv, pyramid, plan, config, to_stream(stream));
        }));
      },
      nb::arg("out"), nb::arg("lse").none(), nb::arg("q"), nb::arg("k"), nb::arg("v"),
      nb::arg("k_levels"), nb::arg("v_levels"), nb::arg("counts"), nb::arg("blocks"),
      nb::arg("block_m"), nb::arg("block_n"), nb::arg("config"), nb::arg("stream") = 0);

  m.def(
      "attention_backward_workspace_bytes",
      [](InArray dout, InArray q, InArray k, InArray counts, InArray blocks, int block_m,
         int block_n, const Config& config) {
        const TensorView dov = to_view(dout, "dout");
        const TensorView qv = to_view(q, "q"), kv = to_view(k, "k");
        const PlanView plan = make_plan(to_view(counts, "plan.counts"),
                                        to_view(blocks, "plan.blocks"), block_m, block_n,
                                        qv.rank == 4 ? qv.shape[2] : 0,
                                        kv.rank == 4 ? kv.shape[2] : 0);
        return attention_backward_workspace_bytes(dov, qv, kv, plan, config);
      },
      nb::arg("dout"), nb::arg("q"), nb::arg("k"), nb::arg("counts"), nb::arg("blocks"),
      nb::arg("block_m"), nb::arg("block_n"), nb::arg("config"));

  m.def(
      "attention_backward",
      [](OutArray dq, OutArray dk, OutArray dv, InArray dout, InArray q, InArray k, InArray v,
         InArray out, InArray lse, InArray counts, InArray blocks, int block_m, int block_n,
         const Config& config, OptOut workspace, uintptr_t stream) {
        const TensorView dqv = to_view(dq, "dq"), dkv = to_view(dk, "dk"), dvv = to_view(dv, "dv");
        const TensorView dov = to_view(dout, "dout"), ov = to_view(out, "out");
        const TensorView lv = to_view(lse, "lse");
        const TensorView qv = to_view(q, "q"), kv = to_view(k, "k"), vv = to_view(v, "v");
        const PlanView plan = make_plan(to_view(counts, "plan.counts"),
                                        to_view(blocks, "plan.blocks"), block_m, block_n,
                                        qv.rank == 4 ? qv.shape[2] : 0,
                                        kv.rank == 4 ? kv.shape[2] : 0);
        const TensorView ws = to_view(workspace, "workspace");
        const size_t ws_bytes = ws.empty() ? 0 : static_cast<size_t>(numel(ws)) *
                                                     dtype_size(ws.dtype);
        check(without_gil([&] {
          return attention_backward(dqv, dkv, dvv, dov, qv, kv, vv, ov, lv, plan, config, ws.data,
                                    ws_bytes, to_stream(stream));
        }));
      },
      nb::arg("dq"), nb::arg("dk"), nb::arg("dv"), nb::arg("dout"), nb::arg("q"), nb::arg("k"),
      nb::arg("v"), nb::arg("out"), nb::arg("lse"), nb::arg("counts"), nb::arg("blocks"),
      nb::arg("block_m"), nb::arg("block_n"), nb::arg("config"),
      nb::arg("workspace").none() = nb::none(), nb::arg("stream") = 0);

  m.def(
      "dense_attention_forward",
      [](OutArray out, OptOut lse, InArray q, InArray k, InArray v, bool causal, float scale,
         uintptr_t stream) {
        const TensorView o = to_view(out, "out"), l = to_view(lse, "lse");
        const TensorView qv = to_view(q, "q"), kv = to_view(k, "k"), vv = to_view(v, "v");
        check(without_gil([&] {
          return dense_attention_forward(o, l, qv, kv, vv, causal, scale, to_stream(stream));
        }));
      },
      nb::arg("out"), nb::arg("lse").none(), nb::arg("q"), nb::arg("k"), nb::arg("v"),
      nb::arg("causal"), nb::arg("scale"), nb::arg("stream") = 0);

  m.def(
      "dense_attention_backward",
      [](OutArray dq, OutArray dk, OutArray dv, InArray dout, InArray q, InArray k, InArray v,
         InArray out, InArray lse, bool causal, float scale, uintptr_t stream) {
        const TensorView dqv = to_view(dq, "dq"), dkv = to_view(dk, "dk"), dvv = to_view(dv, "dv");
        const TensorView dov = to_view(dout, "dout"), ov = to_view(out, "out");
        const TensorView lv = to_view(lse, "lse");
        const TensorView qv = to_view(q, "q"), kv = to_view(k, "k"), vv = to_view(v, "v");
        check(without_gil([&] {
          return dense_attention_backward(dqv, dkv, dvv, dov, qv, kv, vv, ov, lv, causal, scale,
                                          to_stream(stream));
        }));
      },
      nb::arg("dq"), nb::arg("dk"), nb::arg("dv"), nb::arg("dout"), nb::arg("q"), nb::arg("k"),
      nb::arg("v"), nb::arg("out"), nb::arg("lse"), nb::arg("causal"), nb::arg("scale"),
      nb::arg("stream") = 0);

  m.def("cuda_backend_built", &cuda_backend_built);
  // (usable, reason): whether the CUDA backend can run on this machine now, and why not.
  m.def("cuda_device_usable", [] {
    std::string reason;
    const bool usable = cuda_device_usable(&reason);
    return std::make_tuple(usable, reason);
  });
  // (usable, reason): whether attention_backward runs on CUDA device `device_index`.
  m.def(
      "cuda_backward_usable",
      [](int device_index) {
        std::string reason;
        const bool usable = cuda_backward_usable(device_index, &reason);
        return std::make_tuple(usable, reason);
      },
      nb::arg("device_index") = 0);
  m.def(
      "cuda_attention_supported",
      [](const std::string& dtype, int64_t head_dim, int block_m, int block_n) {
        std::string reason;
        const bool ok = cuda_attention_supported(dtype_from_name(dtype), head_dim, block_m,
                                                 block_n, &reason);
        return std::make_tuple(ok, reason);
      },
      nb::arg("dtype"), nb::arg("head_dim"), nb::arg("block_m"), nb::arg("block_n"));
}

// The embedded video-DiT-like workload (include/psa/workload.h), written into caller-allocated
// float32 arrays q (B, H, L, D), k and v (B, Hkv, L, D); returns the mean local attention mass.
void bind_workload(nb::module_& m) {
  m.def(
      "generate_workload",
      [](OutArray q, OutArray k, OutArray v, int64_t frames, int64_t height, int64_t width,
         int64_t text_len, TextPosition text_position, uint64_t seed) {
        const TensorView qv = to_view(q, "q"), kv = to_view(k, "k"), vv = to_view(v, "v");
        const TensorView* outs[3] = {&qv, &kv, &vv};
        for (const TensorView* t : outs) {
          if (t->rank != 4 || t->dtype != DType::kFloat32 || t->device != Device::kCpu ||
              !is_contiguous(*t)) {
            throw_value_error("generate_workload fills contiguous float32 CPU arrays of rank 4");
          }
        }
        WorkloadSpec spec;
        spec.batch = qv.shape[0];
        spec.heads = qv.shape[1];
        spec.heads_kv = kv.shape[1];
        spec.head_dim = qv.shape[3];
        spec.frames = frames;
        spec.height = height;
        spec.width = width;
        spec.text_len = text_len;
        spec.text_position = text_position;
        spec.seed = seed;
        const int64_t seq = text_len + frames * height * width;
        const bool kv_match = kv.shape[0] == spec.batch && vv.shape[0] == spec.batch &&
                              vv.shape[1] == kv.shape[1] && kv.shape[3] == spec.head_dim &&
                              vv.shape[3] == spec.head_dim;
        if (qv.shape[2] != seq || kv.shape[2] != seq || vv.shape[2] != seq || !kv_match) {
          throw_value_error("q must be (B, H, L, D) and k, v (B, Hkv, L, D) with L = text_len + "
                            "frames * height * width = " + std::to_string(seq) + ", got q " +
                            shape_string(qv) + ", k " + shape_string(kv) + ", v " +
                            shape_string(vv));
        }
        Workload workload;
        check(without_gil([&] { return generate_workload(&workload, spec); }));
        const HostTensor* sources[3] = {&workload.q, &workload.k, &workload.v};
        for (int i = 0; i < 3; ++i) {
          std::memcpy(outs[i]->data, sources[i]->data<float>(),
                      static_cast<size_t>(numel(*outs[i])) * sizeof(float));
        }
        return workload.stats.mean_local_mass;
      },
      nb::arg("q"), nb::arg("k"), nb::arg("v"), nb::arg("frames"), nb::arg("height"),
      nb::arg("width"), nb::arg("text_len"), nb::arg("text_position"), nb::arg("seed"));
}

}  // namespace
}  // namespace psa::python

NB_MODULE(_C, m) {
  m.doc() = "psa's C++ library: Pyramid Sparse Attention (thin bindings; use the psa package).";
  psa::python::bind_config(m);
  psa::python::bind_presets(m);
  psa::python::bind_rearrange(m);
  psa::python::bind_ops(m);
  psa::python::bind_workload(m);
}
