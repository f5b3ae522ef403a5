"""Pure tensor math (no GPyTorch, nothing of the layers above): activations and their dual maps, Hermite series,
forward-mode tangents, overflow-safe primitives and the buffer workspace."""
from .activations import get_activation

__all__ = ["get_activation"]
