"""GPyTorch kernels of deep networks."""
from .fully_connected import NNGPKernel, NTKKernel

__all__ = ["NNGPKernel", "NTKKernel"]
