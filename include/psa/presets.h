// Presets in the original release's YAML schema (SPEC.md section 9).
#pragma once

#include <map>
#include <string>
#include <vector>

#include "psa/config.h"
#include "psa/rearrange.h"
#include "psa/status.h"

namespace psa {

struct Preset {
  std::string model;
  std::string name;
  std::string description;
  bool dense = false;  // type: dense (no sparse attention)
  Config config;       // block sizes, mode, ends, sim cap, text
  bool use_rearrange = false;
  RearrangeMethod rearrange = RearrangeMethod::kNone;
  int64_t tile_size[3] = {4, 8, 8};  // STA tile (t, h, w) when rearrange is tiles
  int warmup_steps = 0;
  bool verbose = false;
  std::string attn_impl;
};

struct ModelPresets {
  std::string model;
  std::string default_attention;
  int64_t video_scale[3] = {4, 16, 16};  // depth, height, width divisors
  int64_t text_length = 0;
  std::vector<Preset> presets;  // in file order
};

class PresetLibrary {
 public:
  // Parses a file (errors name the file, the key and the line).
  static Status load_file(PresetLibrary* library, const std::string& path);
  static Status load_string(PresetLibrary* library, const std::string& yaml,
                            const std::string& source_name);
  // The presets shipped in presets/psa_presets.yaml, compiled into the library.
  static Status load_builtin(PresetLibrary* library);

  const std::vector<ModelPresets>& models() const { return models_; }
  // "Wan2.1_1.3b:psa_balanced", or "Wan2.1_1.3b" for its default_attention.
  Status find(const Preset** preset, const std::string& selector) const;

 private:
  std::vector<ModelPresets> models_;
};

// The plug-and-play default: block_m 128, block_n 64, tile_n 32, topk .1/.15/.15/.35.
Config default_config();

}  // namespace psa
