#include "safetensors_checkpoint.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "failure.h"

namespace memwall {
namespace {

using nlohmann::json;

std::string quoted(const std::string& text) { return json(text).dump(-1, ' ', true); }  // as Python's json.dumps

[[noreturn]] void io_failure(const std::string& what, const std::string& path) {
  fail(MW_ERR_IO, "cannot " + what + " " + path + " (" + std::strerror(errno) + "); check the directory exists and is writable");
}

void write_all(int fd, const void* data, size_t size, const std::string& path) {
  const char* bytes = static_cast<const char*>(data);
  while (size > 0) {
    ssize_t n = ::write(fd, bytes, size);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) io_failure("write", path);
    bytes += n;
    size -= size_t(n);
  }
}

std::string directory_of(const std::string& path) {
  size_t slash = path.rfind('/');
  return slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
}

[[noreturn]] void corrupt(const std::string& path, const std::string& why) {
  fail(MW_ERR_CHECKPOINT, "checkpoint " + path + " is corrupt (" + why + "); delete it and train again");
}

}  // namespace

void save_checkpoint(const std::string& path, const std::vector<StateView>& tensors, int64_t steps, int64_t data_position,
                     const std::string& manifest_sha256) {
  std::vector<const StateView*> sorted;
  for (const StateView& t : tensors) sorted.push_back(&t);
  std::sort(sorted.begin(), sorted.end(), [](const StateView* a, const StateView* b) { return a->name < b->name; });
  // The header byte for byte as checkpoint.py's json.dumps(separators=(",", ":")) writes it.
  std::string header = "{\"__metadata__\":{\"format\":\"memwall.checkpoint\",\"version\":\"1\",\"steps\":" + quoted(std::to_string(steps)) +
                       ",\"data_position\":" + quoted(std::to_string(data_position)) + ",\"manifest_sha256\":" + quoted(manifest_sha256) + "}";
  size_t offset = 0;
  for (const StateView* t : sorted) {
    std::string shape;
    for (size_t i = 0; i < t->shape.size(); ++i) shape += (i ? "," : "") + std::to_string(t->shape[i]);
    header += "," + quoted(t->name) + ":{\"dtype\":\"" + (t->dtype == MW_INT64 ? "I64" : "F32") + "\",\"shape\":[" + shape +
              "],\"data_offsets\":[" + std::to_string(offset) + "," + std::to_string(offset + t->nbytes) + "]}";
    offset += t->nbytes;
  }
  header += "}";
  header.append((8 - header.size() % 8) % 8, ' ');  // the format aligns the data section to 8 bytes

  std::string directory = directory_of(path);
  std::string base = path.substr(path.rfind('/') == std::string::npos ? 0 : path.rfind('/') + 1);
  std::string temp = directory + "/." + base + ".XXXXXX";
  std::vector<char> name(temp.begin(), temp.end());
  name.push_back('\0');
  int fd = ::mkstemp(name.data());
  if (fd < 0) io_failure("create a temporary file next to", path);
  temp = name.data();
  try {
    uint64_t length = header.size();
    uint8_t prefix[8];
    for (int i = 0; i < 8; ++i) prefix[i] = uint8_t(length >> (8 * i));
    write_all(fd, prefix, 8, temp);
    write_all(fd, header.data(), header.size(), temp);
    for (const StateView* t : sorted) write_all(fd, t->data, t->nbytes, temp);
    if (::fchmod(fd, 0644) != 0 || ::fsync(fd) != 0) io_failure("sync", temp);
    if (::close(fd) != 0) {
      fd = -1;
      io_failure("close", temp);
    }
    fd = -1;
    if (::rename(temp.c_str(), path.c_str()) != 0) io_failure("rename the new checkpoint over", path);
  } catch (...) {
    if (fd >= 0) ::close(fd);
    ::unlink(temp.c_str());
    throw;
  }
  int dir = ::open(directory.c_str(), O_RDONLY);
  if (dir >= 0) {
    ::fsync(dir);
    ::close(dir);
  }
}

LoadedCheckpoint read_checkpoint(const std::string& path, const std::string& manifest_sha256);

LoadedCheckpoint load_checkpoint(const std::string& path, const std::string& manifest_sha256) {
  try {
    return read_checkpoint(path, manifest_sha256);
  } catch (const json::exception& exc) {
    corrupt(path, exc.what());  // a header value of an unexpected type
  }
}

LoadedCheckpoint read_checkpoint(const std::string& path, const std::string& manifest_sha256) {
  struct stat info {};
  if (::stat(path.c_str(), &info) != 0 || !S_ISREG(info.st_mode)) {
    fail(MW_ERR_CHECKPOINT, "no checkpoint at " + path + "; train without --resume first");
  }
  LoadedCheckpoint ckpt;
  {
    std::ifstream in(path, std::ios::binary);
    ckpt.bytes.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    if (in.bad()) fail(MW_ERR_IO, "cannot read " + path);
  }
  const std::vector<uint8_t>& bytes = ckpt.bytes;
  if (bytes.size() < 8) corrupt(path, "shorter than its header length");
  uint64_t length = 0;
  for (int i = 7; i >= 0; --i) length = (length << 8) | bytes[size_t(i)];
  if (length > bytes.size() - 8) corrupt(path, "header length past the end of the file");
  json header;
  try {
    header = json::parse(bytes.begin() + 8, bytes.begin() + 8 + long(length));
  } catch (const json::exception& exc) {
    corrupt(path, std::string("header is not JSON: ") + exc.what());
  }
  if (!header.is_object()) corrupt(path, "header is not an object");
  json metadata = header.value("__metadata__", json::object());
  if (!metadata.is_object() || metadata.value("format", "") != "memwall.checkpoint") {
    fail(MW_ERR_CHECKPOINT, path + " is not a memwall checkpoint");
  }
  std::string saved_for = metadata.value("manifest_sha256", "?");
  if (saved_for != manifest_sha256) {
    fail(MW_ERR_CHECKPOINT, "checkpoint " + path + " was saved for another bundle (manifest " + saved_for.substr(0, 12) +
                                "..., this bundle is " + manifest_sha256.substr(0, 12) + "...); pass the right --checkpoint or start fresh");
  }
  try {
    ckpt.steps = std::stoll(metadata.value("steps", ""));
    ckpt.data_position = std::stoll(metadata.value("data_position", ""));
  } catch (const std::exception&) {
    corrupt(path, "steps or data_position is not a number");
  }
  size_t data_start = 8 + size_t(length), data_size = bytes.size() - data_start;
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") continue;
    const json& entry = it.value();
    if (!entry.is_object() || !entry.contains("dtype") || !entry.contains("shape") || !entry.contains("data_offsets")) {
      corrupt(path, "tensor " + it.key() + " lacks dtype, shape or data_offsets");
    }
    StateView view;
    view.name = it.key();
    std::string dtype = entry["dtype"].is_string() ? entry["dtype"].get<std::string>() : "";
    if (dtype != "F32" && dtype != "I64") corrupt(path, "tensor " + it.key() + " has dtype " + entry["dtype"].dump() + ", not F32 or I64");
    view.dtype = dtype == "I64" ? MW_INT64 : MW_FLOAT32;
    int64_t numel = 1;
    for (const json& d : entry["shape"]) {
      if (!d.is_number_integer() || d.get<int64_t>() < 0) corrupt(path, "tensor " + it.key() + " has a bad shape");
      view.shape.push_back(d.get<int64_t>());
      numel *= view.shape.back();
    }
    const json& offsets = entry["data_offsets"];
    if (!offsets.is_array() || offsets.size() != 2 || !offsets[0].is_number_unsigned() || !offsets[1].is_number_unsigned()) {
      corrupt(path, "tensor " + it.key() + " has bad data_offsets");
    }
    uint64_t begin = offsets[0].get<uint64_t>(), end = offsets[1].get<uint64_t>();
    if (begin > end || end > data_size || end - begin != uint64_t(numel) * (view.dtype == MW_INT64 ? 8u : 4u)) {
      corrupt(path, "tensor " + it.key() + " has data_offsets outside the file or not matching its shape");
    }
    view.data = ckpt.bytes.data() + data_start + begin;
    view.nbytes = size_t(end - begin);
    ckpt.tensors.emplace(view.name, view);
  }
  return ckpt;
}

}  // namespace memwall
