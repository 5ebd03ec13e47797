#include "train/loss_plot.h"

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <vector>

#include "io/atomic_file.h"

namespace moex::train {
namespace {

struct Series {
  std::vector<double> x, y;
};

std::string polyline(const Series& s, double x0, double x1, double y0, double y1,
                     const char* color) {
  constexpr double kW = 640, kH = 360, kPad = 50;
  std::ostringstream out;
  out << "<polyline fill=\"none\" stroke=\"" << color << "\" stroke-width=\"1.5\" points=\"";
  for (size_t i = 0; i < s.x.size(); ++i) {
    const double px = kPad + (s.x[i] - x0) / std::max(x1 - x0, 1e-9) * (kW - 2 * kPad);
    const double py = kH - kPad - (s.y[i] - y0) / std::max(y1 - y0, 1e-9) * (kH - 2 * kPad);
    out << px << "," << py << " ";
  }
  out << "\"/>\n";
  return out.str();
}

}  // namespace

void write_loss_plot(const std::string& metrics_path, const std::string& svg_path) {
  std::ifstream in(metrics_path);
  Series train, eval;
  std::string line;
  while (std::getline(in, line)) {
    const nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.contains("step")) continue;
    train.x.push_back(j["step"].get<double>());
    train.y.push_back(j["loss"].get<double>());
    if (j.contains("eval_loss")) {
      eval.x.push_back(j["step"].get<double>());
      eval.y.push_back(j["eval_loss"].get<double>());
    }
  }
  if (train.x.empty()) return;
  const double x0 = train.x.front(), x1 = train.x.back();
  double y0 = *std::min_element(train.y.begin(), train.y.end()),
         y1 = *std::max_element(train.y.begin(), train.y.end());
  for (double v : eval.y) y0 = std::min(y0, v), y1 = std::max(y1, v);
  std::ostringstream svg;
  svg << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"640\" height=\"360\" "
         "font-family=\"sans-serif\" "
         "font-size=\"12\">\n<rect width=\"640\" height=\"360\" fill=\"white\"/>\n"
      << "<line x1=\"50\" y1=\"310\" x2=\"590\" y2=\"310\" stroke=\"black\"/>\n"
      << "<line x1=\"50\" y1=\"50\" x2=\"50\" y2=\"310\" stroke=\"black\"/>\n"
      << "<text x=\"50\" y=\"330\">step " << x0 << "</text><text x=\"540\" y=\"330\">" << x1
      << "</text>\n"
      << "<text x=\"4\" y=\"54\">" << y1 << "</text><text x=\"4\" y=\"310\">" << y0 << "</text>\n"
      << "<text x=\"260\" y=\"30\">loss (blue: train, red: eval)</text>\n"
      << polyline(train, x0, x1, y0, y1, "#1f77b4");
  if (!eval.x.empty()) svg << polyline(eval, x0, x1, y0, y1, "#d62728");
  svg << "</svg>\n";
  io::write_file_atomic(svg_path, svg.str());
  // The same plot as a page that any browser opens (loss.html beside loss.svg).
  const std::string html_path = svg_path.substr(0, svg_path.rfind('.')) + ".html";
  io::write_file_atomic(html_path,
                        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>moex "
                        "loss</title></head><body>\n" +
                            svg.str() + "</body></html>\n");
}

}  // namespace moex::train
