"""Memory techniques: each a small frozen config and a function that applies it."""

from exporters.techniques.freeze import FreezeConfig, apply_freeze

__all__ = ["FreezeConfig", "apply_freeze"]
