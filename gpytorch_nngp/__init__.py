"""gpytorch_nngp: infinitely wide deep networks (NNGP, NTK) as GPyTorch kernels."""
from . import activations
from .kernels import NNGPKernel, NTKKernel

__version__ = "0.1.0"
__all__ = ["NNGPKernel", "NTKKernel", "activations", "__version__"]
