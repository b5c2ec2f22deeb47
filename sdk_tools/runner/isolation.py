"""Where a bundle's program runs when it may take the process down with it.

Two hazards, two answers (docs/security.md):

- **Imports from the working directory.** ``python -m module`` puts the current directory first on ``sys.path``:
  started inside a received bundle, the measuring child imported a ``torch.py`` lying there. Children run
  ``python -P`` (no unsafe path entry, Python 3.11) in an empty temporary directory; the parent resolves every
  path it passes them first.
- **A runtime that crashes.** ONNX Runtime 1.19.2 loads graphs it then dies on (its AveragePoolGrad raises SIGFPE).
  ExecuTorch trusts a program's flatbuffer: a .pte whose bytes were changed and whose
  sha256 in the manifest was updated to match loads, and then segfaults (or aborts) inside the runtime. In the
  CLI's own process that is a dead command with no message. ``preflight`` loads the program and runs each
  method once in a forked child first: a crash there becomes a ``BundleError`` naming the signal.

Why fork, not a fresh interpreter: the parent has imported torch and ExecuTorch already, and a forked child
shares those pages. On the MLP bundle a preflight in a fresh ``python -m`` child (importing the runtime, loading the
program) was measured at 4.9 s wall by an earlier attempt; the fork preflight (load, one training call, one
prediction) takes 0.14-0.25 s (``open_session`` with and without ``preflight``, 2-core VM at load average 15,
2026-12-07). The child uses no thread the parent started: ExecuTorch re-makes its pool after a fork
(extension/threadpool's ``child_atfork``), torch is set to one thread, and the child leaves by ``os._exit``,
running no parent cleanup.
"""

from __future__ import annotations

import faulthandler
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from exporters.bundle import BundleError


def python_command(module: str, *args: str) -> list[str]:
    """A fresh interpreter running ``module`` without the working directory (or any script's) on its path."""
    return [sys.executable, "-P", "-m", module, *args]


def child_env(env: dict[str, str]) -> dict[str, str]:
    """``env`` with this memwall's own source root first on ``PYTHONPATH``: the child imports the same code as the
    parent, found by an absolute path, never through the directory it starts in."""
    root = str(Path(__file__).resolve().parents[2])
    return {**env, "PYTHONPATH": os.pathsep.join(filter(None, (root, env.get("PYTHONPATH"))))}


def neutral_path(path: str | os.PathLike[str]) -> str:
    """``path`` made absolute, so a child started in another directory finds the same file."""
    return str(Path(path).absolute())


def describe_exit(status: int) -> str:
    """``killed by SIGSEGV`` for a negative (signal) status, ``exit status N`` otherwise."""
    if status < 0:
        try:
            return f"killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"killed by signal {-status}"
    return f"exit status {status}"


def crash_message(status: int, doing: str) -> str:
    return (
        f"the runtime crashed ({describe_exit(status)}) {doing}: the program is malformed although its sha256 "
        "matches the manifest (a hash proves integrity, not that the program is sound); re-export the bundle"
    )


def run_forked(work: Callable[[], None], what: str, timeout_s: float = 120.0) -> None:
    """Run ``work`` in a forked child; raise ``BundleError`` if it crashes, fails or hangs.

    The child reports a Python exception through a pipe (its message, one line); a crash is read from the exit
    status. ``what`` names the program for the message.
    """
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into the parent's code
        os.close(read_fd)
        faulthandler.disable()  # a crash here is expected and reported by the parent: no stack dump on stderr
        status = 0
        try:
            work()
        except BundleError as exc:  # already says what to do: passed on as it is
            os.write(write_fd, str(exc).encode()[:4000])
            status = 3
        except BaseException as exc:  # everything else is the runtime refusing the program
            message = f"the runtime cannot run {what} ({type(exc).__name__}: {exc}); re-export it"
            os.write(write_fd, message.encode()[:4000])
            status = 3
        os._exit(status)
    os.close(write_fd)
    try:
        status = _wait(pid, timeout_s)  # the child's message (<= 4000 bytes) fits the pipe: it never blocks on it
        message = _read_all(read_fd)
    finally:
        os.close(read_fd)
    if status is None:
        raise BundleError(f"{what} did not finish one training call in {timeout_s:.0f} s; re-export the bundle")
    if status < 0:
        raise BundleError(crash_message(status, f"running {what}"))
    if status != 0:
        raise BundleError(message.strip() or f"the runtime cannot run {what} ({describe_exit(status)}); re-export it")


def _read_all(fd: int) -> str:
    chunks = []
    while chunk := os.read(fd, 4096):
        chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


def _wait(pid: int, timeout_s: float) -> int | None:
    """The child's status (negative: the signal that ended it), or ``None`` after killing it at the timeout."""
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return None
        time.sleep(0.005)
