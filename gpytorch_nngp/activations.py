"""Activations accepted by the kernels: closed forms, and `Numerical` for any elementwise torch function."""
from .functional.activations import (
    ABReLU,
    Abs,
    Activation,
    Erf,
    GELU,
    Identity,
    LeakyReLU,
    NAMES,
    Numerical,
    ReLU,
    Sign,
    get_activation,
)

__all__ = ["Activation", "ABReLU", "ReLU", "LeakyReLU", "Abs", "Identity", "Erf", "GELU", "Sign", "Numerical",
           "get_activation", "NAMES"]
