// A bundle's program loaded into ExecuTorch's plain runtime: the .pte memory-mapped (MmapDataLoader), each method
// with its own planned buffers sized from its method metadata (one set per method: methods sharing planned memory
// overwrote each other's weights in 1.5.1, measured through the Python Module), the backends and thread pool that
// backend_options.runtime asks for checked and set up before the first program loads.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "bundle_reader.h"

namespace memwall {

class Method;  // one loaded method (executorch_session.cpp)

struct OutputTensor {
  void* data;
  size_t nbytes;
  mw_dtype dtype;
  std::vector<int64_t> shape;
};

class ExecuTorchSession {
 public:
  // threads: the pool's size; 0 = the manifest's hint. Throws Failure.
  ExecuTorchSession(const Bundle& bundle, int32_t threads);
  ~ExecuTorchSession();
  ExecuTorchSession(const ExecuTorchSession&) = delete;
  ExecuTorchSession& operator=(const ExecuTorchSession&) = delete;

  // Copies `data` (nbytes of the input's size) into the method's input `index`.
  void set_input(bool train, size_t index, const void* data, size_t nbytes);
  size_t input_count(bool train) const;
  void execute(bool train);
  size_t output_count(bool train) const;
  OutputTensor output(bool train, size_t index) const;  // aliases the runtime's memory
  // A metadata method of the program (ExecuTorch's __et_training_* methods): its outputs as ints / strings.
  std::vector<int64_t> int_outputs(const std::string& method);
  std::vector<std::string> string_outputs(const std::string& method);
  bool has_method(const std::string& method) const;
  int32_t threads() const { return threads_; }

 private:
  Method& method(bool train) const { return train ? *train_ : *predict_; }
  struct Program;
  std::unique_ptr<Program> program_;
  std::unique_ptr<Method> train_, predict_;
  int32_t threads_ = 1;
};

}  // namespace memwall
