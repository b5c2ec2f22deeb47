#include "npz_data.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <map>

#include "failure.h"

namespace memwall {
namespace {

struct Array {
  char kind = 'f';  // numpy kind: f (float), i (signed), u (unsigned), b (bool)
  size_t item = 4;
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;
  // NumPy's name of the dtype, for messages: float32, int64, uint8, bool...
  std::string dtype_name() const {
    if (is_bool) return "bool";
    return std::string(kind == 'f' ? "float" : kind == 'i' ? "int" : "uint") + std::to_string(item * 8);
  }
  bool is_bool = false;
  bool integral() const { return kind != 'f'; }
  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
  double at(int64_t i) const {
    const uint8_t* p = data + size_t(i) * item;
    switch (kind) {
      case 'f': {
        if (item == 8) {
          double v;
          std::memcpy(&v, p, 8);
          return v;
        }
        float v;
        std::memcpy(&v, p, 4);
        return double(v);
      }
      case 'i': {
        int64_t v = 0;
        if (item == 8) std::memcpy(&v, p, 8);
        if (item == 4) { int32_t w; std::memcpy(&w, p, 4); v = w; }
        if (item == 2) { int16_t w; std::memcpy(&w, p, 2); v = w; }
        if (item == 1) { int8_t w; std::memcpy(&w, p, 1); v = w; }
        return double(v);
      }
      default: {
        uint64_t v = 0;
        std::memcpy(&v, p, item);
        return double(v);
      }
    }
  }
  int64_t integer_at(int64_t i) const {
    if (kind == 'i' && item == 8) {
      int64_t v;
      std::memcpy(&v, data + size_t(i) * 8, 8);
      return v;
    }
    return int64_t(at(i));
  }
};

uint64_t le(const uint8_t* p, int bytes) {
  uint64_t v = 0;
  for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

class NpzReader {
 public:
  NpzReader(const std::string& path) : path_(path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) fail(MW_ERR_DATA, "data file " + path + " does not exist or cannot be read");
    bytes_.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    parse();
  }
  const std::map<std::string, Array>& arrays() const { return arrays_; }

 private:
  [[noreturn]] void bad(const std::string& why) const {
    fail(MW_ERR_DATA, "data file " + path_ + " is not a NumPy .npz this runner reads (" + why + "); write it with numpy.savez(path, x=..., y=...)");
  }
  void need(uint64_t offset, uint64_t size) const {
    if (offset > bytes_.size() || size > bytes_.size() - offset) bad("truncated");
  }

  void parse() {
    size_t n = bytes_.size();
    if (n < 22) bad("too short for a zip file");
    size_t eocd = n - 22;
    while (true) {
      if (le(&bytes_[eocd], 4) == 0x06054b50) break;
      if (eocd == 0 || n - eocd > 22 + 65535) bad("no zip end-of-directory record");
      --eocd;
    }
    uint64_t entries = le(&bytes_[eocd + 10], 2), cd_offset = le(&bytes_[eocd + 16], 4);
    if ((entries == 0xffff || cd_offset == 0xffffffff) && eocd >= 20 && le(&bytes_[eocd - 20], 4) == 0x07064b50) {
      uint64_t z64 = le(&bytes_[eocd - 20 + 8], 8);
      need(z64, 56);
      if (le(&bytes_[z64], 4) != 0x06064b50) bad("bad zip64 end record");
      entries = le(&bytes_[z64 + 32], 8);
      cd_offset = le(&bytes_[z64 + 48], 8);
    }
    uint64_t at = cd_offset;
    for (uint64_t e = 0; e < entries; ++e) {
      need(at, 46);
      const uint8_t* h = &bytes_[at];
      if (le(h, 4) != 0x02014b50) bad("bad central directory entry");
      uint64_t method = le(h + 10, 2), compressed = le(h + 20, 4), size = le(h + 24, 4);
      uint64_t name_len = le(h + 28, 2), extra_len = le(h + 30, 2), comment_len = le(h + 32, 2), local = le(h + 42, 4);
      need(at + 46, name_len + extra_len);
      std::string name(reinterpret_cast<const char*>(h + 46), name_len);
      const uint8_t* extra = h + 46 + name_len;
      for (uint64_t x = 0; x + 4 <= extra_len;) {
        uint64_t id = le(extra + x, 2), len = le(extra + x + 2, 2);
        if (id == 0x0001) {
          uint64_t field = x + 4;
          if (size == 0xffffffff && field + 8 <= x + 4 + len) { size = le(extra + field, 8); field += 8; }
          if (compressed == 0xffffffff && field + 8 <= x + 4 + len) { compressed = le(extra + field, 8); field += 8; }
          if (local == 0xffffffff && field + 8 <= x + 4 + len) local = le(extra + field, 8);
        }
        x += 4 + len;
      }
      if (method != 0) bad("array " + name + " is compressed (numpy.savez_compressed); save it with numpy.savez");
      need(local, 30);
      uint64_t data = local + 30 + le(&bytes_[local + 26], 2) + le(&bytes_[local + 28], 2);
      need(data, size);
      if (name.size() > 4 && name.compare(name.size() - 4, 4, ".npy") == 0) name.resize(name.size() - 4);
      arrays_[name] = npy(name, &bytes_[data], size);
      at += 46 + name_len + extra_len + comment_len;
    }
  }

  Array npy(const std::string& name, const uint8_t* p, uint64_t size) const {
    if (size < 10 || std::memcmp(p, "\x93NUMPY", 6) != 0) bad("array " + name + " is not .npy");
    int major = p[6];
    uint64_t header_len = major == 1 ? le(p + 8, 2) : le(p + 8, 4);
    uint64_t start = major == 1 ? 10 : 12;
    if (start + header_len > size) bad("array " + name + " has a truncated header");
    std::string header(reinterpret_cast<const char*>(p + start), header_len);
    Array a;
    auto value_of = [&](const std::string& key) {
      size_t k = header.find("'" + key + "'");
      if (k == std::string::npos) bad("array " + name + " header lacks " + key);
      size_t colon = header.find(':', k);
      return header.substr(colon + 1);
    };
    std::string descr = value_of("descr");
    size_t q1 = descr.find('\''), q2 = descr.find('\'', q1 + 1);
    descr = descr.substr(q1 + 1, q2 - q1 - 1);
    if (descr.size() < 3 || (descr[0] != '<' && descr[0] != '|') || std::string("fiub").find(descr[1]) == std::string::npos) {
      bad("array " + name + " has dtype " + descr + "; use little-endian numbers");
    }
    a.kind = descr[1] == 'b' ? 'u' : descr[1];
    a.is_bool = descr[1] == 'b';
    a.item = size_t(std::stoul(descr.substr(2)));
    if ((a.kind == 'f' && a.item != 4 && a.item != 8) || a.item == 0 || a.item > 8) bad("array " + name + " has dtype " + descr);
    if (value_of("fortran_order").find("True") < value_of("fortran_order").find(',')) bad("array " + name + " is Fortran-ordered; save a C-ordered array");
    std::string shape = value_of("shape");
    shape = shape.substr(shape.find('(') + 1, shape.find(')') - shape.find('(') - 1);
    size_t pos = 0;
    while (pos < shape.size()) {
      size_t comma = shape.find(',', pos);
      std::string dim = shape.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
      if (dim.find_first_of("0123456789") != std::string::npos) a.shape.push_back(std::stoll(dim));
      if (comma == std::string::npos) break;
      pos = comma + 1;
    }
    a.data = p + start + header_len;
    if (uint64_t(a.numel()) * a.item > size - start - header_len) bad("array " + name + " is truncated");
    return a;
  }

  std::string path_;
  std::vector<uint8_t> bytes_;
  std::map<std::string, Array> arrays_;
};

std::string shape_text(const std::vector<int64_t>& shape, size_t from) {
  std::string out = "(";
  for (size_t i = from; i < shape.size(); ++i) out += (i > from ? ", " : "") + std::to_string(shape[i]);
  if (shape.size() == from + 1) out += ",";
  return out + ")";
}

void convert(const Array& a, int64_t count, mw_dtype dtype, uint8_t* out) {
  for (int64_t i = 0; i < count; ++i) {
    if (dtype == MW_INT64) {
      int64_t v = a.integer_at(i);
      std::memcpy(out + size_t(i) * 8, &v, 8);
    } else {
      float v = float(a.at(i));
      std::memcpy(out + size_t(i) * 4, &v, 4);
    }
  }
}

}  // namespace

Dataset::Dataset(const std::string& path, const Bundle& bundle) {
  NpzReader npz(path);
  const auto& arrays = npz.arrays();
  auto find = [&](const std::string& name) -> const Array* {
    auto it = arrays.find(name);
    return it == arrays.end() ? nullptr : &it->second;
  };
  batch_ = bundle.inputs[0].shape.empty() ? 1 : bundle.inputs[0].shape[0];
  const bool single = bundle.inputs.size() == 1;
  std::string names;
  for (const TensorSpec& spec : bundle.inputs) names += (names.empty() ? "'" : ", '") + spec.name + "'";
  // Every array is an input or the labels: a misspelt name would otherwise leave an input unfed.
  for (const auto& [name, array] : arrays) {
    bool known = name == "y" || (single && name == "x") ||
                 std::any_of(bundle.inputs.begin(), bundle.inputs.end(), [&](const TensorSpec& s) { return s.name == name; });
    if (!known) {
      fail(MW_ERR_DATA, path + " holds array '" + name + "', which is neither an input of the bundle (" + names + (single ? " or 'x'" : "") +
                            ") nor the labels 'y'; name each array as the manifest's inputs name it");
    }
  }
  samples_ = -1;
  std::string first_input;
  for (const TensorSpec& spec : bundle.inputs) {
    const Array* a = find(spec.name);
    if (a == nullptr && single) a = find("x");
    if (a == nullptr) fail(MW_ERR_DATA, path + " must hold an array named '" + spec.name + "'" + (single ? " or 'x'" : "") + " for input " + spec.name);
    std::string input = "input '" + spec.name + "'";
    if (spec.dtype == MW_INT64 && !a->integral()) {
      fail(MW_ERR_DATA, path + ": array '" + spec.name + "' is " + a->dtype_name() + ", " + input + " is int64: write integers (token ids, indices) as numpy int64");
    }
    std::vector<int64_t> sample(spec.shape.begin() + 1, spec.shape.end());
    std::vector<int64_t> got(a->shape.empty() ? a->shape.begin() : a->shape.begin() + 1, a->shape.end());
    if (a->shape.empty() || got != sample) {
      fail(MW_ERR_DATA, path + ": " + input + ": samples have shape " + shape_text(a->shape, 1) + ", the bundle expects " + shape_text(spec.shape, 1));
    }
    if (samples_ >= 0 && a->shape[0] != samples_) {
      fail(MW_ERR_DATA, path + ": " + input + " holds " + std::to_string(a->shape[0]) + " samples, " + first_input + " " + std::to_string(samples_) +
                            ": every input needs one row per sample");
    }
    samples_ = a->shape[0];
    first_input = input;
    size_t sample_bytes = spec.nbytes() / size_t(batch_);
    input_sample_bytes_.push_back(sample_bytes);
    inputs_.emplace_back(size_t(samples_) * sample_bytes);
    convert(*a, a->numel(), spec.dtype, inputs_.back().data());
    if (spec.dtype == MW_FLOAT32) {
      const float* values = reinterpret_cast<const float*>(inputs_.back().data());
      if (!std::all_of(values, values + a->numel(), [](float v) { return std::isfinite(v); })) {
        fail(MW_ERR_DATA, path + ": " + input + " holds NaN or infinity (or values beyond float32); clean the data");
      }
    }
  }
  const Array* y = find("y");
  if (y == nullptr) fail(MW_ERR_DATA, path + " must hold the labels as an array named 'y' (found no 'y')");
  if (y->shape.empty() || y->shape[0] != samples_) fail(MW_ERR_DATA, path + ": 'y' has another sample count than the inputs");
  if (samples_ < batch_) {
    fail(MW_ERR_DATA, "dataset has " + std::to_string(samples_) + " samples, fewer than one batch of " + std::to_string(batch_));
  }
  const TensorSpec& labels = bundle.labels;
  label_sample_bytes_ = labels.nbytes() / size_t(batch_);
  labels_.resize(size_t(samples_) * label_sample_bytes_);
  bool one_hot = labels.dtype == MW_FLOAT32 && labels.shape.size() == 2 && y->shape.size() == 1;
  if (y->shape.size() == 1) {
    if (!y->integral()) fail(MW_ERR_DATA, path + ": 'y' is " + y->dtype_name() + "; labels are class indices: write them as numpy int64");
    for (int64_t i = 0; i < samples_; ++i) classes_.push_back(y->integer_at(i));
    auto [low, high] = std::minmax_element(classes_.begin(), classes_.end());
    int64_t count = int64_t(bundle.classes.size());
    if (!classes_.empty() && (*low < 0 || *high >= count)) {
      fail(MW_ERR_DATA, path + ": labels span [" + std::to_string(*low) + ", " + std::to_string(*high) + "], the bundle has classes 0.." +
                            std::to_string(count - 1));
    }
  }
  if (one_hot) {
    int64_t classes = labels.shape[1];
    for (int64_t i = 0; i < samples_; ++i) {
      int64_t c = classes_[size_t(i)];
      if (c < 0 || c >= classes) fail(MW_ERR_DATA, path + ": label " + std::to_string(c) + " is not a class index below " + std::to_string(classes));
      float one = 1.0f;
      std::memcpy(labels_.data() + size_t(i) * label_sample_bytes_ + size_t(c) * 4, &one, 4);
    }
  } else {
    if (uint64_t(y->numel()) * (labels.dtype == MW_INT64 ? 8u : 4u) != labels_.size()) {
      fail(MW_ERR_DATA, path + ": 'y' has shape " + shape_text(y->shape, 0) + ", the bundle's labels are " + shape_text(labels.shape, 0) + " per batch");
    }
    convert(*y, y->numel(), labels.dtype, labels_.data());
  }
}

int64_t Dataset::eval_batch(int64_t first, std::vector<std::vector<uint8_t>>* storage, std::vector<const void*>* inputs) const {
  int64_t real = std::min(batch_, samples_ - first);
  storage->assign(inputs_.size(), {});
  inputs->clear();
  for (size_t i = 0; i < inputs_.size(); ++i) {
    std::vector<uint8_t>& out = (*storage)[i];
    size_t sample = input_sample_bytes_[i];
    out.resize(size_t(batch_) * sample);
    std::memcpy(out.data(), inputs_[i].data() + size_t(first) * sample, size_t(real) * sample);
    for (int64_t k = real; k < batch_; ++k) std::memcpy(out.data() + size_t(k) * sample, out.data(), sample);
    inputs->push_back(out.data());
  }
  return real;
}

Batch Dataset::batch(int64_t position) const {
  int64_t per_epoch = samples_ / batch_;
  int64_t first = (position % per_epoch) * batch_;
  Batch b;
  for (size_t i = 0; i < inputs_.size(); ++i) b.inputs.push_back(inputs_[i].data() + size_t(first) * input_sample_bytes_[i]);
  b.labels = labels_.data() + size_t(first) * label_sample_bytes_;
  return b;
}

}  // namespace memwall
