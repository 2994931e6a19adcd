// A 5 x 7 bitmap font for printable ASCII, drawn for the tool's PNG figures (no font files, no
// external plotting library).
#pragma once

#include <cstdint>

namespace psa::tools {

constexpr int kGlyphWidth = 5;
constexpr int kGlyphHeight = 7;
// Advance per character in font pixels: the glyph plus one column of spacing.
constexpr int kGlyphAdvance = kGlyphWidth + 1;

// Rows of the glyph of `c`, top to bottom; bit 4 of a row is the leftmost column. Characters
// outside printable ASCII (32..126) draw as '?'.
const uint8_t* glyph_rows(char c);

}  // namespace psa::tools
