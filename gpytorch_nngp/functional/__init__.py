"""Pure tensor math (no GPyTorch): activations and their dual maps, Hermite series, the layer recursion."""
from .activations import get_activation
from .recursion import fully_connected_recursion, input_gram_diag, input_grams

__all__ = ["get_activation", "fully_connected_recursion", "input_grams", "input_gram_diag"]
