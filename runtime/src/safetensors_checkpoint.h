// Training checkpoints in safetensors, as sdk_tools/runner/checkpoint.py writes and reads them, so a checkpoint
// moves between the native and the Python runner in both directions: tensors sorted by name (parameters by their
// runtime name, optimizer state as optimizer/<kind>/<parameter>), metadata format=memwall.checkpoint, version=1,
// steps, data_position and manifest_sha256 (refused for another bundle). The write is atomic: a temporary file in
// the same directory, fsync, rename over the old file, fsync of the directory — a crash leaves the old checkpoint.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "training_step.h"

namespace memwall {

struct LoadedCheckpoint {
  int64_t steps = 0;
  int64_t data_position = 0;
  std::vector<uint8_t> bytes;             // the whole file; the views point into it
  std::map<std::string, StateView> tensors;
};

void save_checkpoint(const std::string& path, const std::vector<StateView>& tensors, int64_t steps, int64_t data_position,
                     const std::string& manifest_sha256);
LoadedCheckpoint load_checkpoint(const std::string& path, const std::string& manifest_sha256);

}  // namespace memwall
