// Reads and verifies a bundle directory as exporters/bundle.py load_bundle does: the manifest is JSON of a
// supported schema_version with the fields this runtime reads, and every file listed has the manifest's size and
// sha256. Each refusal is one line naming the problem and the fix (the Python loader's wording).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "memwall.h"

namespace memwall {

struct TensorSpec {
  std::string name;
  mw_dtype dtype = MW_FLOAT32;
  std::vector<int64_t> shape;
  int64_t numel = 1;
  size_t nbytes() const { return size_t(numel) * (dtype == MW_INT64 ? 8 : 4); }
};

struct OptimizerConfig {
  std::string kind;  // "sgd" | "adamw"
  double lr = 0, momentum = 0, dampening = 0, weight_decay = 0, beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  bool nesterov = false;
};

struct MethodSpec {
  std::string name;
  std::vector<std::string> inputs, outputs;
};

struct Bundle {
  std::string directory;
  std::string manifest_text;  // the bytes of manifest.json
  std::string manifest_sha256;
  std::string name, backend, loss;
  std::vector<TensorSpec> inputs;
  TensorSpec labels;
  std::vector<std::string> classes;
  std::vector<TensorSpec> trainable;
  OptimizerConfig optimizer;
  int32_t micro_batches = 1;
  int64_t batch_size = 1;  // training.batch_size, as reports give it
  MethodSpec train, predict;
  std::string program_path;                // absolute or relative to the cwd: directory + files.program.path
  bool optimizer_runs_in_program = false;  // fused-update bundle
  std::vector<std::string> runtime_backends;
  std::vector<std::string> runtime_operators;
  int32_t runtime_threads = 1;  // 0: every core this process may use ("performance_cores")
  int64_t predicted_peak_bytes = 0;
};

// Throws Failure(MW_ERR_BUNDLE) for a bundle the Python loader refuses, MW_ERR_UNSUPPORTED for one this runtime
// cannot run (an ONNX Runtime bundle).
Bundle read_bundle(const std::string& directory);

// The manifest spellings of mw_dtype.
const char* dtype_name(mw_dtype dtype);

}  // namespace memwall
