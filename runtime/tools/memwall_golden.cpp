// Runs the native optimizers and micro-batch accumulation on the golden vectors of tests/golden
// (python -m sdk_tools.conformance) and prints what they computed as JSON, for tests/test_runtime.py to compare.
// With a checkpoint: reads the Python runner's checkpoint.safetensors (printing its tensors and progress) and
// writes the same tensors and metadata back to OUT with the native writer.
//
//   memwall-golden optimizer.json accumulation.json [checkpoint.safetensors manifest_sha256 OUT]
#include <cstdio>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "optimizers.h"
#include "safetensors_checkpoint.h"

using nlohmann::json;

namespace {

json read(const char* path) {
  std::ifstream in(path);
  return json::parse(in);
}

memwall::OptimizerConfig config_of(const json& o) {
  memwall::OptimizerConfig c;
  c.kind = o["kind"];
  c.lr = o["lr"];
  c.momentum = o["momentum"];
  c.dampening = o["dampening"];
  c.weight_decay = o["weight_decay"];
  c.nesterov = o["nesterov"];
  c.beta1 = o["betas"][0];
  c.beta2 = o["betas"][1];
  c.eps = o["eps"];
  return c;
}

// Parameters in the golden file's order, as float32 copies the optimizer updates in place.
struct Params {
  std::vector<std::string> names;
  std::vector<std::vector<float>> values;
  explicit Params(const json& params) {
    for (auto it = params.begin(); it != params.end(); ++it) {
      names.push_back(it.key());
      values.push_back(it.value()["values"].get<std::vector<float>>());
    }
  }
  std::vector<memwall::ParameterView> views() {
    std::vector<memwall::ParameterView> out;
    for (size_t i = 0; i < names.size(); ++i) out.push_back({names[i], values[i].data(), values[i].size()});
    return out;
  }
  json dump() const {
    json out;
    for (size_t i = 0; i < names.size(); ++i) out[names[i]] = values[i];
    return out;
  }
};

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3 && argc != 6) {
    std::fprintf(stderr, "usage: memwall-golden optimizer.json accumulation.json [checkpoint.safetensors manifest_sha256 OUT]\n");
    return 2;
  }
  json result;
  const json golden = read(argv[1]);
  for (const json& c : golden["cases"]) {
    Params params(c["params"]);
    memwall::Optimizer optimizer(config_of(c["optimizer"]), params.views());
    json steps = json::array();
    for (const json& step : c["steps"]) {
      std::vector<std::vector<float>> grads;
      std::vector<const float*> pointers;
      for (const std::string& name : params.names) grads.push_back(step["grads"][name]["values"].get<std::vector<float>>());
      for (const auto& g : grads) pointers.push_back(g.data());
      optimizer.step(pointers);
      json state;
      for (const memwall::StateTensor& s : optimizer.state) state[s.name] = s.values;
      steps.push_back({{"params", params.dump()}, {"state", state}});
    }
    result["optimizer"][c["name"].get<std::string>()] = steps;
  }
  json acc = read(argv[2]);
  Params params(acc["params"]);
  std::vector<size_t> numels;
  for (const auto& v : params.values) numels.push_back(v.size());
  memwall::GradientAccumulator accumulator(numels);
  double loss = 0;
  size_t calls = acc["calls"].size();
  for (size_t call = 0; call < calls; ++call) {
    loss += acc["calls"][call]["loss"].get<double>();
    for (size_t i = 0; i < params.names.size(); ++i) {
      std::vector<float> g = acc["calls"][call]["grads"][params.names[i]]["values"].get<std::vector<float>>();
      accumulator.add(call, i, g.data());
    }
  }
  accumulator.finish(calls);
  json accumulated;
  std::vector<const float*> pointers;
  for (size_t i = 0; i < params.names.size(); ++i) {
    accumulated[params.names[i]] = std::vector<float>(accumulator.sum(i), accumulator.sum(i) + numels[i]);
    pointers.push_back(accumulator.sum(i));
  }
  memwall::Optimizer optimizer(config_of(acc["optimizer"]), params.views());
  optimizer.step(pointers);
  result["accumulation"] = {{"accumulated_grads", accumulated}, {"loss", loss / double(calls)}, {"params_after", params.dump()}};
  if (argc == 6) {
    memwall::LoadedCheckpoint ckpt = memwall::load_checkpoint(argv[3], argv[4]);
    json tensors;
    std::vector<memwall::StateView> views;
    for (const auto& [name, view] : ckpt.tensors) {
      const float* values = static_cast<const float*>(view.data);
      std::vector<float> copy(view.nbytes / sizeof(float));
      std::memcpy(copy.data(), values, view.nbytes);
      tensors[name] = {{"shape", view.shape}, {"values", copy}};
      views.push_back(view);
    }
    memwall::save_checkpoint(argv[5], views, ckpt.steps, ckpt.data_position, argv[4]);
    result["checkpoint"] = {{"steps", ckpt.steps}, {"data_position", ckpt.data_position}, {"tensors", tensors}};
  }
  std::printf("%s\n", result.dump().c_str());
  return 0;
}
