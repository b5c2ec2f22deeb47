// SHA-256 (FIPS 180-4) of files and buffers: bundle files are verified against the manifest's hashes and a
// checkpoint records the sha256 of its bundle's manifest.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace memwall {

class Sha256 {
 public:
  Sha256();
  void update(const void* data, size_t size);
  std::string hex_digest();  // finishes the hash

 private:
  void block(const uint8_t* chunk);
  uint32_t state_[8];
  uint8_t buffer_[64];
  size_t buffered_ = 0;
  uint64_t total_ = 0;
};

std::string sha256_hex(const void* data, size_t size);
// Streams the file in 1 MiB reads; throws Failure(MW_ERR_IO) when it cannot be read.
std::string sha256_file(const std::string& path);

}  // namespace memwall
