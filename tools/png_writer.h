// Writes an Image as an 8-bit RGB PNG file (libpng).
#pragma once

#include <string>

#include "image.h"
#include "psa/status.h"

namespace psa::tools {

Status write_png(const Image& image, const std::string& path);

}  // namespace psa::tools
