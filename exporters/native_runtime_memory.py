"""The memory prediction per runtime (``memory.by_runtime`` in the manifest): the Python host runner's and the
memwall native runtime's (``runtime/``, what the phone apps run).

Both runtimes hold the same bundle-specific memory (planned arenas, program pages, optimizer state, accumulation,
workspace, delegate memory); they differ in the runtime's own overhead. The host runner's is calibrated in
``exporters/executorch_export.py`` (``RUNTIME_OVERHEAD_*``) and ``exporters/techniques/xnnpack_frozen.py``; the
native runtime's here, by ``python runtime/benchmark.py --small --memory-wall`` (native and Python runs of the same
bundles alternating; runtime/RESULTS.md).

Where a tiny bundle's native cost goes (``/proc/<pid>/smaps`` of memwall-run under gdb, at its baseline and after
three steps of an MLP): 3.66 MiB over the baseline, of which 2.87 MiB are pages of
``libexecutorch_kernels_optimized.so``'s code faulted in by the first execution, 0.3 MiB of libm's, 0.13 MiB each
of the XNNPACK library's, libc's and memwall-run's own code, and 20 KiB of the program file: nearly all of it clean
file-backed pages (memwall-run's report gives their growth as ``memory.file_backed_delta_bytes``).
"""

from __future__ import annotations

from typing import Any

from exporters.bundle import HOST_RUNTIME, NATIVE_RUNTIME, RuntimePrediction

XNNPACK = "XnnpackBackend"

# The native runtime's overhead = base + per value x the program's values, like the host runner's (3.19 MiB + 277 B
# per value): the base is mostly the kernels' code pages faulted in by the first step (the kernel maps 64 KiB around
# each faulting page of a file; 16-39 distinct kernels in these programs: a per-kernel term fitted no better than
# the constant), each value (tensor, scalar, list) of the program's methods an object the runtime builds at load.
# Fitted with ``python runtime/benchmark.py --small --memory-wall`` (weighted by 1/peak, so small bundles count as
# much as large ones) over the 12 memory-wall bundles and an MLP: largest error 6.0% of the peak (runtime/RESULTS.md).
NATIVE_BASE_BYTES = 3_764_000
NATIVE_PER_VALUE_BYTES = 250
# With XNNPACK delegates, on top of the delegate memory the manifest predicts (exporters/techniques/xnnpack_frozen.py:
# the largest delegate's workspace + 4,298 B per delegated op, calibrated on the host runner): XNNPACK's and
# cpuinfo's initialization, and per delegated op the native figure in place of the host's. Fitted on two bundles
# only (SmallCNN head, 24 delegated ops: +0.46 MiB over the model above; MobileNetV2 x0.35 head, 1,142 ops:
# -1.11 MiB), so not validated beyond them.
NATIVE_XNNPACK_BYTES = 497_000
NATIVE_PER_DELEGATED_OP_BYTES = 2_847


def program_values(host_overhead_bytes: int) -> int:
    """The program's value count, which the host runner's overhead encodes (``exporters/executorch_export.py``:
    base + per value x values; that module is imported here only when an ExecuTorch bundle is predicted)."""
    from exporters.executorch_export import RUNTIME_OVERHEAD_BASE_BYTES, RUNTIME_OVERHEAD_PER_VALUE_BYTES

    return max(0, host_overhead_bytes - RUNTIME_OVERHEAD_BASE_BYTES) // RUNTIME_OVERHEAD_PER_VALUE_BYTES


def native_runtime_overhead_bytes(
    host_overhead_bytes: int, backend_options: dict[str, Any], techniques: list[dict[str, Any]]
) -> int:
    """The native runtime's own overhead for an ExecuTorch bundle: from the program's values (through the host
    runner's overhead) and, with XNNPACK delegates, the delegated ops the ``xnnpack_frozen`` technique records."""
    overhead = NATIVE_BASE_BYTES + NATIVE_PER_VALUE_BYTES * program_values(host_overhead_bytes)
    if XNNPACK not in backend_options.get("runtime", {}).get("backends", []):
        return overhead
    from exporters.techniques.xnnpack_frozen import XNNPACK_PER_DELEGATED_OP_BYTES

    ops = sum(t["config"].get("delegated_ops", 0) for t in techniques if t["name"] == "xnnpack_frozen")
    return overhead + NATIVE_XNNPACK_BYTES + (NATIVE_PER_DELEGATED_OP_BYTES - XNNPACK_PER_DELEGATED_OP_BYTES) * ops


def runtime_predictions(
    backend: str,
    backend_options: dict[str, Any],
    techniques: list[dict[str, Any]],
    host_overhead_bytes: int,
    host_peak_bytes: int,
) -> dict[str, RuntimePrediction]:
    """``memory.by_runtime``: the host runner's prediction, and the native runtime's for ExecuTorch bundles (the
    native runtime refuses ONNX Runtime bundles)."""
    predictions = {HOST_RUNTIME: RuntimePrediction(host_overhead_bytes, host_peak_bytes)}
    if backend == "executorch":
        native = native_runtime_overhead_bytes(host_overhead_bytes, backend_options, techniques)
        predictions[NATIVE_RUNTIME] = RuntimePrediction(native, host_peak_bytes - host_overhead_bytes + native)
    return predictions
