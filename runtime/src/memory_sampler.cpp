#include "memory_sampler.h"

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>

#include "failure.h"

#if defined(__APPLE__)
#include <mach/mach.h>
#endif

namespace memwall {
namespace {

// The current value at the last reset: a platform without a resettable peak reports peaks from here on.
std::atomic<int64_t> reset_floor{0};

}  // namespace

#if defined(__APPLE__)
MemorySample sample_memory() {
  task_vm_info_data_t info{};
  mach_msg_type_number_t count = TASK_VM_INFO_COUNT;
  if (task_info(mach_task_self(), TASK_VM_INFO, reinterpret_cast<task_info_t>(&info), &count) != KERN_SUCCESS) {
    fail(MW_ERR_IO, "task_info(TASK_VM_INFO) failed: no memory figure on this device");
  }
  MemorySample s;
  s.current_bytes = int64_t(info.phys_footprint);
  // ledger_phys_footprint_peak is the lifetime peak; after a reset only the current value is known.
  int64_t peak = int64_t(info.ledger_phys_footprint_peak);
  s.peak_bytes = reset_floor.load() > 0 ? std::max(s.current_bytes, reset_floor.load()) : std::max(peak, s.current_bytes);
  return s;
}

void reset_memory_peak() { reset_floor.store(sample_memory().current_bytes); }
#else
MemorySample sample_memory() {
  FILE* status = std::fopen("/proc/self/status", "r");
  if (status == nullptr) fail(MW_ERR_IO, "cannot read /proc/self/status: no memory figure on this system");
  MemorySample s;
  char line[256];
  while (std::fgets(line, sizeof(line), status) != nullptr) {
    long long kib = 0;
    if (std::sscanf(line, "VmRSS: %lld kB", &kib) == 1) s.current_bytes = kib * 1024;
    if (std::sscanf(line, "VmHWM: %lld kB", &kib) == 1) s.peak_bytes = kib * 1024;
    if (std::sscanf(line, "RssFile: %lld kB", &kib) == 1) s.file_bytes = kib * 1024;
  }
  std::fclose(status);
  s.peak_bytes = std::max({s.peak_bytes, s.current_bytes, reset_floor.load()});
  return s;
}

void reset_memory_peak() {
  // "5" resets VmHWM to the current RSS (Linux >= 4.0).
  FILE* refs = std::fopen("/proc/self/clear_refs", "w");
  bool ok = refs != nullptr && std::fputs("5", refs) >= 0;
  if (refs != nullptr) ok = std::fclose(refs) == 0 && ok;
  if (!ok) reset_floor.store(sample_memory().current_bytes);  // kernels without it: peaks from samples
}
#endif

}  // namespace memwall
