#include "plot.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>

namespace psa::tools {

namespace {

constexpr int kTextScale = 2;  // font pixels drawn 2 x 2: 10 x 14 pixel glyphs
constexpr int kTitleScale = 2;
constexpr int kTickLength = 6;
constexpr int kMarkerRadius = 3;
constexpr int kLineThickness = 2;
constexpr int kMargin = 12;  // pixels between the image edge and the outermost text
constexpr int kGap = 8;      // pixels between neighbouring labels

struct Range {
  double lo = 0.0, hi = 1.0;
};

Range data_range(const std::vector<Series>& series, bool use_x) {
  Range r{std::numeric_limits<double>::infinity(), -std::numeric_limits<double>::infinity()};
  for (const Series& s : series) {
    for (double v : use_x ? s.x : s.y) {
      if (!std::isfinite(v)) continue;
      r.lo = std::min(r.lo, v);
      r.hi = std::max(r.hi, v);
    }
  }
  if (!(r.lo <= r.hi)) return Range{0.0, 1.0};
  if (r.hi - r.lo < 1e-12) {
    // A single value: open a window around it so that the axis has a length.
    const double pad = std::max(std::abs(r.lo) * 0.1, 1e-3);
    r.lo -= pad;
    r.hi += pad;
  }
  return r;
}

}  // namespace

std::vector<double> nice_ticks(double lo, double hi, int target) {
  const double span = hi - lo;
  const double raw = span / std::max(target - 1, 1);
  const double magnitude = std::pow(10.0, std::floor(std::log10(raw)));
  double step = magnitude;
  for (double m : {1.0, 2.0, 5.0, 10.0}) {
    step = m * magnitude;
    if (step >= raw) break;
  }
  std::vector<double> ticks;
  const double first = std::floor(lo / step + 1e-9) * step;
  for (double t = first; t <= hi + step * 0.999; t += step) {
    ticks.push_back(std::abs(t) < step * 1e-9 ? 0.0 : t);
  }
  return ticks;
}

std::string format_tick(double value, double step) {
  const int digits = std::max(0, static_cast<int>(std::ceil(-std::log10(step) - 1e-9)));
  char buffer[32];
  std::snprintf(buffer, sizeof(buffer), "%.*f", digits, value);
  return buffer;
}

Image render_line_plot(const LinePlot& plot) {
  Image image(plot.width, plot.height);
  const int glyph_h = text_height(kTextScale);

  Range xr = data_range(plot.series, true);
  Range yr = data_range(plot.series, false);
  if (plot.y_from_zero) yr.lo = std::min(yr.lo, 0.0);
  const std::vector<double> xt = nice_ticks(xr.lo, xr.hi, 7);
  const std::vector<double> yt = nice_ticks(yr.lo, yr.hi, 6);
  xr = {xt.front(), xt.back()};
  yr = {yt.front(), yt.back()};
  const double x_step = xt.size() > 1 ? xt[1] - xt[0] : 1.0;
  const double y_step = yt.size() > 1 ? yt[1] - yt[0] : 1.0;
  int y_label_w = 0;
  for (double t : yt)
    y_label_w = std::max(y_label_w, text_width(format_tick(t, y_step), kTextScale));

  // Plot area margins: the vertical axis label and the widest tick label on the left, the title
  // above, tick labels and the axis label below.
  const int left = kMargin + glyph_h + kGap + y_label_w + kGap + kTickLength;
  const int right = 2 * kMargin;
  const int top = kMargin + text_height(kTitleScale) + 2 * kGap;
  const int bottom = kMargin + 2 * glyph_h + 2 * kGap + kTickLength;
  const int pw = plot.width - left - right;
  const int ph = plot.height - top - bottom;

  auto to_px = [&](double x) {
    return left + static_cast<int>(std::lround((x - xr.lo) / (xr.hi - xr.lo) * (pw - 1)));
  };
  auto to_py = [&](double y) {
    return top + ph - 1 - static_cast<int>(std::lround((y - yr.lo) / (yr.hi - yr.lo) * (ph - 1)));
  };

  // Grid and ticks.
  for (double t : xt) {
    const int px = to_px(t);
    image.draw_line(px, top, px, top + ph - 1, kLightGrey);
    image.draw_line(px, top + ph, px, top + ph + kTickLength, kBlack);
    const std::string label = format_tick(t, x_step);
    image.draw_text(px - text_width(label, kTextScale) / 2, top + ph + kTickLength + kGap / 2,
                    label, kBlack, kTextScale);
  }
  for (double t : yt) {
    const int py = to_py(t);
    image.draw_line(left, py, left + pw - 1, py, kLightGrey);
    image.draw_line(left - kTickLength, py, left - 1, py, kBlack);
    const std::string label = format_tick(t, y_step);
    image.draw_text(left - kTickLength - kGap / 2 - text_width(label, kTextScale), py - glyph_h / 2,
                    label, kBlack, kTextScale);
  }
  image.draw_rect(left - 1, top - 1, pw + 2, ph + 2, kBlack);

  // Title and axis labels.
  image.draw_text((plot.width - text_width(plot.title, kTitleScale)) / 2, kMargin, plot.title,
                  kBlack, kTitleScale);
  image.draw_text(left + (pw - text_width(plot.x_label, kTextScale)) / 2,
                  plot.height - kMargin - glyph_h, plot.x_label, kBlack, kTextScale);
  image.draw_text_vertical(kMargin, top + (ph + text_width(plot.y_label, kTextScale)) / 2,
                           plot.y_label, kBlack, kTextScale);

  // The series: lines between consecutive points in x order, then markers on top.
  for (const Series& s : plot.series) {
    std::vector<std::pair<double, double>> points;
    for (size_t i = 0; i < s.x.size() && i < s.y.size(); ++i) {
      if (std::isfinite(s.x[i]) && std::isfinite(s.y[i])) points.emplace_back(s.x[i], s.y[i]);
    }
    std::sort(points.begin(), points.end());
    for (size_t i = 1; i < points.size(); ++i) {
      image.draw_line(to_px(points[i - 1].first), to_py(points[i - 1].second),
                      to_px(points[i].first), to_py(points[i].second), s.color, kLineThickness);
    }
    for (const auto& p : points) {
      if (s.diamond_markers) {
        image.draw_diamond_marker(to_px(p.first), to_py(p.second), kMarkerRadius, s.color);
      } else {
        image.draw_square_marker(to_px(p.first), to_py(p.second), kMarkerRadius, s.color);
      }
    }
  }

  // Legend in the top-right corner of the plot area, on a white box.
  int legend_w = 0;
  for (const Series& s : plot.series) legend_w = std::max(legend_w, text_width(s.name, kTextScale));
  legend_w += 48;
  const int row_h = glyph_h + 8;
  const int legend_h = static_cast<int>(plot.series.size()) * row_h + 8;
  const int lx = left + pw - legend_w - 10, ly = top + 10;
  image.fill_rect(lx, ly, legend_w, legend_h, kWhite);
  image.draw_rect(lx, ly, legend_w, legend_h, kGrey);
  for (size_t i = 0; i < plot.series.size(); ++i) {
    const Series& s = plot.series[i];
    const int cy = ly + 4 + static_cast<int>(i) * row_h + row_h / 2;
    image.draw_line(lx + 8, cy, lx + 32, cy, s.color, kLineThickness);
    if (s.diamond_markers) {
      image.draw_diamond_marker(lx + 20, cy, kMarkerRadius, s.color);
    } else {
      image.draw_square_marker(lx + 20, cy, kMarkerRadius, s.color);
    }
    image.draw_text(lx + 40, cy - glyph_h / 2, s.name, kBlack, kTextScale);
  }
  return image;
}

Rgb level_color(int level) {
  switch (level) {
    case 1:
      return {178, 24, 43};  // full resolution: dark red
    case 2:
      return {239, 138, 98};  // orange
    case 4:
      return {253, 219, 120};  // yellow
    case 8:
      return {146, 197, 222};  // light blue
    default:
      return {240, 240, 240};  // skipped: near white
  }
}

Image render_level_map(const LevelMapFigure& figure) {
  // Cells as large as fit in about 720 x 720 pixels, at least 2 pixels so that a big plan shows.
  constexpr int kMapTarget = 720;
  const int64_t longest = std::max<int64_t>(std::max(figure.rows, figure.cols), 1);
  const int cell = static_cast<int>(std::clamp<int64_t>(kMapTarget / longest, 2, 32));
  const int map_w = static_cast<int>(figure.cols) * cell;
  const int map_h = static_cast<int>(figure.rows) * cell;
  const int glyph_h = text_height(kTextScale);

  const int left = 24 + glyph_h + 8 + text_width("0000", kTextScale) + kTickLength;
  const int top = 24 + text_height(kTitleScale) + 8 + glyph_h + 16;
  const int legend_w = 16 + 24 + text_width("level 8 (1/8)", kTextScale) + 16;
  const int heading_w =
      48 + std::max(text_width(figure.title, kTitleScale), text_width(figure.subtitle, kTextScale));
  const int width = std::max(left + std::max(map_w, 240) + 24 + legend_w, heading_w);
  const int height = top + std::max(map_h, 5 * (glyph_h + 12)) + 24 + glyph_h + 24 + glyph_h;
  Image image(width, height);

  image.draw_text(24, 16, figure.title, kBlack, kTitleScale);
  image.draw_text(24, 16 + text_height(kTitleScale) + 8, figure.subtitle, kGrey, kTextScale);

  for (int64_t r = 0; r < figure.rows; ++r) {
    for (int64_t c = 0; c < figure.cols; ++c) {
      const int level = figure.levels[static_cast<size_t>(r * figure.cols + c)];
      image.fill_rect(left + static_cast<int>(c) * cell, top + static_cast<int>(r) * cell, cell,
                      cell, level_color(level));
    }
  }
  image.draw_rect(left - 1, top - 1, map_w + 2, map_h + 2, kBlack);

  // Block-index ticks: every `every` blocks so that labels never overlap.
  const int label_room = text_width("000", kTextScale) + 8;
  const int64_t col_every = std::max<int64_t>(1, (label_room + cell - 1) / cell);
  const int64_t row_every = std::max<int64_t>(1, (glyph_h + 4 + cell - 1) / cell);
  const std::vector<int64_t> steps = {1, 2, 4, 5, 8, 10, 16, 20, 25, 32, 50, 64, 100, 128, 256};
  auto round_step = [&](int64_t every) {
    for (int64_t s : steps) {
      if (s >= every) return s;
    }
    return every;
  };
  const int64_t cstep = round_step(col_every), rstep = round_step(row_every);
  for (int64_t c = 0; c < figure.cols; c += cstep) {
    const int px = left + static_cast<int>(c) * cell + cell / 2;
    image.draw_line(px, top + map_h, px, top + map_h + kTickLength - 2, kBlack);
    const std::string label = std::to_string(c);
    image.draw_text(px - text_width(label, kTextScale) / 2, top + map_h + kTickLength + 2, label,
                    kBlack, kTextScale);
  }
  for (int64_t r = 0; r < figure.rows; r += rstep) {
    const int py = top + static_cast<int>(r) * cell + cell / 2;
    image.draw_line(left - kTickLength + 1, py, left - 1, py, kBlack);
    const std::string label = std::to_string(r);
    image.draw_text(left - kTickLength - 4 - text_width(label, kTextScale), py - glyph_h / 2, label,
                    kBlack, kTextScale);
  }
  const std::string x_label = "key block";
  image.draw_text(left + (map_w - text_width(x_label, kTextScale)) / 2,
                  top + map_h + kTickLength + glyph_h + 14, x_label, kBlack, kTextScale);
  const std::string y_label = "query block";
  image.draw_text_vertical(16, top + (map_h + text_width(y_label, kTextScale)) / 2, y_label, kBlack,
                           kTextScale);

  // Legend to the right of the map.
  const int lx = left + map_w + 32;
  const struct {
    int level;
    const char* label;
  } entries[] = {{1, "level 1 (full)"},
                 {2, "level 2 (1/2)"},
                 {4, "level 4 (1/4)"},
                 {8, "level 8 (1/8)"},
                 {0, "skipped"}};
  int ly = top;
  for (const auto& e : entries) {
    image.fill_rect(lx, ly, 20, glyph_h, level_color(e.level));
    image.draw_rect(lx, ly, 20, glyph_h, kGrey);
    image.draw_text(lx + 28, ly, e.label, kBlack, kTextScale);
    ly += glyph_h + 12;
  }
  return image;
}

}  // namespace psa::tools
