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

# The native runtime's overhead = base + per kernel x the program's distinct kernels + per value x its values
# (+ XNNPACK's when the program has delegates). Each distinct kernel faults its code pages in at the first step (the
# kernel maps 64 KiB around each faulting page of a file); each value (tensor, scalar, list) of the program's methods
# is an object the runtime builds at load, as in the host runner. Fitted by ``python runtime/benchmark.py
# --memory-wall /tmp/nrt/mlp-executorch /tmp/nrt/mlp-lora-int8`` (weighted by 1/peak, so small bundles count as much
# as large ones) over 10 bundles without delegates: largest error 3.5% of the peak (runtime/RESULTS.md).
NATIVE_BASE_BYTES = 2_419_686
NATIVE_PER_OPERATOR_BYTES = 57_613
NATIVE_PER_VALUE_BYTES = 102
# With XNNPACK delegates: cpuinfo's and XNNPACK's initialization and XNNPACK's code pages, beyond the delegate memory
# the host runner's calibration already predicts (delegate_bytes). Measured on one small bundle only (SmallCNN, 24
# delegated ops): the residual of /tmp/nrt/cnn-xnn over the model above.
NATIVE_XNNPACK_BYTES = 1_230_000


def program_values(host_overhead_bytes: int) -> int:
    """The program's value count, which the host runner's overhead encodes (``exporters/executorch_export.py``:
    base + per value x values; that module is imported here only when an ExecuTorch bundle is predicted)."""
    from exporters.executorch_export import RUNTIME_OVERHEAD_BASE_BYTES, RUNTIME_OVERHEAD_PER_VALUE_BYTES

    return max(0, host_overhead_bytes - RUNTIME_OVERHEAD_BASE_BYTES) // RUNTIME_OVERHEAD_PER_VALUE_BYTES


def native_runtime_overhead_bytes(host_overhead_bytes: int, backend_options: dict[str, Any]) -> int:
    """The native runtime's own overhead for an ExecuTorch bundle: from the program's values (through the host
    runner's overhead) and the kernels and backends its manifest's ``backend_options.runtime`` lists."""
    runtime = backend_options.get("runtime", {})
    xnnpack = XNNPACK in runtime.get("backends", [])
    return (
        NATIVE_BASE_BYTES
        + NATIVE_PER_OPERATOR_BYTES * len(runtime.get("operators", []))
        + NATIVE_PER_VALUE_BYTES * program_values(host_overhead_bytes)
        + (NATIVE_XNNPACK_BYTES if xnnpack else 0)
    )


def runtime_predictions(
    backend: str, backend_options: dict[str, Any], host_overhead_bytes: int, host_peak_bytes: int
) -> dict[str, RuntimePrediction]:
    """``memory.by_runtime``: the host runner's prediction, and the native runtime's for ExecuTorch bundles (the
    native runtime refuses ONNX Runtime bundles)."""
    predictions = {HOST_RUNTIME: RuntimePrediction(host_overhead_bytes, host_peak_bytes)}
    if backend == "executorch":
        native = native_runtime_overhead_bytes(host_overhead_bytes, backend_options)
        predictions[NATIVE_RUNTIME] = RuntimePrediction(native, host_peak_bytes - host_overhead_bytes + native)
    return predictions
