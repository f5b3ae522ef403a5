"""GPyTorch kernels of deep networks."""
from .architecture import ArchitectureKernel
from .fully_connected import NNGPKernel, NTKKernel

__all__ = ["ArchitectureKernel", "NNGPKernel", "NTKKernel"]
