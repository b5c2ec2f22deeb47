"""Reading a process's memory from /proc (Linux): resident set and its high-water mark."""

from __future__ import annotations

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
