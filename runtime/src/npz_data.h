// The data file memwall-run reads: a NumPy .npz (np.savez, uncompressed), as the Python runner's --data reads it
// (sdk_tools/data/loading.py): an array per manifest input, named as the input (or "x" for a bundle's single
// input), sample shape = the input's shape without the batch dimension, one row per sample in every array; a
// float32 input takes any float, integer or bool array (converted; NaN and infinity refused), an int64 input
// (token ids, indices) integer or bool arrays only; labels "y" as integer class indices within the manifest's
// classes (one-hot encoded where the bundle's labels are float like its logits, as exporters.losses.encode_labels
// does). Any other array is refused (a misspelt input name). Batches are taken in file order, batch k = samples
// [k*B, (k+1)*B) of epoch k // (N // B): shuffle when writing the file. A checkpoint's data_position counts the
// batches consumed, so --resume continues the same stream.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "bundle_reader.h"
#include "training_step.h"

namespace memwall {

class Dataset {
 public:
  // Throws Failure(MW_ERR_DATA) naming the problem and the fix.
  Dataset(const std::string& path, const Bundle& bundle);
  // Micro-batch number `position` of the endless stream (pointers valid while the dataset lives).
  Batch batch(int64_t position) const;
  int64_t samples() const { return samples_; }
  // Class index of sample i (for accuracy; needs labels given as class indices).
  int64_t label_of(int64_t sample) const { return classes_.at(size_t(sample)); }
  bool has_class_labels() const { return !classes_.empty(); }
  // The inputs of samples [first, first + B), the last batch padded with its first sample (as
  // sdk_tools/data/loading.py eval_batches does): copies in `storage`; returns how many samples are real.
  int64_t eval_batch(int64_t first, std::vector<std::vector<uint8_t>>* storage, std::vector<const void*>* inputs) const;

 private:
  std::vector<std::vector<uint8_t>> inputs_;  // per manifest input, every sample converted to its dtype
  std::vector<uint8_t> labels_;               // every sample encoded as the bundle's labels
  std::vector<int64_t> classes_;
  std::vector<size_t> input_sample_bytes_;
  size_t label_sample_bytes_ = 0;
  int64_t samples_ = 0, batch_ = 1;
};

}  // namespace memwall
