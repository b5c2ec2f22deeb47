#include "bundle_reader.h"

#include <sys/stat.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "failure.h"
#include "manifest_schema.h"
#include "sha256.h"

namespace memwall {
namespace {

using nlohmann::json;

constexpr int kSupportedSchemaVersion = 1;
// As exporters/bundle.py: a manifest is a few KiB (MobileNetV2 x1.0 full fine-tune: 33 KiB); reading more would
// only let a hostile one exhaust memory before the checks refuse it.
constexpr int64_t kMaxManifestBytes = 4 << 20;
constexpr const char* kManifestName = "manifest.json";
// Python's json parser gives up near its recursion limit (1000 frames); a manifest nests 5 levels. Deeper documents
// are refused before anything walks them recursively (the schema check does).
constexpr size_t kMaxNesting = 500;

// A manifest that does not have the shape manifest.v1.schema.json gives: the Python loader's message.
[[noreturn]] void invalid(const std::string& where, const std::string& location, const std::string& problem) {
  fail(MW_ERR_BUNDLE, where + ": invalid manifest at " + location + ": " + problem +
                          ". Re-export the bundle; do not edit manifest.json by hand.");
}

class Reader {
 public:
  explicit Reader(std::string where) : where_(std::move(where)) {}

  const json& field(const json& object, const std::string& key, json::value_t type, const std::string& at) const {
    if (!object.is_object() || !object.contains(key)) invalid(where_, at.empty() ? "(root)" : at, "'" + key + "' is a required property");
    const json& value = object.at(key);
    bool ok = value.type() == type || (type == json::value_t::number_integer && value.is_number_unsigned()) ||
              (type == json::value_t::number_float && value.is_number());
    if (!ok) invalid(where_, join(at, key), value.dump() + " is not of type " + type_name(type));
    return value;
  }

  std::string string(const json& object, const std::string& key, const std::string& at, bool non_empty = true) const {
    std::string value = field(object, key, json::value_t::string, at).get<std::string>();
    if (non_empty && value.empty()) invalid(where_, join(at, key), "'' should be non-empty");
    return value;
  }

  int64_t integer(const json& object, const std::string& key, const std::string& at, int64_t minimum) const {
    const json& value = field(object, key, json::value_t::number_integer, at);
    int64_t n = value.get<int64_t>();
    if (n < minimum) invalid(where_, join(at, key), std::to_string(n) + " is less than the minimum of " + std::to_string(minimum));
    return n;
  }

  double number(const json& object, const std::string& key, const std::string& at) const {
    return field(object, key, json::value_t::number_float, at).get<double>();
  }

  std::vector<std::string> strings(const json& object, const std::string& key, const std::string& at) const {
    const json& list = field(object, key, json::value_t::array, at);
    std::vector<std::string> out;
    for (size_t i = 0; i < list.size(); ++i) {
      if (!list[i].is_string()) invalid(where_, join(at, key) + "/" + std::to_string(i), list[i].dump() + " is not of type 'string'");
      out.push_back(list[i].get<std::string>());
    }
    return out;
  }

  TensorSpec tensor(const json& object, const std::string& at, int64_t min_dim) const {
    TensorSpec spec;
    spec.name = string(object, "name", at);
    std::string dtype = string(object, "dtype", at);
    if (dtype == "float32") {
      spec.dtype = MW_FLOAT32;
    } else if (dtype == "int64") {
      spec.dtype = MW_INT64;
    } else {
      fail(MW_ERR_UNSUPPORTED, where_ + ": tensor '" + spec.name + "' has dtype " + dtype +
                                   ", which this native runtime does not feed (float32 and int64 only); re-export with float32 inputs");
    }
    const json& shape = field(object, "shape", json::value_t::array, at);
    if (shape.size() > MW_MAX_RANK) invalid(where_, join(at, "shape"), "more than " + std::to_string(MW_MAX_RANK) + " dimensions");
    for (size_t i = 0; i < shape.size(); ++i) {
      if (!shape[i].is_number_integer() || shape[i].get<int64_t>() < min_dim) {
        invalid(where_, join(at, "shape") + "/" + std::to_string(i), shape[i].dump() + " is not an integer >= " + std::to_string(min_dim));
      }
      spec.shape.push_back(shape[i].get<int64_t>());
      spec.numel *= spec.shape.back();
    }
    return spec;
  }

  static std::string join(const std::string& at, const std::string& key) { return at.empty() ? key : at + "/" + key; }

 private:
  static std::string type_name(json::value_t type) {
    switch (type) {
      case json::value_t::object: return "'object'";
      case json::value_t::array: return "'array'";
      case json::value_t::string: return "'string'";
      case json::value_t::boolean: return "'boolean'";
      case json::value_t::number_integer: return "'integer'";
      default: return "'number'";
    }
  }
  std::string where_;
};

bool is_directory(const std::string& path) {
  struct stat info {};
  return ::stat(path.c_str(), &info) == 0 && S_ISDIR(info.st_mode);
}

// A regular file, not a symbolic link.
bool regular_file_size(const std::string& path, int64_t* size) {
  struct stat info {};
  if (::lstat(path.c_str(), &info) != 0 || !S_ISREG(info.st_mode)) return false;
  *size = int64_t(info.st_size);
  return true;
}

// The schema's rule for file paths: relative, no backslashes, no ".." component.
bool safe_relative_path(const std::string& path) {
  if (path.empty() || path[0] == '/' || path.find('\\') != std::string::npos) return false;
  std::stringstream parts(path);
  std::string part;
  while (std::getline(parts, part, '/')) {
    if (part == "..") return false;
  }
  return true;
}

std::string real_path(const std::string& path) {
  char* resolved = ::realpath(path.c_str(), nullptr);
  std::string out = resolved ? resolved : "";
  std::free(resolved);
  return out;
}

std::string normalized(const std::string& relative) {
  std::vector<std::string> parts;
  std::stringstream in(relative);
  std::string part;
  while (std::getline(in, part, '/')) {
    if (!part.empty() && part != ".") parts.push_back(part);
  }
  std::string out;
  for (const std::string& p : parts) out += "/" + p;
  return out;
}

void verify_file(const std::string& directory, const std::string& role, const std::string& relative,
                 const std::string& sha256, int64_t bytes) {
  std::string path = directory + "/" + relative;
  struct stat info {};
  if (::lstat(path.c_str(), &info) != 0) {
    fail(MW_ERR_BUNDLE, "bundle file '" + relative + "' (" + role + ") is missing from " + directory + "; re-export the bundle");
  }
  // Refused rather than followed: a symlink (of the file or of a directory on its path) could point anywhere.
  if (real_path(path) != real_path(directory) + normalized(relative)) {
    fail(MW_ERR_BUNDLE, "bundle file '" + relative + "' (" + role + ") is a symbolic link or lies outside " + directory +
                            ": a bundle's files must be regular files inside it; copy the bundle without links (cp -rL) or re-export it");
  }
  int64_t size = 0;
  if (!regular_file_size(path, &size)) {
    fail(MW_ERR_BUNDLE, "bundle file '" + relative + "' (" + role + ") in " + directory + " is not a regular file; re-export it");
  }
  if (size != bytes) {
    fail(MW_ERR_BUNDLE, "bundle file '" + relative + "' (" + role + ") is " + std::to_string(size) + " bytes, the manifest says " +
                            std::to_string(bytes) + ": it is truncated or was replaced; re-export the bundle");
  }
  std::string actual = sha256_file(path);
  if (actual != sha256) {
    fail(MW_ERR_BUNDLE, "bundle file '" + relative + "' (" + role + ") has sha256 " + actual.substr(0, 12) + "..., the manifest says " +
                            sha256.substr(0, 12) + "...: the file is corrupt or from another export; re-export the bundle");
  }
}

// What the schema cannot say (exporters/bundle.py check_manifest_consistency): the figures a runner sizes tensors
// and loops from agree with each other. The first problem is reported, with the count.
std::string shape_list(const std::vector<int64_t>& shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + "]";
}

// declared_numel: the manifest's numel of each trainable parameter.
// memory.by_runtime agrees with the rest (exporters/bundle.py _runtime_prediction_problems): the host runner's entry
// is the top-level pair, and every runtime's peak is the same shared components plus its own overhead.
std::vector<std::string> runtime_prediction_problems(const json& memory) {
  const json by_runtime = memory.value("by_runtime", json::object());
  if (by_runtime.empty()) return {};
  int64_t overhead = memory["runtime_overhead_bytes"].get<int64_t>(), peak = memory["predicted_peak_bytes"].get<int64_t>();
  auto pair = [](const json& entry) {
    return std::make_pair(entry["runtime_overhead_bytes"].get<int64_t>(), entry["predicted_peak_bytes"].get<int64_t>());
  };
  if (!by_runtime.contains("python_host") || pair(by_runtime["python_host"]) != std::make_pair(overhead, peak)) {
    return {"memory.by_runtime.python_host is missing or differs from memory's predicted_peak_bytes"};
  }
  std::vector<std::string> problems;
  for (auto it = by_runtime.begin(); it != by_runtime.end(); ++it) {
    auto [own, total] = pair(it.value());
    if (total - own != peak - overhead) {
      problems.push_back("memory.by_runtime." + it.key() + ": predicted_peak_bytes is not the shared components (" +
                         std::to_string(peak - overhead) + ") plus its overhead");
    }
  }
  return problems;
}

void check_consistency(const Bundle& b, const json& files, const json& training, const json& memory,
                       const std::vector<int64_t>& declared_numel, const std::string& where) {
  std::vector<std::string> problems;
  if (b.backend == "executorch" && !files.contains("program")) problems.push_back("files lacks the program role(s) a executorch bundle needs");
  if (b.backend == "onnxruntime") {
    std::string missing;
    for (const char* role : {"training_model", "eval_model", "checkpoint"}) {
      if (!files.contains(role)) missing += (missing.empty() ? "" : ", ") + std::string(role);
    }
    if (!missing.empty()) problems.push_back("files lacks the " + missing + " role(s) a onnxruntime bundle needs");
  }
  const std::vector<int64_t>& input = b.inputs[0].shape;
  if (input.empty()) {
    problems.push_back("inputs[0] has no batch dimension");
  } else if (b.labels.shape.empty() || b.labels.shape[0] != input[0]) {
    problems.push_back("labels " + shape_list(b.labels.shape) + " and inputs " + shape_list(input) + " differ in batch size");
  }
  // Not checked by the Python loader (its runner feeds one input): the data reader slices every input by one batch.
  for (size_t i = 1; i < b.inputs.size(); ++i) {
    if (!input.empty() && b.inputs[i].shape.size() > 0 && b.inputs[i].shape[0] != input[0]) {
      problems.push_back("inputs[" + std::to_string(i) + "] and inputs[0] differ in batch size");
    } else if (b.inputs[i].shape.empty()) {
      problems.push_back("inputs[" + std::to_string(i) + "] has no batch dimension");
    }
  }
  int64_t batch = training.value("batch_size", int64_t(-1));
  if (!input.empty() && batch != input[0] * b.micro_batches) problems.push_back("training.batch_size is not the input batch times micro_batches");
  if (b.labels.shape.size() == 1 && b.labels.dtype != MW_INT64) {
    problems.push_back("labels " + shape_list(b.labels.shape) + " are class indices but have dtype " + dtype_name(b.labels.dtype));
  }
  if (b.classes.empty()) problems.push_back("classes is empty");
  for (size_t i = 0; i < b.trainable.size(); ++i) {
    if (declared_numel[i] != b.trainable[i].numel) {
      problems.push_back("trainable '" + b.trainable[i].name + "' has shape " + shape_list(b.trainable[i].shape) + " but numel " +
                         std::to_string(declared_numel[i]));
      break;
    }
  }
  std::set<std::string> names;
  for (const TensorSpec& p : b.trainable) names.insert(p.name);
  if (names.size() != b.trainable.size()) problems.push_back("trainable names a parameter twice");
  for (std::string& problem : runtime_prediction_problems(memory)) problems.push_back(std::move(problem));
  const OptimizerConfig& o = b.optimizer;
  if (o.lr <= 0) problems.push_back("optimizer: learning rate must be positive, got " + std::to_string(o.lr));
  if (!(o.momentum >= 0 && o.momentum < 1)) problems.push_back("optimizer: momentum must be in [0, 1), got " + std::to_string(o.momentum));
  if (o.nesterov && (o.momentum == 0 || o.dampening != 0)) {
    problems.push_back("optimizer: nesterov needs momentum > 0 and dampening == 0 (as in torch.optim.SGD)");
  }
  if (!problems.empty()) {
    fail(MW_ERR_BUNDLE, where + ": " + problems[0] + " (" + std::to_string(problems.size()) + " problem(s)); re-export the bundle");
  }
}

}  // namespace

const char* dtype_name(mw_dtype dtype) { return dtype == MW_INT64 ? "int64" : "float32"; }

Bundle read_fields(Bundle b, const json& m, const std::string& manifest_path);

Bundle read_bundle(const std::string& directory) {
  Bundle b;
  b.directory = directory;
  while (b.directory.size() > 1 && b.directory.back() == '/') b.directory.pop_back();
  std::string manifest_path = b.directory + "/" + kManifestName;
  if (!is_directory(b.directory)) {
    fail(MW_ERR_BUNDLE, b.directory + " is not a directory; pass the bundle directory made by 'memwall export'");
  }
  int64_t manifest_size = 0;
  if (!regular_file_size(manifest_path, &manifest_size)) {
    fail(MW_ERR_BUNDLE, b.directory + " has no manifest.json file: not a memwall bundle (run 'memwall export')");
  }
  if (manifest_size > kMaxManifestBytes) {
    fail(MW_ERR_BUNDLE, manifest_path + " is larger than 4 MiB, far more than any export writes: not a memwall manifest; re-export the bundle");
  }
  {
    std::ifstream in(manifest_path, std::ios::binary);
    std::ostringstream text;
    text << in.rdbuf();
    if (!in && !in.eof()) fail(MW_ERR_IO, "cannot read " + manifest_path);
    b.manifest_text = text.str();
  }
  json m;
  try {
    // Strict as every reader of the contract parses it (exporters/bundle.py parse_strict_json): no NaN/Infinity
    // (nlohmann refuses them), no key twice in one object (readers would disagree on which one wins).
    std::vector<std::set<std::string>> keys;
    m = json::parse(b.manifest_text, [&keys](int depth, json::parse_event_t event, json& parsed) {
      if (size_t(depth) > kMaxNesting) throw std::invalid_argument("nested too deeply");
      if (event == json::parse_event_t::object_start) keys.emplace_back();
      if (event == json::parse_event_t::object_end && !keys.empty()) keys.pop_back();
      if (event == json::parse_event_t::key && !keys.empty() && !keys.back().insert(parsed.get<std::string>()).second) {
        throw std::invalid_argument("key '" + parsed.get<std::string>() + "' appears twice in one object");
      }
      return true;
    });
  } catch (const std::invalid_argument& exc) {
    fail(MW_ERR_BUNDLE, manifest_path + " is not valid JSON (" + exc.what() + "); the bundle is corrupt, re-export it");
  } catch (const json::exception& exc) {
    // The parser quotes the bytes it last read: printable ASCII only, so the line stays one readable line.
    std::string detail = exc.what();
    std::replace_if(detail.begin(), detail.end(), [](char c) { return c < 0x20 || c > 0x7e; }, '?');
    fail(MW_ERR_BUNDLE, manifest_path + " is not valid JSON (" + detail + "); the bundle is corrupt, re-export it");
  }
  if (!m.is_object()) fail(MW_ERR_BUNDLE, manifest_path + ": expected a JSON object, found " + std::string(m.type_name()));
  try {
    return read_fields(std::move(b), m, manifest_path);
  } catch (const json::exception& exc) {
    // A value of an unexpected type where the checks above do not look.
    fail(MW_ERR_BUNDLE, manifest_path + ": invalid manifest: " + exc.what() + ". Re-export the bundle; do not edit manifest.json by hand.");
  }
}

Bundle read_fields(Bundle b, const json& m, const std::string& manifest_path) {
  if (!m.contains("schema_version") || !m["schema_version"].is_number_integer() ||
      m["schema_version"].get<int64_t>() != kSupportedSchemaVersion) {
    std::string found = m.contains("schema_version") ? m["schema_version"].dump() : "None";
    fail(MW_ERR_BUNDLE, manifest_path + ": unsupported schema_version " + found + "; this memwall reads (1,). " +
                            "Re-export the bundle with this memwall version, or upgrade memwall.");
  }
  std::vector<SchemaError> errors = schema_errors(m);
  if (!errors.empty()) {
    fail(MW_ERR_BUNDLE, manifest_path + ": invalid manifest at " + errors[0].location + ": " + errors[0].message + " (" +
                            std::to_string(errors.size()) + " problem(s)). Re-export the bundle; do not edit manifest.json by hand.");
  }
  Reader r(manifest_path);
  b.name = r.string(m, "name", "");
  b.backend = r.string(m, "backend", "");
  if (b.backend != "executorch" && b.backend != "onnxruntime") {
    invalid(manifest_path, "backend", "'" + b.backend + "' is not one of ['executorch', 'onnxruntime']");
  }
  r.string(m, "created_by", "", false);
  b.loss = r.string(m, "loss", "");
  const json& files = r.field(m, "files", json::value_t::object, "");
  if (files.empty()) invalid(manifest_path, "files", "{} should be non-empty");
  for (auto it = files.begin(); it != files.end(); ++it) {
    std::string at = "files/" + it.key();
    std::string path = r.string(it.value(), "path", at);
    std::string sha = r.string(it.value(), "sha256", at);
    r.integer(it.value(), "bytes", at, 0);
    if (!safe_relative_path(path)) {
      invalid(manifest_path, at + "/path", "'" + path + "' is not a path inside the bundle (absolute, backslash or '..')");
    }
    if (sha.size() != 64 || sha.find_first_not_of("0123456789abcdef") != std::string::npos) {
      invalid(manifest_path, at + "/sha256", "'" + sha + "' does not match '^[0-9a-f]{64}$'");
    }
  }
  const json& inputs = r.field(m, "inputs", json::value_t::array, "");
  if (inputs.empty()) invalid(manifest_path, "inputs", "[] should be non-empty");
  for (size_t i = 0; i < inputs.size(); ++i) b.inputs.push_back(r.tensor(inputs[i], "inputs/" + std::to_string(i), 1));
  b.labels = r.tensor(r.field(m, "labels", json::value_t::object, ""), "labels", 1);
  const json& outputs = r.field(m, "outputs", json::value_t::array, "");
  if (outputs.empty()) invalid(manifest_path, "outputs", "[] should be non-empty");
  b.classes = r.strings(m, "classes", "");
  const json& trainable = r.field(m, "trainable", json::value_t::array, "");
  std::vector<int64_t> declared_numel;
  for (size_t i = 0; i < trainable.size(); ++i) {
    std::string at = "trainable/" + std::to_string(i);
    TensorSpec p = r.tensor(trainable[i], at, 0);
    declared_numel.push_back(r.integer(trainable[i], "numel", at, 0));
    if (p.dtype != MW_FLOAT32) fail(MW_ERR_UNSUPPORTED, manifest_path + ": trainable parameter '" + p.name + "' is not float32");
    b.trainable.push_back(p);
  }
  r.integer(m, "frozen_parameter_count", "", 0);
  const json& opt = r.field(m, "optimizer", json::value_t::object, "");
  for (auto it = opt.begin(); it != opt.end(); ++it) {
    static const std::set<std::string> known = {"kind", "lr", "momentum", "dampening", "weight_decay", "nesterov", "betas", "eps"};
    if (!known.count(it.key())) {
      fail(MW_ERR_BUNDLE, manifest_path + ": optimizer: unknown setting '" + it.key() + "' (1 problem(s)); re-export the bundle");
    }
  }
  // Settings left out take OptimizerConfig's defaults, as exporters.config.OptimizerConfig.from_json does.
  OptimizerConfig& o = b.optimizer;
  o.kind = r.string(opt, "kind", "optimizer");
  o.lr = r.number(opt, "lr", "optimizer");
  o.momentum = opt.contains("momentum") ? r.number(opt, "momentum", "optimizer") : 0.0;
  o.dampening = opt.contains("dampening") ? r.number(opt, "dampening", "optimizer") : 0.0;
  o.weight_decay = opt.contains("weight_decay") ? r.number(opt, "weight_decay", "optimizer") : 0.0;
  o.nesterov = opt.contains("nesterov") && r.field(opt, "nesterov", json::value_t::boolean, "optimizer").get<bool>();
  if (opt.contains("betas")) {
    const json& betas = r.field(opt, "betas", json::value_t::array, "optimizer");
    o.beta1 = betas.at(0).get<double>();
    o.beta2 = betas.at(1).get<double>();
  }
  if (opt.contains("eps")) o.eps = r.number(opt, "eps", "optimizer");
  if (b.optimizer.kind != "sgd" && b.optimizer.kind != "adamw") {
    invalid(manifest_path, "optimizer/kind", "'" + b.optimizer.kind + "' is not one of ['sgd', 'adamw']");
  }
  const json& training = r.field(m, "training", json::value_t::object, "");
  b.micro_batches = int32_t(r.integer(training, "micro_batches", "training", 1));
  b.batch_size = r.integer(training, "batch_size", "training", 1);
  const json& methods = r.field(m, "methods", json::value_t::object, "");
  for (auto [key, spec] : {std::pair<const char*, MethodSpec*>{"train", &b.train}, {"predict", &b.predict}}) {
    const json& method = r.field(methods, key, json::value_t::object, "methods");
    std::string at = std::string("methods/") + key;
    spec->name = r.string(method, "name", at);
    spec->inputs = r.strings(method, "inputs", at);
    spec->outputs = r.strings(method, "outputs", at);
  }
  const json& memory = r.field(m, "memory", json::value_t::object, "");
  b.predicted_peak_bytes = r.integer(memory, "predicted_peak_bytes", "memory", 0);
  r.field(m, "model", json::value_t::object, "");
  r.field(m, "techniques", json::value_t::array, "");
  const json& options = r.field(m, "backend_options", json::value_t::object, "");

  check_consistency(b, files, training, memory, declared_numel, manifest_path);
  for (auto it = files.begin(); it != files.end(); ++it) {
    verify_file(b.directory, it.key(), it.value()["path"].get<std::string>(), it.value()["sha256"].get<std::string>(),
                it.value()["bytes"].get<int64_t>());
  }
  b.manifest_sha256 = sha256_hex(b.manifest_text.data(), b.manifest_text.size());

  if (b.backend != "executorch") {
    fail(MW_ERR_UNSUPPORTED, "bundle " + b.name + " is for " + b.backend +
                                 ", and this native runtime runs ExecuTorch bundles only: export it with --backend executorch");
  }
  b.program_path = b.directory + "/" + files["program"]["path"].get<std::string>();
  b.optimizer_runs_in_program = options.value("optimizer_runs_in", "app") == "program";
  // Bundles exported before backend_options.runtime: portable kernels, one thread, no delegates.
  if (options.contains("runtime")) {
    const json& runtime = r.field(options, "runtime", json::value_t::object, "backend_options");
    if (runtime.contains("backends")) b.runtime_backends = r.strings(runtime, "backends", "backend_options/runtime");
    if (runtime.contains("operators")) b.runtime_operators = r.strings(runtime, "operators", "backend_options/runtime");
    if (runtime.contains("threads")) {
      const json& threads = runtime["threads"];
      if (threads.is_number_integer()) {
        b.runtime_threads = int32_t(std::max<int64_t>(1, threads.get<int64_t>()));
      } else if (threads == "performance_cores") {
        b.runtime_threads = 0;
      } else {
        invalid(manifest_path, "backend_options/runtime/threads", threads.dump() + " is neither a count nor 'performance_cores'");
      }
    }
  }
  return b;
}

}  // namespace memwall
