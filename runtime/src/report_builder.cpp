#include "report_builder.h"

#include <sys/utsname.h>
#include <unistd.h>

#include <cmath>
#include <ctime>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "failure.h"
#include "memory_sampler.h"

namespace memwall {
namespace {

using nlohmann::ordered_json;

constexpr size_t kMaxSamples = 20000;  // report.v1's limit
// This runtime's key in the manifest's memory.by_runtime and the report's run.runtime (exporters/bundle.py
// NATIVE_RUNTIME): its prediction is the one a native run is compared with.
constexpr const char* kRuntime = "memwall_native";
constexpr const char* kUnknownDevice = "00000000-0000-4000-8000-000000000000";

std::string first_line(const std::string& path) {
  std::ifstream in(path);
  std::string line;
  std::getline(in, line);
  while (!line.empty() && (line.back() == ' ' || line.back() == '\n')) line.pop_back();
  return line.substr(0, 200);
}

std::string or_unknown(const std::string& value, const std::string& fallback) { return value.empty() ? fallback : value; }

// This host as report.v1's device (sdk_tools/lab/client.py host_device_info). The lab takes a report only from a
// registered device (403 otherwise): pass --device-json with the id it gave.
ordered_json host_device() {
  struct utsname name {};
  ::uname(&name);
  std::string os = name.sysname;
  for (char& c : os) c = char(std::tolower(static_cast<unsigned char>(c)));
  long pages = ::sysconf(_SC_PHYS_PAGES), page = ::sysconf(_SC_PAGE_SIZE);
  ordered_json device;
  device["device_id"] = kUnknownDevice;
  device["model"] = or_unknown(first_line("/sys/class/dmi/id/product_name"), or_unknown(name.nodename, "host"));
  device["manufacturer"] = or_unknown(first_line("/sys/class/dmi/id/sys_vendor"), "unknown");
  device["os"] = or_unknown(os, "unknown");
  device["os_version"] = or_unknown(name.release, "unknown");
  device["ram_bytes"] = pages > 0 && page > 0 ? int64_t(pages) * int64_t(page) : 0;
  device["abi"] = or_unknown(name.machine, "unknown");
  return device;
}

std::string uuid4() {
  std::random_device random;
  uint8_t b[16];
  for (uint8_t& v : b) v = uint8_t(random());
  b[6] = uint8_t((b[6] & 0x0f) | 0x40);
  b[8] = uint8_t((b[8] & 0x3f) | 0x80);
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (int i = 0; i < 16; ++i) {
    if (i == 4 || i == 6 || i == 8 || i == 10) out += '-';
    out += hex[b[i] >> 4];
    out += hex[b[i] & 0xf];
  }
  return out;
}

std::string now_iso() {
  auto now = std::chrono::system_clock::now();
  std::time_t seconds = std::chrono::system_clock::to_time_t(now);
  auto millis = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000;
  std::tm utc{};
  ::gmtime_r(&seconds, &utc);
  char text[40];
  std::strftime(text, sizeof(text), "%Y-%m-%dT%H:%M:%S", &utc);
  char out[64];
  std::snprintf(out, sizeof(out), "%s.%03d+00:00", text, int(millis));
  return out;
}

// memory.by_runtime's prediction for this runtime; manifests from before by_runtime predict for the Python host
// runner only, and their top-level figure (host_peak) is then all there is.
int64_t native_prediction(const nlohmann::json& memory, int64_t host_peak) {
  auto by_runtime = memory.find("by_runtime");
  if (by_runtime == memory.end() || !by_runtime->is_object()) return host_peak;
  auto mine = by_runtime->find(kRuntime);
  if (mine == by_runtime->end() || !mine->is_object()) return host_peak;
  auto peak = mine->find("predicted_peak_bytes");
  return peak != mine->end() && peak->is_number_unsigned() ? peak->get<int64_t>() : host_peak;
}

}  // namespace

RunRecord::RunRecord() : started_at(now_iso()), start_(std::chrono::steady_clock::now()) {
  MemorySample s = sample_memory();
  baseline_bytes = s.current_bytes;
  peak_bytes = s.current_bytes;
  baseline_file_bytes = file_bytes = s.file_bytes;
  samples.emplace_back(0.0, s.current_bytes);
}

void RunRecord::phase(const std::string& name) {
  MemorySample s = sample_memory();
  if (!current_phase.empty()) phase_peaks[current_phase] = std::max(phase_peaks[current_phase], s.peak_bytes);
  peak_bytes = std::max(peak_bytes, s.peak_bytes);
  file_bytes = std::max(file_bytes, s.file_bytes);
  reset_memory_peak();
  current_phase = name;
  phase_peaks.emplace(name, s.current_bytes);
}

void RunRecord::sample() {
  MemorySample s = sample_memory();
  peak_bytes = std::max(peak_bytes, s.peak_bytes);
  file_bytes = std::max(file_bytes, s.file_bytes);
  if (!current_phase.empty()) phase_peaks[current_phase] = std::max(phase_peaks[current_phase], s.peak_bytes);
  if (samples.size() < kMaxSamples) {
    double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start_).count();
    samples.emplace_back(ms, s.current_bytes);
  }
}

void RunRecord::step(double milliseconds, double loss) {
  step_times_ms.push_back(milliseconds);
  losses.push_back(loss);
  sample();
}

std::string build_report(const Bundle& bundle, const RunRecord& run, int32_t threads, const mw_report_options* options) {
  using json = nlohmann::json;
  json manifest = json::parse(bundle.manifest_text);
  ordered_json report;
  report["schema_version"] = 1;
  if (options != nullptr && options->device_json != nullptr) {
    try {
      report["device"] = ordered_json::parse(options->device_json);
    } catch (const std::exception& exc) {
      fail(MW_ERR_ARGUMENT, std::string("device_json is not JSON: ") + exc.what());
    }
  } else {
    report["device"] = host_device();
  }
  ordered_json section;
  section["manifest_sha256"] = bundle.manifest_sha256;
  section["name"] = bundle.name;
  section["backend"] = bundle.backend;
  const json& model = manifest["model"];
  section["model"] = model.contains("spec") && model["spec"].is_string() && !model["spec"].get<std::string>().empty()
                         ? model["spec"].get<std::string>()
                         : bundle.name;
  ordered_json plan = ordered_json::object();
  for (const json& technique : manifest["techniques"]) {
    if (technique.is_object() && technique.contains("name") && technique["name"].is_string()) {
      plan[technique["name"].get<std::string>()] = technique.value("config", json::object());
    }
  }
  section["plan"] = plan;
  section["predicted_peak_bytes"] = native_prediction(manifest["memory"], bundle.predicted_peak_bytes);
  ordered_json predicted = ordered_json::object();
  for (auto it = manifest["memory"].begin(); it != manifest["memory"].end(); ++it) {
    if (it.value().is_number_integer()) predicted[it.key()] = it.value();
  }
  section["predicted"] = predicted;
  report["bundle"] = section;

  ordered_json r;
  r["report_id"] = uuid4();
  r["started_at"] = run.started_at;
  r["steps"] = run.step_times_ms.size();
  r["batch_size"] = bundle.batch_size;
  r["micro_batches"] = bundle.micro_batches;
  ordered_json times = ordered_json::array(), losses = ordered_json::array();
  for (double t : run.step_times_ms) times.push_back(std::round(t * 1000) / 1000);
  for (double l : run.losses) {
    if (std::isfinite(l)) {
      losses.push_back(l);
    } else {
      losses.push_back(nullptr);
    }
  }
  r["step_times_ms"] = times;
  r["loss_curve"] = losses;
  auto accuracy = [](double value) { return value < 0 ? ordered_json(nullptr) : ordered_json(value); };
  r["accuracy_before"] = accuracy(options ? options->accuracy_before : -1);
  r["accuracy_after"] = accuracy(options ? options->accuracy_after : -1);
  r["threads"] = std::max(1, threads);
  r["runtime"] = kRuntime;
  report["run"] = r;

  ordered_json memory;
  memory["peak_rss_bytes"] = run.peak_bytes;
  memory["baseline_bytes"] = run.baseline_bytes;
  memory["peak_delta_bytes"] = std::max<int64_t>(0, run.peak_bytes - run.baseline_bytes);
  if (run.baseline_file_bytes >= 0) memory["file_backed_delta_bytes"] = std::max<int64_t>(0, run.file_bytes - run.baseline_file_bytes);
  ordered_json samples = ordered_json::array();
  for (const auto& [t, bytes] : run.samples) samples.push_back({{"t_ms", std::round(t * 1000) / 1000}, {"rss_bytes", bytes}});
  memory["samples"] = samples;
  report["memory"] = memory;
  std::string status = options && options->status ? options->status : "ok";
  report["status"] = status;
  if (status == "ok") {
    report["error"] = nullptr;
  } else {
    report["error"] = {{"kind", status == "oom" ? "oom_kill" : "exception"},
                       {"message", options && options->error ? options->error : "unknown"}};
  }
  return report.dump(1);
}

}  // namespace memwall
