"""Pure tensor math (no GPyTorch): activations and their dual maps, Hermite series, the layer recursion."""
from .activations import get_activation
from .recursion import fully_connected_recursion, input_grams, input_variances, paired_kernel

__all__ = ["get_activation", "fully_connected_recursion", "input_grams", "input_variances", "paired_kernel"]
