"""A hard memory cap on the measuring child, so "does not fit" is a real out-of-memory kill.

The child joins a fresh memory cgroup after it has loaded the runtime and the data (its idle baseline), so
the cap applies to what training adds, like the prediction: the kernel's OOM killer ends the child when
training needs more. cgroup v1 (``memory.limit_in_bytes``) and v2 (``memory.max``) are both handled; where
neither can be created (no permission, no controller) a watchdog thread polls the child's resident set
every millisecond and kills it past the cap - the way Android's low-memory killer works, and blind to
spikes shorter than a poll.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from sdk_tools.memory import proc_status_bytes

CGROUP_ROOT = Path("/sys/fs/cgroup")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(b|kb|kib|k|mb|mib|m|gb|gib|g)?\s*$", re.IGNORECASE)
_UNITS = {"b": 1, "k": 2**10, "kb": 2**10, "kib": 2**10, "m": 2**20, "mb": 2**20, "mib": 2**20}
_UNITS.update({"g": 2**30, "gb": 2**30, "gib": 2**30})


def parse_size(text: str) -> int:
    """``48MB``, ``48MiB``, ``0.5GB``, ``1048576`` -> bytes. MB and MiB both mean 2**20 (as phone specs do)."""
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"cannot read {text!r} as a memory size; write it like 48MB, 512KiB or 1.5GB")
    value = float(match.group(1)) * _UNITS[(match.group(2) or "b").lower()]
    if value < 1:
        raise ValueError(f"memory size must be positive, got {text!r}")
    return int(value)


@dataclass(frozen=True)
class CgroupCap:
    """A memory cgroup made for one child; ``enforced_by`` says which kind."""

    path: Path
    limit_bytes: int
    enforced_by: str  # "cgroup-v1" or "cgroup-v2"

    def join(self, pid: int | None = None) -> None:
        (self.path / "cgroup.procs").write_text(str(pid or os.getpid()))

    def remove(self) -> None:
        # A cgroup directory goes with rmdir once its processes have exited.
        for _ in range(50):
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.02)


def _own_cgroup_dir() -> tuple[Path, str] | None:
    """This process's memory cgroup directory and hierarchy version, if one is mounted."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        hierarchy, controllers, relative = line.split(":", 2)
        if "memory" in controllers.split(","):
            base = CGROUP_ROOT / "memory"
            return base / relative.lstrip("/"), "cgroup-v1"
        if hierarchy == "0" and controllers == "":
            for base in (CGROUP_ROOT, CGROUP_ROOT / "unified"):
                directory = base / relative.lstrip("/")
                if (directory / "cgroup.controllers").exists():
                    controllers_here = (directory / "cgroup.controllers").read_text().split()
                    if "memory" in controllers_here:
                        return directory, "cgroup-v2"
    return None


def create_cgroup_cap(limit_bytes: int) -> CgroupCap | None:
    """A fresh memory cgroup below this process's own, limited to ``limit_bytes``; None where not allowed."""
    found = _own_cgroup_dir()
    if found is None:
        return None
    parent, kind = found
    path = parent / f"memwall-measure-{os.getpid()}-{time.monotonic_ns()}"
    try:
        path.mkdir()
        if kind == "cgroup-v1":
            (path / "memory.limit_in_bytes").write_text(str(limit_bytes))
            (path / "memory.swappiness").write_text("0")  # swapping would hide the out-of-memory
        else:
            (path / "memory.max").write_text(str(limit_bytes))
            (path / "memory.swap.max").write_text("0")
    except OSError:
        if path.exists():
            shutil.rmtree(path, ignore_errors=True)
        return None
    return CgroupCap(path, limit_bytes, kind)


def start_rss_watchdog(limit_bytes: int, baseline_bytes: int, interval_s: float = 0.001) -> threading.Thread:
    """Kill this process (SIGKILL, as the OOM killer does) once its RSS exceeds baseline + limit."""

    def watch() -> None:
        while True:
            if proc_status_bytes("VmRSS") - baseline_bytes > limit_bytes:
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(interval_s)

    thread = threading.Thread(target=watch, name="memwall-rss-watchdog", daemon=True)
    thread.start()
    return thread
