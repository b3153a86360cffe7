#ifndef TAILOR_DEMO_DEMO_REPORT_H_
#define TAILOR_DEMO_DEMO_REPORT_H_

// What is made of a forgetting-benchmark report (RunForgettingDemo,
// demo/forgetting_demo.h): its tables and its trade-off plot.

#include <string>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace tailor {

// The paper-style tables of a report, for a terminal.
std::string FormatDemoTables(const nlohmann::json& report);

// Writes `<dir>/sweep.dat` and `<dir>/tradeoff.gp` (a gnuplot script that
// draws the rho/omega trade-off curve to `<dir>/tradeoff.png`) from a
// report with a sweep. Returns the script's path.
absl::StatusOr<std::string> WriteTradeoffPlotScript(
    const nlohmann::json& report, const std::string& dir);

}  // namespace tailor

#endif  // TAILOR_DEMO_DEMO_REPORT_H_
