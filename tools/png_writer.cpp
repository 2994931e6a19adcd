#include "png_writer.h"

#include <png.h>

#include <csetjmp>
#include <cstdio>
#include <vector>

namespace psa::tools {

namespace {

// libpng reports errors by longjmp; the writer keeps everything it must release outside the
// jump's reach (the FILE and the row pointers are owned by the caller's frame).
bool encode(const Image& image, FILE* file) {
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
  if (png == nullptr) return false;
  png_infop info = png_create_info_struct(png);
  if (info == nullptr) {
    png_destroy_write_struct(&png, nullptr);
    return false;
  }
  std::vector<png_bytep> rows(static_cast<size_t>(image.height()));
  const size_t stride = static_cast<size_t>(image.width()) * 3;
  for (int y = 0; y < image.height(); ++y) {
    rows[y] = const_cast<png_bytep>(image.pixels().data() + y * stride);
  }
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_write_struct(&png, &info);
    return false;
  }
  png_init_io(png, file);
  png_set_IHDR(png, info, static_cast<png_uint_32>(image.width()),
               static_cast<png_uint_32>(image.height()), 8, PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE,
               PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  png_write_info(png, info);
  png_write_image(png, rows.data());
  png_write_end(png, nullptr);
  png_destroy_write_struct(&png, &info);
  return true;
}

}  // namespace

Status write_png(const Image& image, const std::string& path) {
  FILE* file = std::fopen(path.c_str(), "wb");
  if (file == nullptr) {
    return Status(StatusCode::kIoError, "cannot open '" + path + "' for writing");
  }
  const bool encoded = encode(image, file);
  const bool closed = std::fclose(file) == 0;
  if (!encoded || !closed) {
    return Status(StatusCode::kIoError, "failed to write the PNG image '" + path + "'");
  }
  return Status();
}

}  // namespace psa::tools
