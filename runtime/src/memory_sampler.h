// Process memory in the platform's primary metric (report.v1 "memory"): resident set size on Linux and Android
// (/proc/self/status VmRSS, peak VmHWM, reset through /proc/self/clear_refs as sdk_tools/memory.py does), the
// physical footprint on Apple (task_vm_info phys_footprint; its peak cannot be reset, so peaks after a reset
// come from the samples taken).
#pragma once

#include <cstdint>

namespace memwall {

struct MemorySample {
  int64_t current_bytes = 0;
  int64_t peak_bytes = 0;
  // Resident file-backed pages (Linux RssFile: the mapped program file and the libraries' code); -1 where the
  // platform does not say (Apple's phys_footprint leaves clean file pages out anyway).
  int64_t file_bytes = -1;
};

// Throws Failure(MW_ERR_IO) when the platform gives no figure.
MemorySample sample_memory();
void reset_memory_peak();

}  // namespace memwall
