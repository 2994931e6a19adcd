// Reader of presets in the original release's YAML schema (SPEC.md section 9):
//
//   Model:
//     default_attention: name
//     video_scale: {width_divisor, height_divisor, depth_divisor}
//     text_length: int
//     attention_configs:
//       name: {type, description, use_rearrange, use_sim_mask, block_size {m, n, tile_n},
//              mask_ratios {1: [s, e], 2: .., 4: .., 8: .., 0: ..}, mask_mode, attn_impl,
//              tile_size [t, h, w], warmup_steps, rearrange_method, verbose,
//              sim_thresholds {x2, x4, x8}}
//
// Every error names the source, the line (1-based) and the dotted key path, e.g.
// "presets.yaml:42: Wan2.1_1.3b.attention_configs.psa_balanced.block_size.n: must be ...".
// yaml-cpp reports through exceptions; they are caught here and never cross the API.
#include <yaml-cpp/yaml.h>

#include <cerrno>
#include <charconv>
#include <cstdint>
#include <cstring>
#include <cstdio>
#include <new>
#include <set>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "common/format.h"
#include "common/index_math.h"
#include "psa/presets.h"

namespace psa::detail {
extern const char* const kBuiltinPresetsYaml;
}  // namespace psa::detail

namespace psa {

Config default_config() {
  Config c;
  c.block_m = 128;
  c.block_n = 64;
  c.tile_n = 32;
  c.mode = PlanMode::kTopK;
  c.ends = {0.10, 0.15, 0.15, 0.35};
  return c;
}

namespace {

// The name under which the compiled-in presets report errors.
constexpr const char* kBuiltinSourceName = "presets/psa_presets.yaml (built in)";
// Block sizes that validate_config accepts, checked here too so that the message names the key.
constexpr int64_t kMinBlock = 16;
constexpr int64_t kMaxBlock = 256;
// mask_ratios keys in the order of increasing interval end (level 0 = skipped takes the rest).
constexpr const char* kLevelKeys[kNumLevels] = {"1", "2", "4", "8"};
constexpr const char* kSkipLevelKey = "0";

struct Entry {
  std::string key;
  YAML::Node key_node;
  YAML::Node value;
  // Where errors about the value point: an empty value ("key:") has no position of its own
  // (yaml-cpp marks it at the next token, often lines later), so it points at its key.
  YAML::Mark mark() const { return value.IsNull() ? key_node.Mark() : value.Mark(); }
};

std::string join(const std::vector<std::string>& names) {
  std::string out;
  for (size_t i = 0; i < names.size(); ++i) {
    if (i > 0) out += ", ";
    out += names[i];
  }
  return out;
}

std::string node_kind(const YAML::Node& node) {
  if (node.IsMap()) return "a mapping";
  if (node.IsSequence()) return "a sequence";
  if (node.IsNull()) return "nothing";
  if (node.IsScalar()) return "'" + node.Scalar() + "'";
  return "an undefined node";
}

// Errors of one source: "<source>:<line>: <path>: <what>".
class Reader {
 public:
  explicit Reader(std::string source) : source_(std::move(source)) {}

  Status error(const YAML::Mark& mark, const std::string& path, const std::string& what) const {
    std::string message = source_;
    if (!mark.is_null()) message += ":" + std::to_string(mark.line + 1);
    message += ": ";
    if (!path.empty()) message += path + ": ";
    return invalid_argument(message + what);
  }

  // The entries of a mapping in file order; rejects non-mappings, non-scalar and duplicate keys,
  // and keys outside `allowed` (when given).
  Status entries(std::vector<Entry>* out, const YAML::Node& node, const YAML::Mark& mark,
                 const std::string& path, const std::vector<std::string>* allowed) const {
    if (!node.IsMap()) return error(mark, path, "must be a mapping, got " + node_kind(node));
    std::set<std::string> seen;
    for (auto it = node.begin(); it != node.end(); ++it) {
      const YAML::Node key_node = it->first;
      if (!key_node.IsScalar()) {
        return error(key_node.Mark(), path,
                     "keys must be plain names, got " + node_kind(key_node));
      }
      const std::string key = key_node.Scalar();
      const std::string key_path = path.empty() ? key : path + "." + key;
      if (allowed != nullptr) {
        bool known = false;
        for (const std::string& a : *allowed) known = known || a == key;
        if (!known) {
          return error(key_node.Mark(), key_path,
                       "unknown key; expected one of " + join(*allowed));
        }
      }
      if (!seen.insert(key).second) return error(key_node.Mark(), key_path, "duplicate key");
      out->push_back(Entry{key, key_node, it->second});
    }
    return Status();
  }

  Status scalar(std::string* out, const YAML::Node& node, const YAML::Mark& mark,
                const std::string& path, const char* expected) const {
    if (!node.IsScalar()) {
      return error(mark, path, std::string("must be ") + expected + ", got " + node_kind(node));
    }
    *out = node.Scalar();
    return Status();
  }

  Status string_value(std::string* out, const YAML::Node& node, const YAML::Mark& mark,
                      const std::string& path) const {
    if (node.IsNull()) {
      out->clear();
      return Status();
    }
    return scalar(out, node, mark, path, "a string");
  }

  Status int_value(int64_t* out, const YAML::Node& node, const YAML::Mark& mark,
                   const std::string& path, const char* expected) const {
    std::string text;
    PSA_RETURN_IF_ERROR(scalar(&text, node, mark, path, expected));
    const char* end = text.data() + text.size();
    const auto result = std::from_chars(text.data(), end, *out);
    if (result.ec != std::errc() || result.ptr != end) {
      return error(mark, path, std::string("must be ") + expected + ", got '" + text + "'");
    }
    return Status();
  }

  Status double_value(double* out, const YAML::Node& node, const YAML::Mark& mark,
                      const std::string& path, const char* expected) const {
    std::string text;
    PSA_RETURN_IF_ERROR(scalar(&text, node, mark, path, expected));
    const char* end = text.data() + text.size();
    const auto result = std::from_chars(text.data(), end, *out);
    if (text.empty() || result.ec != std::errc() || result.ptr != end) {
      return error(mark, path, std::string("must be ") + expected + ", got '" + text + "'");
    }
    return Status();
  }

  // The YAML 1.1 booleans that PyYAML (the original reader) accepts.
  Status bool_value(bool* out, const YAML::Node& node, const YAML::Mark& mark,
                    const std::string& path) const {
    static const char* const kTrue[] = {"true", "True", "TRUE", "yes", "Yes",
                                        "YES",  "on",   "On",   "ON"};
    static const char* const kFalse[] = {"false", "False", "FALSE", "no", "No",
                                         "NO",    "off",   "Off",   "OFF"};
    std::string text;
    PSA_RETURN_IF_ERROR(scalar(&text, node, mark, path, "true or false"));
    for (const char* t : kTrue) {
      if (text == t) {
        *out = true;
        return Status();
      }
    }
    for (const char* f : kFalse) {
      if (text == f) {
        *out = false;
        return Status();
      }
    }
    return error(mark, path, "must be true or false, got '" + text + "'");
  }

 private:
  std::string source_;
};

std::string child(const std::string& path, const std::string& key) { return path + "." + key; }

std::string format_ratio(double value) { return detail::format_double(value); }

// block_size {m, n, tile_n}: powers of two, m and n in [16, 256], tile_n <= n. A missing tile_n
// becomes min(32, n), as the original's functional interface does.
Status read_block_size(Config* config, const Reader& r, const Entry& entry,
                       const std::string& path) {
  static const std::vector<std::string> kKeys = {"m", "n", "tile_n"};
  std::vector<Entry> entries;
  PSA_RETURN_IF_ERROR(r.entries(&entries, entry.value, entry.mark(), path, &kKeys));
  const Entry* tile_entry = nullptr;
  int64_t tile_n = 0;
  for (const Entry& e : entries) {
    const std::string p = child(path, e.key);
    int64_t value = 0;
    PSA_RETURN_IF_ERROR(r.int_value(&value, e.value, e.mark(), p, "a power of two"));
    if (e.key == "tile_n") {
      if (!detail::is_power_of_two(value)) {
        return r.error(e.mark(), p, "must be a power of two, got " + std::to_string(value));
      }
      tile_entry = &e;
      tile_n = value;
      continue;
    }
    if (!detail::is_power_of_two(value) || value < kMinBlock || value > kMaxBlock) {
      return r.error(e.mark(), p,
                     "must be a power of two in [" + std::to_string(kMinBlock) + ", " +
                         std::to_string(kMaxBlock) + "], got " + std::to_string(value));
    }
    (e.key == "m" ? config->block_m : config->block_n) = static_cast<int>(value);
  }
  if (tile_entry == nullptr) {
    config->tile_n = config->block_n < 32 ? config->block_n : 32;
    return Status();
  }
  if (tile_n > config->block_n) {
    return r.error(tile_entry->mark(), child(path, "tile_n"),
                   "must be <= block_size.n (" + std::to_string(config->block_n) + "), got " +
                       std::to_string(tile_n));
  }
  config->tile_n = static_cast<int>(tile_n);
  return Status();
}

// mask_ratios {1: [s, e], 2: .., 4: .., 8: .., 0: ..} -> Config::ends. Only the ends matter; a
// missing level is an empty interval (its end is the previous level's end), e.g.
// {1: [0, .5], 2: [.5, .7], 8: [.7, .9]} gives ends .5/.7/.7/.9.
Status read_mask_ratios(Config* config, const Reader& r, const Entry& entry,
                        const std::string& path) {
  static const std::vector<std::string> kKeys = {"1", "2", "4", "8", "0"};
  std::vector<Entry> entries;
  PSA_RETURN_IF_ERROR(r.entries(&entries, entry.value, entry.mark(), path, &kKeys));
  double interval_end[kNumLevels + 1] = {};
  const Entry* level_entry[kNumLevels + 1] = {};
  for (const Entry& e : entries) {
    const std::string p = child(path, e.key);
    if (!e.value.IsSequence() || e.value.size() != 2) {
      return r.error(e.mark(), p,
                     "must be an interval [start, end], got " + node_kind(e.value));
    }
    double start = 0.0, end = 0.0;
    PSA_RETURN_IF_ERROR(r.double_value(&start, e.value[0], e.mark(), p, "a fraction in [0, 1]"));
    PSA_RETURN_IF_ERROR(r.double_value(&end, e.value[1], e.mark(), p, "a fraction in [0, 1]"));
    if (!(start >= 0.0 && end <= 1.0 && start <= end)) {
      return r.error(e.mark(), p,
                     "must be an interval [start, end] with 0 <= start <= end <= 1, got [" +
                         format_ratio(start) + ", " + format_ratio(end) + "]");
    }
    int slot = kNumLevels;  // level 0
    for (int l = 0; l < kNumLevels; ++l) {
      if (e.key == kLevelKeys[l]) slot = l;
    }
    interval_end[slot] = end;
    level_entry[slot] = &e;
  }
  double previous = 0.0;
  const char* previous_key = nullptr;
  for (int l = 0; l < kNumLevels; ++l) {
    if (level_entry[l] == nullptr) {
      config->ends[l] = previous;
      continue;
    }
    const double end = interval_end[l];
    if (end < previous) {
      return r.error(level_entry[l]->mark(), child(path, kLevelKeys[l]),
                     "interval ends must be non-decreasing over levels 1, 2, 4, 8; level " +
                         std::string(kLevelKeys[l]) + " ends at " + format_ratio(end) +
                         ", before level " + previous_key + "'s end " + format_ratio(previous));
    }
    config->ends[l] = end;
    previous = end;
    previous_key = kLevelKeys[l];
  }
  if (level_entry[kNumLevels] != nullptr && interval_end[kNumLevels] != 1.0) {
    return r.error(level_entry[kNumLevels]->mark(), child(path, kSkipLevelKey),
                   "the skipped level's interval must end at 1.0 (the rest of the row), got " +
                       format_ratio(interval_end[kNumLevels]));
  }
  return Status();
}

Status read_sim_thresholds(Config* config, const Reader& r, const Entry& entry,
                           const std::string& path) {
  static const std::vector<std::string> kKeys = {"x2", "x4", "x8"};
  std::vector<Entry> entries;
  PSA_RETURN_IF_ERROR(r.entries(&entries, entry.value, entry.mark(), path, &kKeys));
  for (const Entry& e : entries) {
    const std::string p = child(path, e.key);
    double value = 0.0;
    PSA_RETURN_IF_ERROR(r.double_value(&value, e.value, e.mark(), p, "a cosine in [-1, 1]"));
    if (!(value >= -1.0 && value <= 1.0)) {
      return r.error(e.mark(), p, "must be a cosine in [-1, 1], got " + format_ratio(value));
    }
    const int slot = e.key == "x2" ? 0 : (e.key == "x4" ? 1 : 2);
    config->sim_thresholds[slot] = static_cast<float>(value);
  }
  return Status();
}

Status read_tile_size(Preset* preset, const Reader& r, const Entry& entry,
                      const std::string& path) {
  const YAML::Node& node = entry.value;
  if (!node.IsSequence() || node.size() != 3) {
    return r.error(entry.mark(), path, "must be a list [t, h, w] of 3 positive integers, got " +
                                   node_kind(node));
  }
  for (size_t i = 0; i < 3; ++i) {
    int64_t value = 0;
    PSA_RETURN_IF_ERROR(r.int_value(&value, node[i], entry.mark(), path, "a positive integer"));
    if (value < 1) {
      return r.error(entry.mark(), path,
                     "must hold positive integers, got " + std::to_string(value));
    }
    preset->tile_size[i] = value;
  }
  return Status();
}

Status read_preset(Preset* preset, const Reader& r, const Entry& entry, const std::string& path,
                   int64_t text_length) {
  static const std::vector<std::string> kKeys = {
      "type", "description", "use_rearrange", "use_sim_mask", "block_size", "mask_ratios",
      "mask_mode", "attn_impl", "tile_size", "warmup_steps", "rearrange_method", "verbose",
      "sim_thresholds"};
  std::vector<Entry> entries;
  PSA_RETURN_IF_ERROR(r.entries(&entries, entry.value, entry.mark(), path, &kKeys));
  preset->name = entry.key;
  // Keys that a preset leaves out keep the plug-and-play default (as the original's PSAConfig).
  preset->config = default_config();
  preset->config.text_len = text_length;
  bool has_type = false;
  RearrangeMethod method = RearrangeMethod::kGilbert;
  for (const Entry& e : entries) {
    const std::string p = child(path, e.key);
    std::string text;
    if (e.key == "type") {
      PSA_RETURN_IF_ERROR(r.scalar(&text, e.value, e.mark(), p, "psa or dense"));
      if (text != "psa" && text != "dense") {
        return r.error(e.mark(), p, "must be psa or dense, got '" + text + "'");
      }
      preset->dense = text == "dense";
      has_type = true;
    } else if (e.key == "description") {
      PSA_RETURN_IF_ERROR(r.string_value(&preset->description, e.value, e.mark(), p));
    } else if (e.key == "use_rearrange") {
      PSA_RETURN_IF_ERROR(r.bool_value(&preset->use_rearrange, e.value, e.mark(), p));
    } else if (e.key == "use_sim_mask") {
      PSA_RETURN_IF_ERROR(r.bool_value(&preset->config.sim_cap, e.value, e.mark(), p));
    } else if (e.key == "block_size") {
      PSA_RETURN_IF_ERROR(read_block_size(&preset->config, r, e, p));
    } else if (e.key == "mask_ratios") {
      PSA_RETURN_IF_ERROR(read_mask_ratios(&preset->config, r, e, p));
    } else if (e.key == "mask_mode") {
      PSA_RETURN_IF_ERROR(r.scalar(&text, e.value, e.mark(), p, "topk or thresholdbound"));
      if (text == "topk") {
        preset->config.mode = PlanMode::kTopK;
      } else if (text == "thresholdbound") {
        preset->config.mode = PlanMode::kThresholdBound;
      } else {
        return r.error(e.mark(), p, "must be topk or thresholdbound, got '" + text + "'");
      }
    } else if (e.key == "attn_impl") {
      // Accepted and stored: the original chose between two kernels; we have one.
      PSA_RETURN_IF_ERROR(r.string_value(&preset->attn_impl, e.value, e.mark(), p));
    } else if (e.key == "tile_size") {
      PSA_RETURN_IF_ERROR(read_tile_size(preset, r, e, p));
    } else if (e.key == "warmup_steps") {
      int64_t steps = 0;
      PSA_RETURN_IF_ERROR(r.int_value(&steps, e.value, e.mark(), p, "an integer >= 0"));
      if (steps < 0 || steps > INT32_MAX) {
        return r.error(e.mark(), p, "must be an integer >= 0, got " + std::to_string(steps));
      }
      preset->warmup_steps = static_cast<int>(steps);
    } else if (e.key == "rearrange_method") {
      PSA_RETURN_IF_ERROR(r.scalar(&text, e.value, e.mark(), p, "Gilbert or STA"));
      if (text == "Gilbert") {
        method = RearrangeMethod::kGilbert;
      } else if (text == "STA") {
        method = RearrangeMethod::kTiles;
      } else {
        return r.error(e.mark(), p, "must be Gilbert or STA, got '" + text + "'");
      }
    } else if (e.key == "verbose") {
      PSA_RETURN_IF_ERROR(r.bool_value(&preset->verbose, e.value, e.mark(), p));
    } else {  // sim_thresholds, the last of kKeys
      PSA_RETURN_IF_ERROR(read_sim_thresholds(&preset->config, r, e, p));
    }
  }
  if (!has_type) return r.error(entry.key_node.Mark(), path, "missing key 'type' (psa or dense)");
  // rearrange_method only takes effect with use_rearrange (CogVideo_5b names Gilbert but is off).
  preset->rearrange = preset->use_rearrange ? method : RearrangeMethod::kNone;
  const Status valid = validate_config(preset->config);
  if (!valid.ok()) return r.error(entry.key_node.Mark(), path, valid.message());
  return Status();
}

Status read_video_scale(ModelPresets* model, const Reader& r, const Entry& entry,
                        const std::string& path) {
  static const std::vector<std::string> kKeys = {"width_divisor", "height_divisor",
                                                 "depth_divisor"};
  std::vector<Entry> entries;
  PSA_RETURN_IF_ERROR(r.entries(&entries, entry.value, entry.mark(), path, &kKeys));
  for (const Entry& e : entries) {
    const std::string p = child(path, e.key);
    int64_t value = 0;
    PSA_RETURN_IF_ERROR(r.int_value(&value, e.value, e.mark(), p, "a positive integer"));
    if (value < 1) return r.error(e.mark(), p, "must be >= 1, got " + std::to_string(value));
    // video_scale is stored (depth, height, width).
    const int slot = e.key == "depth_divisor" ? 0 : (e.key == "height_divisor" ? 1 : 2);
    model->video_scale[slot] = value;
  }
  return Status();
}

Status read_model(ModelPresets* model, const Reader& r, const Entry& entry) {
  static const std::vector<std::string> kKeys = {"default_attention", "video_scale",
                                                 "text_length", "attention_configs"};
  const std::string& path = entry.key;
  // find() splits a selector "model:name" at its first ':', so such a model could not be chosen.
  if (entry.key.find(':') != std::string::npos) {
    return r.error(entry.key_node.Mark(), path,
                   "a model name must not contain ':' (it separates model and preset in "
                   "\"model:name\")");
  }
  std::vector<Entry> entries;
  PSA_RETURN_IF_ERROR(r.entries(&entries, entry.value, entry.mark(), path, &kKeys));
  model->model = entry.key;
  const Entry* default_entry = nullptr;
  const Entry* configs_entry = nullptr;
  for (const Entry& e : entries) {
    const std::string p = child(path, e.key);
    if (e.key == "default_attention") {
      PSA_RETURN_IF_ERROR(
          r.scalar(&model->default_attention, e.value, e.mark(), p, "a preset name"));
      default_entry = &e;
    } else if (e.key == "video_scale") {
      PSA_RETURN_IF_ERROR(read_video_scale(model, r, e, p));
    } else if (e.key == "text_length") {
      PSA_RETURN_IF_ERROR(
          r.int_value(&model->text_length, e.value, e.mark(), p, "an integer >= 0"));
      if (model->text_length < 0) {
        return r.error(e.mark(), p, "must be >= 0, got " + std::to_string(model->text_length));
      }
    } else {
      configs_entry = &e;
    }
  }
  if (configs_entry == nullptr) {
    return r.error(entry.key_node.Mark(), path, "missing key 'attention_configs'");
  }
  if (default_entry == nullptr) {
    return r.error(entry.key_node.Mark(), path, "missing key 'default_attention'");
  }
  // Presets are read after the loop so that text_length may come after attention_configs.
  const std::string configs_path = child(path, "attention_configs");
  std::vector<Entry> presets;
  PSA_RETURN_IF_ERROR(
      r.entries(&presets, configs_entry->value, configs_entry->mark(), configs_path, nullptr));
  if (presets.empty()) {
    return r.error(configs_entry->mark(), configs_path, "holds no preset");
  }
  std::vector<std::string> names;
  for (const Entry& e : presets) {
    Preset preset;
    preset.model = model->model;
    PSA_RETURN_IF_ERROR(read_preset(&preset, r, e, child(configs_path, e.key), model->text_length));
    model->presets.push_back(std::move(preset));
    names.push_back(e.key);
  }
  bool found = false;
  for (const std::string& n : names) found = found || n == model->default_attention;
  if (!found) {
    return r.error(default_entry->mark(), child(path, "default_attention"),
                   "names no preset of this model ('" + model->default_attention +
                       "'); available: " + join(names));
  }
  return Status();
}

Status parse(std::vector<ModelPresets>* models, const std::string& yaml,
             const std::string& source) {
  const Reader r(source);
  YAML::Node root;
  try {
    root = YAML::Load(yaml);
  } catch (const YAML::Exception& e) {
    return r.error(e.mark, "", "YAML syntax error: " + e.msg);
  }
  if (!root.IsMap()) {
    return r.error(root.Mark(), "", "expected a mapping from model names to presets, got " +
                                 node_kind(root));
  }
  try {
    std::vector<Entry> entries;
    PSA_RETURN_IF_ERROR(r.entries(&entries, root, root.Mark(), "", nullptr));
    for (const Entry& e : entries) {
      ModelPresets model;
      PSA_RETURN_IF_ERROR(read_model(&model, r, e));
      models->push_back(std::move(model));
    }
  } catch (const YAML::Exception& e) {
    // Node access past the checks above; reported rather than thrown across the API.
    return r.error(e.mark, "", "malformed presets: " + e.msg);
  }
  return Status();
}

}  // namespace

Status PresetLibrary::load_string(PresetLibrary* library, const std::string& yaml,
                                  const std::string& source_name) {
  if (library == nullptr) return invalid_argument("library must not be null");
  std::vector<ModelPresets> models;
  // parse() turns yaml-cpp's exceptions into messages; memory can still run out on a huge file.
  try {
    PSA_RETURN_IF_ERROR(parse(&models, yaml, source_name));
  } catch (const std::bad_alloc&) {
    return Status(StatusCode::kOutOfMemory,
                  source_name + ": out of host memory while reading " +
                      std::to_string(yaml.size()) + " bytes of presets");
  }
  // Replaced only on success: a bad file leaves the library as it was.
  library->models_ = std::move(models);
  return Status();
}

Status PresetLibrary::load_file(PresetLibrary* library, const std::string& path) {
  if (library == nullptr) return invalid_argument("library must not be null");
  std::FILE* file = std::fopen(path.c_str(), "rb");
  if (file == nullptr) {
    return Status(StatusCode::kIoError,
                  "cannot open preset file '" + path + "': " + std::strerror(errno));
  }
  std::string text;
  char buffer[4096];
  size_t n = 0;
  while ((n = std::fread(buffer, 1, sizeof buffer, file)) > 0) text.append(buffer, n);
  const bool failed = std::ferror(file) != 0;
  std::fclose(file);
  if (failed) return Status(StatusCode::kIoError, "cannot read preset file '" + path + "'");
  return load_string(library, text, path);
}

Status PresetLibrary::load_builtin(PresetLibrary* library) {
  return load_string(library, detail::kBuiltinPresetsYaml, kBuiltinSourceName);
}

Status PresetLibrary::find(const Preset** preset, const std::string& selector) const {
  if (preset == nullptr) return invalid_argument("preset must not be null");
  *preset = nullptr;
  const size_t colon = selector.find(':');
  const std::string model_name = selector.substr(0, colon);
  const ModelPresets* model = nullptr;
  std::vector<std::string> model_names;
  for (const ModelPresets& m : models_) {
    model_names.push_back(m.model);
    if (m.model == model_name) model = &m;
  }
  if (model == nullptr) {
    return invalid_argument("unknown preset model '" + model_name + "' in selector '" + selector +
                            "'; available models: " + join(model_names));
  }
  const std::string preset_name =
      colon == std::string::npos ? model->default_attention : selector.substr(colon + 1);
  std::vector<std::string> preset_names;
  for (const Preset& p : model->presets) {
    preset_names.push_back(model->model + ":" + p.name);
    if (p.name == preset_name) {
      *preset = &p;
      return Status();
    }
  }
  return invalid_argument("model '" + model->model + "' has no preset '" + preset_name +
                          "'; available: " + join(preset_names));
}

}  // namespace psa
