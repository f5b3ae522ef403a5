"""Torch modules with an infinite-width kernel that plain torch lacks."""
from __future__ import annotations

import torch


class Residual(torch.nn.Module):
    """A residual block: forward(x) = x + branch(x).

    A real module (train it, run it) whose kernel `NNGPKernel.from_module` / `NTKKernel.from_module` know: the sum of
    the kernels of x and of branch(x). The branch must end in a Linear or Conv layer and keep the input's shape.

    Args:
        branch: the module on the residual path, e.g. ``nn.Sequential(nn.ReLU(), nn.Conv2d(c, c, 3, padding=1))``.
    """

    def __init__(self, branch: torch.nn.Module):
        super().__init__()
        if not isinstance(branch, torch.nn.Module):
            raise TypeError(f"Residual needs a torch.nn.Module as its branch, got {type(branch).__name__}")
        self.branch = branch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.branch(x)


class Elementwise(torch.nn.Module):
    """An elementwise activation as a module, for functions torch has no module for (erf, abs, sign, ...).

    `from_module` uses the activation's closed-form dual where there is one (names and Activation objects of
    gpytorch_nngp.activations), and the numerical one for any other callable.

    Args:
        activation: a name ("erf", "abs", "relu", ...), an Activation, or an elementwise torch callable.
    """

    def __init__(self, activation):
        super().__init__()
        from .functional.activations import get_activation

        self.activation = get_activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(x)

    def extra_repr(self) -> str:
        return repr(self.activation)
