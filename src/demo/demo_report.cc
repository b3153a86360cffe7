// Presentation of the forgetting demo's report: terminal tables and the
// gnuplot trade-off plot.

#include "demo/demo_report.h"

#include <map>
#include <set>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "util/file_util.h"
#include "util/status_macros.h"

namespace tailor {
namespace {

double Acc(const nlohmann::json& row, const char* key) {
  return row.contains(key) ? row[key]["accuracy"].get<double>() : 0.0;
}

double Ppl(const nlohmann::json& row, const char* key) {
  return row.contains(key) ? row[key]["perplexity"].get<double>() : 0.0;
}

std::string CorpusLabel(const nlohmann::json& report, const char* key) {
  const nlohmann::json& corpora = report["corpora"];
  return corpora.contains(key)
             ? absl::StrCat(key, " = ", corpora[key]["name"].get<std::string>())
             : std::string(key);
}

}  // namespace

std::string FormatDemoTables(const nlohmann::json& report) {
  std::string out;
  for (const nlohmann::json& block : report["single_task"]) {
    absl::StrAppendFormat(
        &out,
        "\nSingle task, %s fine-tune (rho = %g%%, omega = %g). Next-byte "
        "accuracy %% on held-out %s and %s; ppl = perplexity.\n",
        block["setting"].get<std::string>(), 100 * block["keep"].get<double>(),
        block["omega"].get<double>(), CorpusLabel(report, "A"),
        CorpusLabel(report, "B"));
    absl::StrAppendFormat(&out, "%-22s %7s %7s %7s %7s %7s %7s %8s %8s\n",
                          "method", "A", "B", "Avg", "H", "ret A", "ret B",
                          "ppl A", "ppl B");
    for (const nlohmann::json& row : block["rows"]) {
      absl::StrAppendFormat(
          &out, "%-22s %7.2f %7.2f %7.2f %7.2f %6.1f%% %6.1f%% %8.3f %8.3f\n",
          row["method"].get<std::string>(), Acc(row, "A"), Acc(row, "B"),
          row["avg"].get<double>(), row["h_score"].get<double>(),
          row["retention_a"].get<double>(), row["retention_b"].get<double>(),
          Ppl(row, "A"), Ppl(row, "B"));
    }
  }
  if (report.contains("sweep")) {
    absl::StrAppend(&out,
                    "\nSweep, tailor (sequential) on the full fine-tune: "
                    "H-score (A %, B %)\n");
    std::set<double> omegas;
    std::map<double, std::map<double, const nlohmann::json*>> grid;
    for (const nlohmann::json& p : report["sweep"]) {
      omegas.insert(p["omega"].get<double>());
      grid[p["keep"].get<double>()][p["omega"].get<double>()] = &p;
    }
    absl::StrAppendFormat(&out, "%-8s", "rho");
    for (double w : omegas) {
      absl::StrAppendFormat(&out, " %-21s", absl::StrFormat("omega=%g", w));
    }
    absl::StrAppend(&out, "\n");
    for (const auto& [keep, by_omega] : grid) {
      absl::StrAppendFormat(&out, "%-8s", absl::StrFormat("%g%%", 100 * keep));
      for (double w : omegas) {
        auto it = by_omega.find(w);
        if (it == by_omega.end()) {
          absl::StrAppendFormat(&out, " %-21s", "-");
          continue;
        }
        const nlohmann::json& p = *it->second;
        absl::StrAppendFormat(
            &out, " %-21s",
            absl::StrFormat("%.2f (%.1f, %.1f)", p["h_score"].get<double>(),
                            Acc(p, "A"), Acc(p, "B")));
      }
      absl::StrAppend(&out, "\n");
    }
  }
  if (report.contains("multi_task")) {
    const nlohmann::json& multi = report["multi_task"];
    absl::StrAppendFormat(
        &out,
        "\nMulti-task: %s and %s stitched into the model pre-trained on %s. "
        "Accuracy %%.\n",
        CorpusLabel(report, "B"), CorpusLabel(report, "C"),
        CorpusLabel(report, "A"));
    absl::StrAppendFormat(&out, "%-30s %7s %7s %7s %7s\n", "method", "A", "B",
                          "C", "Avg");
    for (const nlohmann::json& row : multi["rows"]) {
      absl::StrAppendFormat(&out, "%-30s %7.2f %7.2f %7.2f %7.2f\n",
                            row["method"].get<std::string>(), Acc(row, "A"),
                            Acc(row, "B"), Acc(row, "C"),
                            row["avg"].get<double>());
    }
  }
  if (report.contains("baseline_notes")) {
    absl::StrAppend(&out, "\nBaselines' parameters:\n");
    for (const nlohmann::json& note : report["baseline_notes"]) {
      absl::StrAppend(&out, "  ", note.get<std::string>(), "\n");
    }
  }
  return out;
}

absl::StatusOr<std::string> WriteTradeoffPlotScript(
    const nlohmann::json& report, const std::string& dir) {
  if (!report.contains("sweep") || report["sweep"].empty()) {
    return absl::FailedPreconditionError("demo report has no sweep to plot");
  }
  // sweep.dat: one gnuplot data block per omega (blank-line separated
  // pairs of lines), rows sorted by rho; then the reference points.
  std::map<double, std::map<double, std::pair<double, double>>> by_omega;
  for (const nlohmann::json& p : report["sweep"]) {
    by_omega[p["omega"].get<double>()][p["keep"].get<double>()] = {Acc(p, "A"),
                                                                   Acc(p, "B")};
  }
  std::string data;
  for (const auto& [omega, points] : by_omega) {
    absl::StrAppendFormat(&data, "# omega = %g: rho A B\n", omega);
    for (const auto& [keep, ab] : points) {
      absl::StrAppendFormat(&data, "%g %.4f %.4f\n", keep, ab.first, ab.second);
    }
    absl::StrAppend(&data, "\n\n");
  }
  std::string refs;
  for (const nlohmann::json& row : report["single_task"][0]["rows"]) {
    absl::StrAppendFormat(&refs, "\"%s\" %.4f %.4f\n",
                          row["method"].get<std::string>(), Acc(row, "A"),
                          Acc(row, "B"));
  }
  const std::string data_path = JoinPath(dir, "sweep.dat");
  const std::string refs_path = JoinPath(dir, "methods.dat");
  const std::string png_path = JoinPath(dir, "tradeoff.png");
  const std::string script_path = JoinPath(dir, "tradeoff.gp");
  TAILOR_RETURN_IF_ERROR(WriteFileAtomically(data_path, data));
  TAILOR_RETURN_IF_ERROR(WriteFileAtomically(refs_path, refs));

  std::string script = absl::StrFormat(
      "# Trade-off of Model Tailor (sequential) over rho and omega.\n"
      "# Generated by tailorctl demo; run: gnuplot %s\n"
      "set terminal pngcairo size 1000,700 font ',11'\n"
      "set output '%s'\n"
      "set title 'Model Tailor: forgetting (A = %s) vs learning (B = %s)'\n"
      "set xlabel 'held-out next-byte accuracy on A, %%'\n"
      "set ylabel 'held-out next-byte accuracy on B, %%'\n"
      "set key outside right\n"
      "set grid\n"
      "plot ",
      script_path, png_path, report["corpora"]["A"]["name"].get<std::string>(),
      report["corpora"]["B"]["name"].get<std::string>());
  const auto& first_points = by_omega.begin()->second;
  const std::string rho_range =
      absl::StrFormat("rho %g..%g%%", 100 * first_points.begin()->first,
                      100 * first_points.rbegin()->first);
  int index = 0;
  for (const auto& [omega, points] : by_omega) {
    absl::StrAppendFormat(&script,
                          "'%s' index %d using 2:3 with linespoints pt 7 "
                          "title 'tailor, omega = %g (%s)', \\\n     ",
                          data_path, index++, omega, rho_range);
  }
  // rho of each point, next to the first omega's curve.
  absl::StrAppendFormat(&script,
                        "'%s' index 0 using 2:3:(sprintf('%%g%%%%', "
                        "100*$1)) with labels offset char -2.5,0 font ',8' "
                        "notitle, \\\n     ",
                        data_path);
  absl::StrAppendFormat(&script,
                        "'%s' using 2:3:1 with labels point pt 5 offset "
                        "char 1,0.7 left font ',9' notitle\n",
                        refs_path);
  TAILOR_RETURN_IF_ERROR(WriteFileAtomically(script_path, script));
  return script_path;
}

}  // namespace tailor
