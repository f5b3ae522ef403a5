"""Activations accepted by the kernels: closed forms, and `Numerical` for any elementwise torch function."""
from .functional.activations import (
    GELU,
    NAMES,
    ABReLU,
    Abs,
    Activation,
    Erf,
    Identity,
    LeakyReLU,
    Numerical,
    ReLU,
    Sign,
    get_activation,
)

__all__ = ["Activation", "ABReLU", "ReLU", "LeakyReLU", "Abs", "Identity", "Erf", "GELU", "Sign", "Numerical",
           "get_activation", "NAMES"]
