// A small RGB raster for the tool's figures: filled rectangles, lines, markers and bitmap-font
// text. Coordinates are pixels, x to the right, y down; drawing outside the image is clipped.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace psa::tools {

struct Rgb {
  uint8_t r = 0, g = 0, b = 0;
};

constexpr Rgb kWhite = {255, 255, 255};
constexpr Rgb kBlack = {0, 0, 0};
constexpr Rgb kGrey = {128, 128, 128};
constexpr Rgb kLightGrey = {225, 225, 225};

class Image {
 public:
  Image(int width, int height, Rgb background = kWhite);

  int width() const { return width_; }
  int height() const { return height_; }
  // Row-major (height, width, 3) bytes, the layout a PNG encoder takes.
  const std::vector<uint8_t>& pixels() const { return pixels_; }
  Rgb pixel(int x, int y) const;

  void set_pixel(int x, int y, Rgb color);
  // The rectangle [x0, x0 + w) x [y0, y0 + h).
  void fill_rect(int x0, int y0, int w, int h, Rgb color);
  void draw_rect(int x0, int y0, int w, int h, Rgb color);
  // A line from (x0, y0) to (x1, y1) inclusive (Bresenham), `thickness` pixels wide.
  void draw_line(int x0, int y0, int x1, int y1, Rgb color, int thickness = 1);
  // Markers centred on (x, y) of half-size `radius`.
  void draw_square_marker(int x, int y, int radius, Rgb color);
  void draw_diamond_marker(int x, int y, int radius, Rgb color);

  // Text with its top-left corner at (x, y), each font pixel drawn as scale x scale pixels.
  void draw_text(int x, int y, const std::string& text, Rgb color, int scale = 1);
  // Text rotated 90 degrees counter-clockwise (reads bottom to top), bottom-left at (x, y).
  void draw_text_vertical(int x, int y, const std::string& text, Rgb color, int scale = 1);

 private:
  int width_;
  int height_;
  std::vector<uint8_t> pixels_;
};

// Size in pixels of `text` drawn at `scale` (one line).
int text_width(const std::string& text, int scale);
int text_height(int scale);

}  // namespace psa::tools
