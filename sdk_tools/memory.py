"""Reading a process's memory from /proc (Linux): resident set and its high-water mark."""

from __future__ import annotations

import ctypes
from pathlib import Path


def proc_status_bytes(field: str, pid: int | str = "self") -> int:
    """``VmRSS``, ``VmHWM``, ... of a process, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise KeyError(f"/proc/{pid}/status has no {field}")


def reset_peak() -> None:
    """Reset this process's VmHWM to its current RSS (Linux >= 4.0), so the next peak is measured from now."""
    Path("/proc/self/clear_refs").write_text("5")


def mib(n_bytes: float) -> str:
    return f"{n_bytes / 2**20:.1f} MiB"


def release_free_memory() -> None:
    """Hand freed heap pages back to the OS (glibc ``malloc_trim``), so RSS shows what is live.

    glibc keeps freed memory of a finished phase (evaluation, a checkpoint write) resident, and the next
    phase's high-water mark would start from it; phone allocators (scudo, jemalloc) return large frees
    on their own. No-op where glibc is not the allocator.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        return
