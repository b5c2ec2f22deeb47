"""Library chatter a memwall user can do nothing about, kept off their terminal.

Measured in `memwall demo` (2026-12-07): torchao logs "Failed to load .../_C_mxfp8...so" for CUDA kernels at import,
torch's pytree logs an Enum deprecation notice, torch.export raises FutureWarnings from copyreg, and ExecuTorch's
memory planning warns that convolution_backward's unused outputs are None. memwall's own
progress and errors are printed by memwall, so raising these loggers to ERROR hides nothing of ours.
"""

from __future__ import annotations

import logging
import warnings

LIBRARY_LOGGERS = ("torch", "torchao", "executorch", "onnxruntime")


def quiet_library_chatter() -> None:
    import torch  # noqa: F401  (torch sets its loggers' levels when imported: set ours after it)

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"executorch\.")
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
