// The run's self-contained HTML report (report.html: no scripts or files fetched from elsewhere;
// charts are inline SVG): train and dev loss curves, dev accuracy, the expert load of every MoE
// layer over time as a heat map, the fraction of tokens left behind, and the results. Built from
// the run directory's metrics.jsonl, config.json and results.json, so it can be regenerated any
// time (`sparsemoe report RUN_DIR`).
#pragma once

#include <string>

namespace sparsemoe {

// Writes RUN_DIR/report.html atomically and returns its path.
std::string write_report(const std::string& run_dir);

}  // namespace sparsemoe
