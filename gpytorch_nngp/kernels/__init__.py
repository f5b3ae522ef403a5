"""GPyTorch kernels of deep networks."""
from .architecture import ArchitectureKernel
from .fully_connected import NNGPKernel, NTKKernel
from .graph_nodes import GraphNodeKernel

__all__ = ["ArchitectureKernel", "GraphNodeKernel", "NNGPKernel", "NTKKernel"]
