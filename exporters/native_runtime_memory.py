"""The memory prediction per runtime (``memory.by_runtime`` in the manifest): the Python host runner's and the
memwall native runtime's (``runtime/``, what the phone apps run).

Both runtimes hold the same bundle-specific memory (planned arenas, program pages, optimizer state, accumulation,
workspace, delegate memory); they differ in the runtime's own overhead. The host runner's is calibrated in
``exporters/executorch_export.py`` (``RUNTIME_OVERHEAD_*``) and ``exporters/techniques/xnnpack_frozen.py``; the
native runtime's is that plus the difference measured here.

Measured with ``python runtime/benchmark.py --memory-wall /tmp/nrt/mlp-executorch /tmp/nrt/cnn-xnn`` (native and
Python runs of the same bundles alternating, runtime/RESULTS.md); ``/proc/<pid>/smaps`` of memwall-run (under gdb,
at its baseline and after three steps) shows where a tiny bundle's native cost goes: MLP, 3.66 MiB over the
baseline, of which 2.87 MiB are pages of ``libexecutorch_kernels_optimized.so``'s code faulted in by the first
execution (the kernel maps 64 KiB around each faulting page, so a few dozen kernels touch ~3 MiB), 0.3 MiB of
libm, 0.13 MiB each of the XNNPACK library's, libc's and memwall-run's own code, and 20 KiB of the program file.
"""

from __future__ import annotations

from typing import Any

from exporters.bundle import HOST_RUNTIME, NATIVE_RUNTIME, RuntimePrediction

XNNPACK = "XnnpackBackend"

# The native runtime's overhead: the code pages of the kernels the program calls, faulted in by its first step
# (the kernel maps 64 KiB around each faulting page, so each distinct kernel costs ~0.1 MiB: MLP, 23 operators,
# 2.87 MiB of libexecutorch_kernels_optimized.so's pages), plus the runtime's own code and method structures.
# Fitted by runtime/benchmark.py over the memory-wall and small bundles (runtime/RESULTS.md).
NATIVE_BASE_BYTES = 1_540_000
NATIVE_PER_OPERATOR_BYTES = 92_000
# With XNNPACK delegates: XNNPACK's and cpuinfo's initialization and XNNPACK's code pages.
NATIVE_XNNPACK_BYTES = 1_230_000


def native_runtime_overhead_bytes(backend_options: dict[str, Any]) -> int:
    """The native runtime's own overhead for an ExecuTorch bundle, from the runtime its manifest asks for."""
    runtime = backend_options.get("runtime", {})
    xnnpack = XNNPACK in runtime.get("backends", [])
    operators = len(runtime.get("operators", []))
    return NATIVE_BASE_BYTES + NATIVE_PER_OPERATOR_BYTES * operators + (NATIVE_XNNPACK_BYTES if xnnpack else 0)


def runtime_predictions(
    backend: str, backend_options: dict[str, Any], host_overhead_bytes: int, host_peak_bytes: int
) -> dict[str, RuntimePrediction]:
    """``memory.by_runtime``: the host runner's prediction, and the native runtime's for ExecuTorch bundles (the
    native runtime refuses ONNX Runtime bundles)."""
    predictions = {HOST_RUNTIME: RuntimePrediction(host_overhead_bytes, host_peak_bytes)}
    if backend == "executorch":
        native = native_runtime_overhead_bytes(backend_options)
        predictions[NATIVE_RUNTIME] = RuntimePrediction(native, host_peak_bytes - host_overhead_bytes + native)
    return predictions
