// Figures of the tool, drawn with the small rasteriser in image.h: a line plot with axes, ticks,
// labels and a legend, and the level map of a plan.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "image.h"

namespace psa::tools {

struct Series {
  std::string name;
  Rgb color;
  bool diamond_markers = false;  // square markers otherwise
  std::vector<double> x, y;      // drawn in order of increasing x
};

struct LinePlot {
  std::string title;
  std::string x_label;
  std::string y_label;
  std::vector<Series> series;
  int width = 800;
  int height = 560;
  bool y_from_zero = true;  // include 0 in the y range
};

Image render_line_plot(const LinePlot& plot);

// "Nice" tick positions covering [lo, hi]: multiples of 1, 2 or 5 times a power of ten, about
// `target` of them. Worked example: [0.03, 0.41] with target 6 gives step 0.1 and ticks
// 0, 0.1, ..., 0.5.
std::vector<double> nice_ticks(double lo, double hi, int target);
// A tick label with as few digits as the step needs: step 0.05 gives "0.15", step 2 gives "14".
std::string format_tick(double value, double step);

// The level map of one head: `levels` is (Mq, Nk) row-major with values in {0, 1, 2, 4, 8};
// rows are query blocks, columns key blocks, one colour per level, with a legend.
struct LevelMapFigure {
  std::string title;
  std::string subtitle;
  int64_t rows = 0;
  int64_t cols = 0;
  std::vector<uint8_t> levels;
};

Image render_level_map(const LevelMapFigure& figure);
// The colour of a level in the level map (0 = skipped).
Rgb level_color(int level);

}  // namespace psa::tools
