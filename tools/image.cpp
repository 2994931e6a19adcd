#include "image.h"

#include <algorithm>
#include <cstdlib>

#include "bitmap_font.h"

namespace psa::tools {

Image::Image(int width, int height, Rgb background)
    : width_(std::max(width, 1)), height_(std::max(height, 1)) {
  pixels_.resize(static_cast<size_t>(width_) * height_ * 3);
  for (size_t i = 0; i < pixels_.size(); i += 3) {
    pixels_[i] = background.r;
    pixels_[i + 1] = background.g;
    pixels_[i + 2] = background.b;
  }
}

Rgb Image::pixel(int x, int y) const {
  if (x < 0 || y < 0 || x >= width_ || y >= height_) return kWhite;
  const size_t i = (static_cast<size_t>(y) * width_ + x) * 3;
  return {pixels_[i], pixels_[i + 1], pixels_[i + 2]};
}

void Image::set_pixel(int x, int y, Rgb color) {
  if (x < 0 || y < 0 || x >= width_ || y >= height_) return;
  const size_t i = (static_cast<size_t>(y) * width_ + x) * 3;
  pixels_[i] = color.r;
  pixels_[i + 1] = color.g;
  pixels_[i + 2] = color.b;
}

void Image::fill_rect(int x0, int y0, int w, int h, Rgb color) {
  const int xa = std::max(x0, 0), xb = std::min(x0 + w, width_);
  const int ya = std::max(y0, 0), yb = std::min(y0 + h, height_);
  for (int y = ya; y < yb; ++y) {
    for (int x = xa; x < xb; ++x) set_pixel(x, y, color);
  }
}

void Image::draw_rect(int x0, int y0, int w, int h, Rgb color) {
  if (w <= 0 || h <= 0) return;
  fill_rect(x0, y0, w, 1, color);
  fill_rect(x0, y0 + h - 1, w, 1, color);
  fill_rect(x0, y0, 1, h, color);
  fill_rect(x0 + w - 1, y0, 1, h, color);
}

namespace {

// Visits the pixels of the segment (x0, y0)-(x1, y1) in order (Bresenham's algorithm).
template <typename Visit>
void walk_line(int x0, int y0, int x1, int y1, Visit visit) {
  const int dx = std::abs(x1 - x0), dy = -std::abs(y1 - y0);
  const int sx = x0 < x1 ? 1 : -1, sy = y0 < y1 ? 1 : -1;
  int err = dx + dy;
  while (true) {
    visit(x0, y0);
    if (x0 == x1 && y0 == y1) break;
    const int e2 = 2 * err;
    if (e2 >= dy) {
      err += dy;
      x0 += sx;
    }
    if (e2 <= dx) {
      err += dx;
      y0 += sy;
    }
  }
}

}  // namespace

void Image::draw_line(int x0, int y0, int x1, int y1, Rgb color, int thickness) {
  // A thick line is the thin one stamped with a thickness x thickness square, centred.
  const int lo = -(thickness - 1) / 2;
  walk_line(x0, y0, x1, y1,
            [&](int x, int y) { fill_rect(x + lo, y + lo, thickness, thickness, color); });
}

void Image::draw_square_marker(int x, int y, int radius, Rgb color) {
  fill_rect(x - radius, y - radius, 2 * radius + 1, 2 * radius + 1, color);
}

void Image::draw_diamond_marker(int x, int y, int radius, Rgb color) {
  for (int dy = -radius - 1; dy <= radius + 1; ++dy) {
    const int half = radius + 1 - std::abs(dy);
    fill_rect(x - half, y + dy, 2 * half + 1, 1, color);
  }
}

void Image::draw_text(int x, int y, const std::string& text, Rgb color, int scale) {
  for (size_t i = 0; i < text.size(); ++i) {
    const uint8_t* rows = glyph_rows(text[i]);
    const int gx = x + static_cast<int>(i) * kGlyphAdvance * scale;
    for (int r = 0; r < kGlyphHeight; ++r) {
      for (int c = 0; c < kGlyphWidth; ++c) {
        if (rows[r] & (1u << (kGlyphWidth - 1 - c))) {
          fill_rect(gx + c * scale, y + r * scale, scale, scale, color);
        }
      }
    }
  }
}

void Image::draw_text_vertical(int x, int y, const std::string& text, Rgb color, int scale) {
  // Rotating counter-clockwise maps glyph column c to height above the baseline and glyph row r
  // to the distance from the left edge.
  for (size_t i = 0; i < text.size(); ++i) {
    const uint8_t* rows = glyph_rows(text[i]);
    const int gy = y - static_cast<int>(i) * kGlyphAdvance * scale;
    for (int r = 0; r < kGlyphHeight; ++r) {
      for (int c = 0; c < kGlyphWidth; ++c) {
        if (rows[r] & (1u << (kGlyphWidth - 1 - c))) {
          fill_rect(x + r * scale, gy - (c + 1) * scale, scale, scale, color);
        }
      }
    }
  }
}

int text_width(const std::string& text, int scale) {
  if (text.empty()) return 0;
  return (static_cast<int>(text.size()) * kGlyphAdvance - 1) * scale;
}

int text_height(int scale) { return kGlyphHeight * scale; }

}  // namespace psa::tools
