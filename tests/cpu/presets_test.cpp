// Presets in the original YAML schema (SPEC.md section 9): the shipped presets carry the numbers of
// SPEC's table, a user's file in the schema loads, and every kind of bad file is rejected with a
// message naming the file, the line and the key path.
#include <gtest/gtest.h>

#include <array>
#include <cstdio>
#include <string>
#include <vector>

#include "common/random.h"
#include "common/test_util.h"
#include "psa/psa.h"

namespace psa {
namespace {

std::string data_path(const std::string& name) {
  return std::string(PSA_TEST_DATA_DIR) + "/presets/" + name;
}

PresetLibrary builtin_library() {
  PresetLibrary library;
  const Status s = PresetLibrary::load_builtin(&library);
  EXPECT_TRUE(s.ok()) << s.to_string();
  return library;
}

const Preset& find_or_die(const PresetLibrary& library, const std::string& selector) {
  static const Preset kEmpty;
  const Preset* preset = nullptr;
  const Status s = library.find(&preset, selector);
  EXPECT_TRUE(s.ok()) << selector << ": " << s.to_string();
  return preset != nullptr ? *preset : kEmpty;
}

const ModelPresets* find_model(const PresetLibrary& library, const std::string& name) {
  for (const ModelPresets& m : library.models()) {
    if (m.model == name) return &m;
  }
  return nullptr;
}

TEST(Presets, BuiltinLoadsAndEveryPresetValidates) {
  const PresetLibrary library = builtin_library();
  const std::vector<std::string> expected_models = {
      "Wan2.1_14b", "Wan2.1_1.3b", "Wan2.1_1.3b_4steps", "Wan2.2_A14B",
      "Wan2.2_5B",  "CogVideo1.5_5b", "CogVideo_5b"};
  ASSERT_EQ(library.models().size(), expected_models.size());
  for (size_t i = 0; i < expected_models.size(); ++i) {
    const ModelPresets& model = library.models()[i];
    EXPECT_EQ(model.model, expected_models[i]);  // file order is kept
    int dense_baselines = 0;
    for (const Preset& p : model.presets) {
      const std::string selector = model.model + ":" + p.name;
      EXPECT_EQ(&find_or_die(library, selector), &p) << selector;
      EXPECT_EQ(p.model, model.model);
      EXPECT_FALSE(p.description.empty()) << selector;
      EXPECT_TRUE(validate_config(p.config).ok()) << selector;
      if (p.name == "baseline" && p.dense) ++dense_baselines;
      if (!p.dense) {
        EXPECT_EQ(p.config.block_m, 128) << selector;
        EXPECT_EQ(p.config.tile_n, 32) << selector;
      }
    }
    EXPECT_EQ(dense_baselines, 1) << model.model << " needs a dense `baseline`";
    // The model name alone selects its default_attention.
    EXPECT_EQ(find_or_die(library, model.model).name, model.default_attention);
  }
}

TEST(Presets, ShippedFileOnDiskMatchesTheBuiltinCopy) {
  PresetLibrary from_file;
  const std::string path = std::string(PSA_SOURCE_DIR) + "/presets/psa_presets.yaml";
  const Status s = PresetLibrary::load_file(&from_file, path);
  ASSERT_TRUE(s.ok()) << s.to_string();
  const PresetLibrary builtin = builtin_library();
  ASSERT_EQ(from_file.models().size(), builtin.models().size());
  for (size_t i = 0; i < builtin.models().size(); ++i) {
    const ModelPresets& a = from_file.models()[i];
    const ModelPresets& b = builtin.models()[i];
    EXPECT_EQ(a.model, b.model);
    ASSERT_EQ(a.presets.size(), b.presets.size()) << a.model;
    for (size_t j = 0; j < a.presets.size(); ++j) {
      EXPECT_EQ(a.presets[j].name, b.presets[j].name);
      EXPECT_EQ(a.presets[j].config.ends, b.presets[j].config.ends);
    }
  }
}

// One row of SPEC.md section 9's table.
struct TableRow {
  const char* selector;
  int block_n;
  PlanMode mode;
  std::array<double, kNumLevels> ends;
  RearrangeMethod rearrange;
  bool sim_cap;
  int warmup_steps;
};

TEST(Presets, ShippedValuesMatchSpecTable) {
  using M = PlanMode;
  using R = RearrangeMethod;
  const TableRow rows[] = {
      {"Wan2.1_14b:psa_balanced", 128, M::kThresholdBound, {.4, .5, .6, .8}, R::kGilbert, false,
       15},
      {"Wan2.1_1.3b:psa_balanced", 128, M::kThresholdBound, {.5, .6, .7, .8}, R::kGilbert, true,
       15},
      {"Wan2.1_1.3b:psa_topk", 32, M::kTopK, {.05, .1, .15, .25}, R::kGilbert, false, 15},
      {"Wan2.1_1.3b_4steps:psa_4steps", 128, M::kTopK, {.05, .1, .1, .3}, R::kGilbert, false, 0},
      {"Wan2.2_A14B:psa_balanced", 32, M::kThresholdBound, {.5, .6, .6, .8}, R::kGilbert, false,
       12},
      {"Wan2.2_5B:psa_balanced", 32, M::kThresholdBound, {.6, .7, .7, .8}, R::kGilbert, false, 15},
      {"CogVideo1.5_5b:psa_balanced", 32, M::kTopK, {.1, .15, .15, .35}, R::kGilbert, false, 15},
      {"CogVideo_5b:psa_balanced", 128, M::kTopK, {.1, .15, .15, .35}, R::kNone, false, 15},
      {"CogVideo_5b:psa_4steps", 128, M::kTopK, {.05, .15, .25, .5}, R::kNone, false, 0},
  };
  const PresetLibrary library = builtin_library();
  for (const TableRow& row : rows) {
    SCOPED_TRACE(row.selector);
    const Preset& p = find_or_die(library, row.selector);
    EXPECT_FALSE(p.dense);
    EXPECT_EQ(p.config.block_m, 128);
    EXPECT_EQ(p.config.block_n, row.block_n);
    EXPECT_EQ(p.config.tile_n, 32);
    EXPECT_EQ(p.config.mode, row.mode);
    // Exact: "0.15" parses to the same double as the literal .15.
    EXPECT_EQ(p.config.ends, row.ends);
    EXPECT_EQ(p.rearrange, row.rearrange);
    EXPECT_EQ(p.use_rearrange, row.rearrange != R::kNone);
    EXPECT_EQ(p.config.sim_cap, row.sim_cap);
    EXPECT_EQ(p.warmup_steps, row.warmup_steps);
  }
  const Preset& sim = find_or_die(library, "Wan2.1_1.3b:psa_balanced");
  EXPECT_EQ(sim.config.sim_thresholds, (std::array<float, 3>{0.7f, 0.65f, 0.6f}));
  EXPECT_EQ(sim.attn_impl, "old_mask_type");
  EXPECT_EQ(find_or_die(library, "Wan2.1_1.3b").name, "psa_balanced");
  EXPECT_EQ(find_or_die(library, "Wan2.1_1.3b_4steps").name, "psa_4steps");
}

TEST(Presets, ShippedModelFields) {
  const PresetLibrary library = builtin_library();
  struct ModelRow {
    const char* model;
    int64_t depth, height, width, text;
  };
  const ModelRow rows[] = {
      {"Wan2.1_14b", 4, 16, 16, 0},     {"Wan2.1_1.3b", 4, 16, 16, 0},
      {"Wan2.1_1.3b_4steps", 4, 16, 16, 0}, {"Wan2.2_A14B", 4, 16, 16, 0},
      {"Wan2.2_5B", 4, 32, 32, 0},      {"CogVideo1.5_5b", 8, 16, 16, 226},
      {"CogVideo_5b", 4, 16, 16, 226},
  };
  for (const ModelRow& row : rows) {
    SCOPED_TRACE(row.model);
    const ModelPresets* m = find_model(library, row.model);
    ASSERT_NE(m, nullptr);
    EXPECT_EQ(m->video_scale[0], row.depth);
    EXPECT_EQ(m->video_scale[1], row.height);
    EXPECT_EQ(m->video_scale[2], row.width);
    EXPECT_EQ(m->text_length, row.text);
    for (const Preset& p : m->presets) EXPECT_EQ(p.config.text_len, row.text) << p.name;
  }
}

TEST(Presets, DefaultConfig) {
  const Config c = default_config();
  EXPECT_EQ(c.block_m, 128);
  EXPECT_EQ(c.block_n, 64);
  EXPECT_EQ(c.tile_n, 32);
  EXPECT_EQ(c.mode, PlanMode::kTopK);
  EXPECT_EQ(c.ends, (std::array<double, kNumLevels>{0.10, 0.15, 0.15, 0.35}));
  EXPECT_FALSE(c.sim_cap);
  EXPECT_TRUE(validate_config(c).ok());
  // 100 blocks make every interval a multiple of its alignment: 10 + 5/2 + 0/4 + 20/8 = 15 units.
  // Tolerance: a sum of four exact binary fractions divided by 100, so only the last ulp differs.
  double density = 0.0;
  ASSERT_TRUE(topk_row_density(&density, c, 100).ok());
  EXPECT_NEAR(density, 0.15, 1e-12);
}

TEST(Presets, UserFileInTheSchemaLoads) {
  PresetLibrary library;
  const Status s = PresetLibrary::load_file(&library, data_path("user_model.yaml"));
  ASSERT_TRUE(s.ok()) << s.to_string();
  ASSERT_EQ(library.models().size(), 1u);
  const ModelPresets& m = library.models()[0];
  EXPECT_EQ(m.model, "MyVideoModel");
  EXPECT_EQ(m.text_length, 77);
  EXPECT_EQ(m.video_scale[0], 2);
  EXPECT_EQ(m.video_scale[1], 8);
  EXPECT_EQ(m.video_scale[2], 8);
  ASSERT_EQ(m.presets.size(), 3u);

  const Preset& custom = find_or_die(library, "MyVideoModel");
  EXPECT_EQ(custom.name, "psa_custom");
  EXPECT_EQ(custom.description, "My custom PSA configuration");
  EXPECT_EQ(custom.config.block_m, 64);
  EXPECT_EQ(custom.config.block_n, 64);
  EXPECT_EQ(custom.config.mode, PlanMode::kThresholdBound);
  // Level 8 is absent: an empty interval that ends where level 4 ended.
  EXPECT_EQ(custom.config.ends, (std::array<double, kNumLevels>{0.5, 0.7, 0.9, 0.9}));
  EXPECT_EQ(custom.rearrange, RearrangeMethod::kTiles);
  EXPECT_EQ(custom.tile_size[0], 2);
  EXPECT_EQ(custom.tile_size[1], 4);
  EXPECT_EQ(custom.tile_size[2], 8);
  EXPECT_EQ(custom.warmup_steps, 10);
  EXPECT_FALSE(custom.verbose);
  EXPECT_FALSE(custom.config.sim_cap);
  EXPECT_EQ(custom.config.sim_thresholds, (std::array<float, 3>{0.5f, 0.4f, 0.3f}));
  EXPECT_EQ(custom.config.text_len, 77);
  EXPECT_EQ(custom.attn_impl, "new_mask_type");

  // Keys a preset leaves out keep the plug-and-play default.
  const Preset& minimal = find_or_die(library, "MyVideoModel:psa_minimal");
  const Config d = default_config();
  EXPECT_EQ(minimal.config.block_m, d.block_m);
  EXPECT_EQ(minimal.config.block_n, d.block_n);
  EXPECT_EQ(minimal.config.tile_n, d.tile_n);
  EXPECT_EQ(minimal.config.mode, PlanMode::kTopK);
  EXPECT_EQ(minimal.config.ends, (std::array<double, kNumLevels>{0.2, 0.3, 0.4, 0.6}));
  EXPECT_EQ(minimal.rearrange, RearrangeMethod::kNone);
  EXPECT_EQ(minimal.warmup_steps, 0);

  EXPECT_TRUE(find_or_die(library, "MyVideoModel:baseline").dense);
}

// Random valid mask_ratios (some levels left out) written as YAML read back exactly.
TEST(Presets, RandomMaskRatiosRoundTrip) {
  const uint64_t seed = test::test_seed(20260127);
  constexpr int kCases = 64;
  int non_zero = 0;
  for (int c = 0; c < kCases; ++c) {
    const detail::Philox4x32 r = detail::philox4x32(static_cast<uint32_t>(c), 0u, 0u, 0u,
                                                    static_cast<uint32_t>(seed),
                                                    static_cast<uint32_t>(seed >> 32));
    std::array<double, kNumLevels> expected{};
    std::string ratios;
    double previous = 0.0;
    for (int l = 0; l < kNumLevels; ++l) {
      // Byte l of the draw: the low bit leaves the level out, the rest sets its width in 1/1024.
      const uint32_t byte = (r.v[l % 4] >> (8 * (l / 4))) & 0xffu;
      const bool present = (byte & 1u) != 0;
      const double end = previous + static_cast<double>(byte >> 1) / 1024.0;
      if (present) {
        char line[96];
        std::snprintf(line, sizeof(line), "        %d: [%.17g, %.17g]\n", kLevelFactors[l],
                      previous, end);
        ratios += line;
        previous = end;
      }
      expected[l] = previous;
    }
    const std::string yaml = "M:\n  default_attention: p\n  attention_configs:\n    p:\n"
                             "      type: psa\n      mask_ratios:\n" + ratios +
                             "        0: [0.5, 1.0]\n";
    PresetLibrary library;
    const Status s = PresetLibrary::load_string(&library, yaml, "random.yaml");
    ASSERT_TRUE(s.ok()) << s.to_string() << "\n" << yaml << test::replay_hint(seed);
    const Preset& p = find_or_die(library, "M");
    EXPECT_EQ(p.config.ends, expected) << yaml << test::replay_hint(seed);
    if (expected[kNumLevels - 1] > 0.0) ++non_zero;
  }
  // The draws must exercise real intervals, not only empty rows.
  EXPECT_GT(non_zero, kCases / 2) << test::replay_hint(seed);
}

// A bad file: the message must name the file, the line and the key path, and say what is wrong.
struct BadCase {
  const char* name;
  const char* text;  // nullptr: the fixture tests/data/presets/<name>
  int line;
  const char* path;
  const char* what;
};

void expect_rejected(const BadCase& bad) {
  SCOPED_TRACE(bad.name);
  PresetLibrary library = builtin_library();
  const size_t models_before = library.models().size();
  const Status s = bad.text == nullptr
                       ? PresetLibrary::load_file(&library, data_path(bad.name))
                       : PresetLibrary::load_string(&library, bad.text, bad.name);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.to_string();
  const std::string& msg = s.message();
  const std::string where = std::string(bad.name) + ":" + std::to_string(bad.line) + ":";
  EXPECT_NE(msg.find(where), std::string::npos) << "want '" << where << "' in: " << msg;
  EXPECT_NE(msg.find(bad.path), std::string::npos) << "want '" << bad.path << "' in: " << msg;
  EXPECT_NE(msg.find(bad.what), std::string::npos) << "want '" << bad.what << "' in: " << msg;
  // A failed load leaves the library as it was.
  EXPECT_EQ(library.models().size(), models_before);
}

TEST(Presets, BadFixturesAreRejected) {
  const char* const kPreset = "BadModel.attention_configs.psa_bad";
  const std::string p(kPreset);
  const std::string paths[] = {p + ".mask_ratio",         p + ".mask_ratios.4",
                               p + ".mask_ratios.8",      p + ".block_size.n",
                               p + ".block_size.tile_n",  p + ".sim_thresholds.x4",
                               p + ".mask_mode"};
  const BadCase cases[] = {
      {"unknown_key.yaml", nullptr, 12, paths[0].c_str(), "unknown key"},
      {"decreasing_ends.yaml", nullptr, 11, paths[1].c_str(), "non-decreasing"},
      {"end_out_of_range.yaml", nullptr, 12, paths[2].c_str(), "end <= 1"},
      {"block_not_power_of_two.yaml", nullptr, 10, paths[3].c_str(), "power of two"},
      {"tile_n_too_large.yaml", nullptr, 11, paths[4].c_str(), "<= block_size.n (32), got 64"},
      {"threshold_out_of_range.yaml", nullptr, 12, paths[5].c_str(), "[-1, 1], got 1.5"},
      {"bad_mask_mode.yaml", nullptr, 12, paths[6].c_str(), "topk or thresholdbound"},
      {"malformed.yaml", nullptr, 11, "", "YAML syntax error"},
  };
  for (const BadCase& bad : cases) expect_rejected(bad);
}

TEST(Presets, BadStringsAreRejected) {
  const BadCase cases[] = {
      {"warmup.yaml",
       "M:\n  default_attention: p\n  attention_configs:\n    p:\n      type: psa\n"
       "      warmup_steps: -1\n",
       6, "M.attention_configs.p.warmup_steps", ">= 0, got -1"},
      {"no_type.yaml",
       "M:\n  default_attention: p\n  attention_configs:\n    p:\n      mask_mode: topk\n",
       4, "M.attention_configs.p", "missing key 'type'"},
      {"bad_type.yaml",
       "M:\n  default_attention: p\n  attention_configs:\n    p:\n      type: sparse\n",
       5, "M.attention_configs.p.type", "psa or dense"},
      {"default.yaml",
       "M:\n  default_attention: missing\n  attention_configs:\n    p:\n      type: dense\n",
       2, "M.default_attention", "available: p"},
      {"duplicate.yaml",
       "M:\n  default_attention: p\n  attention_configs:\n    p:\n      type: psa\n"
       "      mask_mode: topk\n      mask_mode: topk\n",
       7, "M.attention_configs.p.mask_mode", "duplicate key"},
      {"skip_end.yaml",
       "M:\n  default_attention: p\n  attention_configs:\n    p:\n      type: psa\n"
       "      mask_ratios:\n        1: [0.0, 0.5]\n        0: [0.5, 0.9]\n",
       8, "M.attention_configs.p.mask_ratios.0", "must end at 1.0"},
      {"start_after_end.yaml",
       "M:\n  default_attention: p\n  attention_configs:\n    p:\n      type: psa\n"
       "      mask_ratios:\n        1: [0.3, 0.2]\n",
       7, "M.attention_configs.p.mask_ratios.1", "start <= end"},
      {"unknown_level.yaml",
       "M:\n  default_attention: p\n  attention_configs:\n    p:\n      type: psa\n"
       "      mask_ratios:\n        16: [0.0, 0.2]\n",
       7, "M.attention_configs.p.mask_ratios.16", "unknown key"},
      {"not_interval.yaml",
       "M:\n  default_attention: p\n  attention_configs:\n    p:\n      type: psa\n"
       "      mask_ratios:\n        1: 0.2\n",
       7, "M.attention_configs.p.mask_ratios.1", "interval [start, end]"},
      {"bad_number.yaml",
       "M:\n  default_attention: p\n  attention_configs:\n    p:\n      type: psa\n"
       "      mask_ratios:\n        1: [0.0, half]\n",
       7, "M.attention_configs.p.mask_ratios.1", "got 'half'"},
      {"big_block.yaml",
       "M:\n  default_attention: p\n  attention_configs:\n    p:\n      type: psa\n"
       "      block_size: {m: 512, n: 64, tile_n: 32}\n",
       6, "M.attention_configs.p.block_size.m", "power of two in [16, 256], got 512"},
      {"bad_bool.yaml",
       "M:\n  default_attention: p\n  attention_configs:\n    p:\n      type: psa\n"
       "      use_sim_mask: maybe\n",
       6, "M.attention_configs.p.use_sim_mask", "true or false"},
      {"bad_method.yaml",
       "M:\n  default_attention: p\n  attention_configs:\n    p:\n      type: psa\n"
       "      rearrange_method: SemanticAware\n",
       6, "M.attention_configs.p.rearrange_method", "Gilbert or STA"},
      {"bad_tile.yaml",
       "M:\n  default_attention: p\n  attention_configs:\n    p:\n      type: psa\n"
       "      tile_size: [2, 8]\n",
       6, "M.attention_configs.p.tile_size", "[t, h, w]"},
      {"bad_scale.yaml",
       "M:\n  default_attention: p\n  video_scale:\n    width_divisor: 0\n"
       "  attention_configs:\n    p:\n      type: dense\n",
       4, "M.video_scale.width_divisor", ">= 1, got 0"},
      {"bad_text.yaml",
       "M:\n  default_attention: p\n  text_length: -5\n  attention_configs:\n    p:\n"
       "      type: dense\n",
       3, "M.text_length", ">= 0, got -5"},
      {"model_key.yaml",
       "M:\n  default_attention: p\n  text_len: 5\n  attention_configs:\n    p:\n"
       "      type: dense\n",
       3, "M.text_len", "unknown key"},
      {"no_configs.yaml", "M:\n  default_attention: p\n", 1, "M",
       "missing key 'attention_configs'"},
      {"empty_block_size.yaml",
       "M:\n  default_attention: p\n  attention_configs:\n    p:\n      type: psa\n"
       "      block_size:\n\n\n      mask_mode: topk\n",
       6, "M.attention_configs.p.block_size", "must be a mapping, got nothing"},
      {"empty_warmup.yaml",
       "M:\n  default_attention: p\n  attention_configs:\n    p:\n      type: psa\n"
       "      warmup_steps:\n      mask_mode: topk\n",
       6, "M.attention_configs.p.warmup_steps", "got nothing"},
      {"not_a_map.yaml", "- Wan2.1_14b\n- CogVideo_5b\n", 1, "", "expected a mapping"},
      // Found by the preset fuzzer: "model:name" selects a preset, so the presets of a model
      // named "a:b" could never be found.
      {"colon_model.yaml",
       "M:\n  default_attention: p\n  attention_configs:\n    p:\n      type: dense\n"
       "Wan:2.1:\n  default_attention: p\n  attention_configs:\n    p:\n      type: dense\n",
       6, "Wan:2.1", "must not contain ':'"},
  };
  for (const BadCase& bad : cases) expect_rejected(bad);
}

TEST(Presets, MissingFileIsAnIoErrorNamingThePath) {
  PresetLibrary library;
  const std::string path = data_path("no_such_presets.yaml");
  const Status s = PresetLibrary::load_file(&library, path);
  EXPECT_EQ(s.code(), StatusCode::kIoError) << s.to_string();
  EXPECT_NE(s.message().find(path), std::string::npos) << s.message();
}

TEST(Presets, UnknownNamesListTheAvailableOnes) {
  const PresetLibrary library = builtin_library();
  static const Preset kSentinel;
  const Preset* preset = &kSentinel;  // poisoned: a failed find must reset it
  Status s = library.find(&preset, "Wan3:psa_balanced");
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(preset, nullptr);
  EXPECT_NE(s.message().find("'Wan3'"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("Wan2.1_14b, Wan2.1_1.3b"), std::string::npos) << s.message();

  preset = &kSentinel;
  s = library.find(&preset, "CogVideo_5b:psa_topk");
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(preset, nullptr);
  EXPECT_NE(s.message().find("'psa_topk'"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("CogVideo_5b:baseline, CogVideo_5b:psa_balanced, "
                             "CogVideo_5b:psa_4steps"),
            std::string::npos)
      << s.message();
}

}  // namespace
}  // namespace psa
