"""DNN2GP: a trained network's linearized Laplace posterior as a Gaussian process with its finite NTK kernel."""
from .kernel import FiniteNTKKernel
from .laplace import DNN2GP
from .linearize import LinearizedNetwork
from .operator import FiniteNTKOperator

__all__ = ["DNN2GP", "FiniteNTKKernel", "FiniteNTKOperator", "LinearizedNetwork"]
