#include "preset_fuzz_target.h"

#include <exception>

#include "psa/presets.h"

namespace psa::fuzz {

namespace {

std::string check_loaded(const PresetLibrary& library) {
  for (const ModelPresets& model : library.models()) {
    for (const Preset& p : model.presets) {
      const std::string selector = model.model + ":" + p.name;
      const Preset* found = nullptr;
      const Status s = library.find(&found, selector);
      if (!s.ok() || found != &p) return "find(\"" + selector + "\") did not return the preset";
      const Status valid = validate_config(p.config);
      if (!valid.ok()) return selector + " loaded with an invalid config: " + valid.message();
    }
    const Preset* by_model = nullptr;
    const Status s = library.find(&by_model, model.model);
    if (s.ok() != (by_model != nullptr)) return "find(\"" + model.model + "\") broke its contract";
  }
  return std::string();
}

}  // namespace

std::string check_preset_reader(const uint8_t* data, size_t size, bool* loaded) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  PresetLibrary library;
  Status status;
  try {
    status = PresetLibrary::load_string(&library, text, kSourceName);
  } catch (const std::exception& e) {
    return std::string("an exception left load_string: ") + e.what();
  } catch (...) {
    return "an exception of unknown type left load_string";
  }
  if (loaded != nullptr) *loaded = status.ok();
  if (!status.ok()) {
    if (status.code() != StatusCode::kInvalidArgument) {
      return "a bad file gave " + status.to_string() + " instead of an invalid argument";
    }
    if (status.message().rfind(kSourceName, 0) != 0) {
      return "the error does not name the file: " + status.message();
    }
    if (!library.models().empty()) return "a failed load left presets in the library";
    return std::string();
  }
  return check_loaded(library);
}

}  // namespace psa::fuzz
