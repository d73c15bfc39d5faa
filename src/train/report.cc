// The HTML training report (see report.h).
#include "sparsemoe/train/report.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <vector>

#include "sparsemoe/io/file_io.h"

namespace sparsemoe {

namespace {

using nlohmann::json;

struct Series {
  std::string name, color;
  std::vector<std::pair<double, double>> points;  // (step, value)
  bool dots = false;                              // markers only (sparse evaluations)
};

std::string escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '&':
        out += "&amp;";
        break;
      case '"':
        out += "&quot;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

constexpr double kW = 640, kH = 260, kLeft = 60, kRight = 150, kTop = 30, kBottom = 40;

// A line chart of the series against the step, with axes, ticks and a legend.
std::string line_chart(const std::string& id, const std::string& title, const std::string& ylabel,
                       const std::vector<Series>& series) {
  double x0 = 1e300, x1 = -1e300, y0 = 1e300, y1 = -1e300;
  for (const Series& s : series) {
    for (auto [x, y] : s.points) {
      if (!std::isfinite(y)) continue;
      x0 = std::min(x0, x);
      x1 = std::max(x1, x);
      y0 = std::min(y0, y);
      y1 = std::max(y1, y);
    }
  }
  std::ostringstream o;
  o << fmt::format(
      "<svg id=\"{}\" class=\"chart\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" "
      "height=\"{}\" viewBox=\"0 0 {} {}\" role=\"img\" aria-label=\"{}\">",
      id, kW, kH, kW, kH, escape(title));
  o << fmt::format("<text x=\"{}\" y=\"18\" class=\"title\">{}</text>", kLeft, escape(title));
  if (x0 > x1) {
    o << fmt::format("<text x=\"{}\" y=\"{}\">no data yet</text></svg>", kLeft, kH / 2);
    return o.str();
  }
  if (x1 == x0) x1 = x0 + 1;
  if (y1 == y0) y1 = y0 + 1;
  const double pw = kW - kLeft - kRight, ph = kH - kTop - kBottom;
  auto px = [&](double x) { return kLeft + (x - x0) / (x1 - x0) * pw; };
  auto py = [&](double y) { return kTop + (1 - (y - y0) / (y1 - y0)) * ph; };
  o << fmt::format("<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" class=\"plot\"/>", kLeft,
                   kTop, pw, ph);
  for (int t = 0; t <= 4; ++t) {
    const double y = y0 + (y1 - y0) * t / 4.0, x = x0 + (x1 - x0) * t / 4.0;
    o << fmt::format(
        "<line x1=\"{:.1f}\" x2=\"{:.1f}\" y1=\"{:.1f}\" y2=\"{:.1f}\" class=\"grid\"/>", kLeft,
        kLeft + pw, py(y), py(y));
    o << fmt::format(
        "<text x=\"{:.1f}\" y=\"{:.1f}\" class=\"tick\" text-anchor=\"end\">{:.3g}</text>",
        kLeft - 4, py(y) + 4, y);
    o << fmt::format(
        "<text x=\"{:.1f}\" y=\"{:.1f}\" class=\"tick\" text-anchor=\"middle\">{:.0f}</text>",
        px(x), kTop + ph + 16, x);
  }
  o << fmt::format(
      "<text x=\"{:.1f}\" y=\"{:.1f}\" class=\"tick\" text-anchor=\"middle\">step</text>",
      kLeft + pw / 2, kH - 4);
  o << fmt::format(
      "<text x=\"12\" y=\"{:.1f}\" class=\"tick\" transform=\"rotate(-90 12 {:.1f})\" "
      "text-anchor=\"middle\">{}</text>",
      kTop + ph / 2, kTop + ph / 2, escape(ylabel));
  int legend = 0;
  for (const Series& s : series) {
    if (s.points.empty()) continue;
    if (s.dots) {
      for (auto [x, y] : s.points) {
        if (std::isfinite(y))
          o << fmt::format("<circle cx=\"{:.1f}\" cy=\"{:.1f}\" r=\"3\" fill=\"{}\"/>", px(x),
                           py(y), s.color);
      }
    }
    std::string d;
    for (auto [x, y] : s.points) {
      if (!std::isfinite(y)) continue;
      d += fmt::format("{}{:.1f},{:.1f}", d.empty() ? "M" : " L", px(x), py(y));
    }
    o << fmt::format("<path d=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"{}\"/>", d, s.color,
                     s.dots ? 1 : 1.6);
    const double ly = kTop + 10 + 16 * legend++;
    o << fmt::format("<rect x=\"{:.1f}\" y=\"{:.1f}\" width=\"10\" height=\"10\" fill=\"{}\"/>",
                     kW - kRight + 10, ly - 9, s.color);
    o << fmt::format("<text x=\"{:.1f}\" y=\"{:.1f}\" class=\"tick\">{}</text>", kW - kRight + 24,
                     ly, escape(s.name));
  }
  o << "</svg>";
  return o.str();
}

// Expert load heat map: one row per expert, one column per logged window; the colour is the
// expert's share of the layer's routed tokens (white 0 ... dark blue >= 2/E).
std::string heat_map(const std::string& id, const std::string& title,
                     const std::vector<std::pair<double, std::vector<double>>>& columns) {
  const int64_t E = columns.empty() ? 0 : static_cast<int64_t>(columns.front().second.size());
  const double cell_h = std::clamp(160.0 / std::max<int64_t>(E, 1), 6.0, 24.0);
  const double pw = kW - kLeft - kRight, ph = cell_h * static_cast<double>(E);
  const double height = kTop + ph + kBottom;
  std::ostringstream o;
  o << fmt::format(
      "<svg id=\"{}\" class=\"chart heat\" xmlns=\"http://www.w3.org/2000/svg\" "
      "width=\"{}\" height=\"{:.0f}\" viewBox=\"0 0 {} {:.0f}\" role=\"img\" "
      "aria-label=\"{}\">",
      id, kW, height, kW, height, escape(title));
  o << fmt::format("<text x=\"{}\" y=\"18\" class=\"title\">{}</text>", kLeft, escape(title));
  const double cell_w = columns.empty() ? 0 : pw / static_cast<double>(columns.size());
  for (size_t c = 0; c < columns.size(); ++c) {
    double total = 0;
    for (double v : columns[c].second) total += v;
    for (int64_t e = 0; e < E && e < static_cast<int64_t>(columns[c].second.size()); ++e) {
      const double share = total > 0 ? columns[c].second[e] / total : 0;
      const double t = std::clamp(share * static_cast<double>(E) / 2.0, 0.0, 1.0);
      const int r = static_cast<int>(255 - t * (255 - 8)),
                g = static_cast<int>(255 - t * (255 - 48)),
                b = static_cast<int>(255 - t * (255 - 107));
      o << fmt::format(
          "<rect x=\"{:.2f}\" y=\"{:.2f}\" width=\"{:.2f}\" height=\"{:.2f}\" "
          "fill=\"rgb({},{},{})\"><title>step {:.0f}, expert {}: {:.1f}%</title></rect>",
          kLeft + cell_w * static_cast<double>(c), kTop + cell_h * static_cast<double>(e),
          cell_w + 0.3, cell_h, r, g, b, columns[c].first, e, 100 * share);
    }
  }
  for (int64_t e = 0; e < E; ++e) {
    if (E > 16 && e % (E / 8) != 0) continue;
    o << fmt::format(
        "<text x=\"{:.1f}\" y=\"{:.1f}\" class=\"tick\" text-anchor=\"end\">e{}</text>", kLeft - 4,
        kTop + cell_h * (static_cast<double>(e) + 0.5) + 4, e);
  }
  if (!columns.empty()) {
    o << fmt::format("<text x=\"{:.1f}\" y=\"{:.1f}\" class=\"tick\">step {:.0f}</text>", kLeft,
                     kTop + ph + 16, columns.front().first);
    o << fmt::format(
        "<text x=\"{:.1f}\" y=\"{:.1f}\" class=\"tick\" text-anchor=\"end\">step "
        "{:.0f}</text>",
        kLeft + pw, kTop + ph + 16, columns.back().first);
  }
  o << fmt::format("<text x=\"{:.1f}\" y=\"{:.1f}\" class=\"tick\">share of tokens:</text>",
                   kW - kRight + 10, kTop + 10);
  o << fmt::format("<text x=\"{:.1f}\" y=\"{:.1f}\" class=\"tick\">white 0, dark {}%+</text>",
                   kW - kRight + 10, kTop + 26, E ? 200 / E : 0);
  o << "</svg>";
  return o.str();
}

std::vector<json> read_records(const std::string& path) {
  std::vector<json> out;
  if (!std::filesystem::exists(path)) return out;
  std::istringstream in(read_file(path));
  std::string line;
  while (std::getline(in, line)) {
    json j = json::parse(line, nullptr, false);
    if (!j.is_discarded() && j.is_object()) out.push_back(std::move(j));
  }
  return out;
}

double num(const json& j, const char* key) {
  const auto it = j.find(key);
  return it != j.end() && it->is_number() ? it->get<double>() : NAN;
}

// A string field for display; "" when absent or not a string (a damaged file).
std::string text(const json& j, const char* key) {
  const auto it = j.find(key);
  return it != j.end() && it->is_string() ? it->get<std::string>() : "";
}

}  // namespace

std::string write_report(const std::string& run_dir) {
  namespace fs = std::filesystem;
  const std::string out_path = (fs::path(run_dir) / "report.html").string();
  const std::vector<json> records = read_records((fs::path(run_dir) / "metrics.jsonl").string());
  json config, results;
  const std::string config_path = (fs::path(run_dir) / "config.json").string();
  const std::string results_path = (fs::path(run_dir) / "results.json").string();
  // Only into a run directory: `report` on any other directory must not write there.
  if (!fs::is_regular_file(config_path))
    throw IoError("'" + run_dir + "' is not a run directory (no config.json); nothing written");
  config = json::parse(read_file(config_path), nullptr, false);
  if (fs::exists(results_path)) results = json::parse(read_file(results_path), nullptr, false);
  // A damaged file is shown as missing, never as a library error.
  if (!config.is_object()) config = json::object();
  if (!results.is_object()) results = nullptr;

  Series train_pre{"pretrain (MLM)", "#1f77b4", {}, false};
  Series train_fine{"finetune", "#d62728", {}, false};
  Series dev_pre{"dev MLM", "#17becf", {}, true}, dev_fine{"dev finetune", "#ff7f0e", {}, true};
  Series acc_pre{"dev masked-token acc", "#17becf", {}, true};
  Series acc_fine{"dev supersense acc", "#ff7f0e", {}, true};
  std::map<std::string, Series> left_behind;                                        // per layer
  std::map<std::string, std::vector<std::pair<double, std::vector<double>>>> load;  // per layer
  const char* palette[] = {"#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"};
  for (const json& r : records) {
    const std::string event = text(r, "event"), phase = text(r, "phase");
    const double step = num(r, "step");
    if (event == "train") {
      (phase == "pretrain" ? train_pre : train_fine).points.emplace_back(step, num(r, "task_loss"));
      if (r.contains("moe") && r["moe"].is_object()) {
        for (auto it = r["moe"].begin(); it != r["moe"].end(); ++it) {
          if (it.key() == "total") continue;
          Series& s = left_behind[it.key()];
          if (s.name.empty()) {
            s.name = it.key();
            s.color = palette[left_behind.size() % 6];
          }
          s.points.emplace_back(step, num(it.value(), "fraction_tokens_left_behind"));
          std::vector<double> tpe;
          if (it.value().is_object() && it.value().contains("tokens_per_expert")) {
            for (const json& x : it.value()["tokens_per_expert"])
              tpe.push_back(x.is_number() ? x.get<double>() : 0.0);
            load[it.key()].emplace_back(step, tpe);
          }
        }
      }
    } else if (event == "eval" && text(r, "split") == "dev") {
      (phase == "pretrain" ? dev_pre : dev_fine).points.emplace_back(step, num(r, "loss"));
      (phase == "pretrain" ? acc_pre : acc_fine).points.emplace_back(step, num(r, "accuracy"));
    }
  }

  std::ostringstream h;
  h << "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
       "<title>sparsemoe training report</title><style>"
       "body{font-family:sans-serif;margin:24px;color:#222;max-width:1000px}"
       "h1{font-size:22px}h2{font-size:17px;margin-top:28px}"
       "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}"
       ".chart{display:block;margin:8px 0}.title{font-size:14px;font-weight:bold}"
       ".tick{font-size:11px;fill:#444}.plot{fill:#fafafa;stroke:#999}.grid{stroke:#e4e4e4}"
       "</style></head><body>\n";
  h << "<h1>sparsemoe training report</h1>\n<p>Run directory: <code>" << escape(run_dir)
    << "</code></p>\n";
  h << "<h2>Results</h2>\n";
  if (results.is_object()) {
    h << "<table><tr><th>test accuracy</th><td>"
      << fmt::format("{:.4f}", num(results, "test_accuracy")) << "</td></tr>"
      << "<tr><th>majority class (" << escape(text(results, "majority_class")) << ")</th><td>"
      << fmt::format("{:.4f}", num(results, "majority_accuracy")) << "</td></tr>"
      << "<tr><th>test loss</th><td>" << fmt::format("{:.4f}", num(results, "test_loss"))
      << "</td></tr><tr><th>test examples</th><td>" << num(results, "test_examples")
      << "</td></tr><tr><th>steps</th><td>" << num(results, "step") << "</td></tr></table>\n";
  } else {
    h << "<p>Training has not finished yet.</p>\n";
  }
  h << "<h2>Loss</h2>\n"
    << line_chart("loss", "Training and dev loss (cross-entropy)", "loss",
                  {train_pre, train_fine, dev_pre, dev_fine});
  h << "<h2>Dev accuracy</h2>\n"
    << line_chart("accuracy", "Dev accuracy", "accuracy", {acc_pre, acc_fine});
  h << "<h2>Expert load per MoE layer</h2>\n";
  if (load.empty()) h << "<p>No MoE layers in this model.</p>\n";
  int chart = 0;
  for (const auto& [layer, columns] : load) {
    h << heat_map("load_" + std::to_string(chart++), "Expert load, " + layer, columns);
  }
  h << "<h2>Tokens left behind</h2>\n";
  std::vector<Series> lb;
  for (const auto& [layer, s] : left_behind) lb.push_back(s);
  h << line_chart("left_behind", "Fraction of tokens left behind (dropped by every expert)",
                  "fraction", lb);
  if (config.is_object()) {
    h << "<h2>Configuration</h2>\n<pre>" << escape(config.dump(2)) << "</pre>\n";
  }
  // A self-check for headless browsers (tests/cli_train_test.sh): counts the charts that were
  // laid out with a size and drawn marks, and records it on <body>.
  h << "<script>window.addEventListener('load',function(){var c=document.querySelectorAll("
       "'svg.chart'),n=0;c.forEach(function(s){var b=s.getBoundingClientRect();if(b.width>0&&"
       "b.height>0&&s.querySelectorAll('path,rect,circle').length>1)n++;});"
       "document.body.setAttribute('data-charts',c.length);"
       "document.body.setAttribute('data-rendered',n);});</script>\n";
  h << "</body></html>\n";
  write_file_atomic(out_path, h.str());
  return out_path;
}

}  // namespace sparsemoe
