// Draws a line chart as a PNG with the psa tool's rasteriser and libpng, for the benchmark scripts
// on machines without matplotlib (bench/chart.py calls it). The chart comes as JSON:
//   {"title": "...", "x_label": "...", "y_label": "...", "y_from_zero": true,
//    "series": [{"name": "...", "x": [...], "y": [...]}, ...]}
// Series take the colours of a fixed palette in order; points are drawn in order of increasing x.
//
// Usage: psa_chart SPEC.json OUT.png
#include <cstdio>
#include <fstream>
#include <string>

#include <nlohmann/json.hpp>

#include "plot.h"
#include "png_writer.h"

namespace {

// Distinguishable colours (Tableau 10), cycled when there are more series.
constexpr psa::tools::Rgb kPalette[] = {{31, 119, 180}, {255, 127, 14}, {44, 160, 44},
                                        {214, 39, 40},  {148, 103, 189}, {140, 86, 75},
                                        {227, 119, 194}, {127, 127, 127}, {188, 189, 34},
                                        {23, 190, 207}};
constexpr int kPaletteSize = sizeof(kPalette) / sizeof(kPalette[0]);

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: psa_chart SPEC.json OUT.png\n");
    return 2;
  }
  std::ifstream in(argv[1]);
  if (!in) {
    std::fprintf(stderr, "psa_chart: cannot read %s\n", argv[1]);
    return 1;
  }
  psa::tools::LinePlot plot;
  try {
    const nlohmann::json spec = nlohmann::json::parse(in);
    plot.title = spec.value("title", "");
    plot.x_label = spec.value("x_label", "");
    plot.y_label = spec.value("y_label", "");
    plot.y_from_zero = spec.value("y_from_zero", true);
    plot.width = spec.value("width", plot.width);
    plot.height = spec.value("height", plot.height);
    int index = 0;
    for (const auto& s : spec.at("series")) {
      psa::tools::Series series;
      series.name = s.value("name", "");
      series.color = kPalette[index % kPaletteSize];
      series.diamond_markers = (index / kPaletteSize) % 2 == 1;
      series.x = s.at("x").get<std::vector<double>>();
      series.y = s.at("y").get<std::vector<double>>();
      if (series.x.size() != series.y.size()) {
        std::fprintf(stderr, "psa_chart: series %s has %zu x values and %zu y values\n",
                     series.name.c_str(), series.x.size(), series.y.size());
        return 1;
      }
      plot.series.push_back(std::move(series));
      ++index;
    }
  } catch (const nlohmann::json::exception& e) {
    std::fprintf(stderr, "psa_chart: %s: %s\n", argv[1], e.what());
    return 1;
  }
  const psa::Status st = psa::tools::write_png(psa::tools::render_line_plot(plot), argv[2]);
  if (!st.ok()) {
    std::fprintf(stderr, "psa_chart: %s\n", st.to_string().c_str());
    return 1;
  }
  return 0;
}
