// What a run measured, and its report.v1 JSON (sdk_tools/lab/schemas/report.v1.schema.json), built as
// sdk_tools/host_report.py builds the host's: the bundle section from the manifest (sdk_tools/lab/client.py
// bundle_section), steps, step times, losses, memory baseline / peak / delta and samples.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "bundle_reader.h"
#include "memwall.h"

namespace memwall {

class RunRecord {
 public:
  RunRecord();  // samples the baseline: call before the program loads
  void phase(const std::string& name);  // closes the current phase's peak, resets the peak for the next
  void step(double milliseconds, double loss);
  void sample();  // one memory sample (each step takes one; at most kMaxSamples are kept)

  std::string started_at;
  int64_t baseline_bytes = 0;
  int64_t peak_bytes = 0;  // over the whole run
  int64_t baseline_file_bytes = -1, file_bytes = -1;  // resident file-backed pages: at the baseline, the most since
  std::vector<double> step_times_ms, losses;
  std::vector<std::pair<double, int64_t>> samples;  // (ms since start, bytes)
  std::map<std::string, int64_t> phase_peaks;      // each phase's peak (bytes, absolute)
  std::string current_phase;

 private:
  std::chrono::steady_clock::time_point start_;
};

std::string build_report(const Bundle& bundle, const RunRecord& run, int32_t threads, const mw_report_options* options);

}  // namespace memwall
