"""Host runner: trains a bundle in the real runtime its manifest names."""

from sdk_tools.runner.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from sdk_tools.runner.session import InputError, TrainingSession
from sdk_tools.runner.train import (
    TrainConfig,
    TrainResult,
    evaluate,
    load_trained_weights,
    open_session,
    train,
)

__all__ = [
    "CheckpointError",
    "InputError",
    "TrainConfig",
    "TrainResult",
    "TrainingSession",
    "evaluate",
    "load_checkpoint",
    "load_trained_weights",
    "open_session",
    "save_checkpoint",
    "train",
]
