"""Torch modules that combine others: residual blocks, parallel branches, elementwise functions."""
from __future__ import annotations

import torch

from ..algebra.branches import MERGES


class Residual(torch.nn.Module):
    r"""A residual block: forward(x) = x + branch(x).

    A real module (train it, run it) whose kernel `NNGPKernel.from_module` / `NTKKernel.from_module` know: the sum of
    the kernels of x and of branch(x). The branch must end in a Linear or Conv layer and keep the input's shape.

    Args:
        branch: the module on the residual path, e.g. ``nn.Sequential(nn.ReLU(), nn.Conv2d(c, c, 3, padding=1))``.

    The kernel: with the skip path Gaussian (a Linear/Conv output) and the branch ending in fresh weights,

    .. math::

        K_{out}(x, x') = K_{in}(x, x') + K_{branch}(x, x'), \qquad \Theta_{out} = \Theta_{in} + \Theta_{branch}.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from gpytorch_nngp import NTKKernel, Residual
        >>> net = nn.Sequential(nn.Linear(3, 16), Residual(nn.Sequential(nn.ReLU(), nn.Linear(16, 16))),
        ...                     nn.ReLU(), nn.Linear(16, 1))
        >>> net(torch.randn(4, 3)).shape
        torch.Size([4, 1])
        >>> NTKKernel.from_module(net, input_shape=(3,))(torch.randn(5, 3)).shape
        torch.Size([5, 5])
    """

    def __init__(self, branch: torch.nn.Module):
        super().__init__()
        if not isinstance(branch, torch.nn.Module):
            raise TypeError(f"Residual needs a torch.nn.Module as its branch, got {type(branch).__name__}")
        self.branch = branch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.branch(x)


class Parallel(torch.nn.Module):
    r"""Branches fed the same input, merged: forward(x) = merge(branch_1(x), ..., branch_k(x)).

    A real module whose kernel `from_module` knows (neural-tangents' FanOut + parallel + FanInSum / FanInConcat /
    FanInProd): the sum of the branches' kernels, their channel-weighted average for "concat" (along dim 1, the
    channels of (N, C, *spatial) inputs and the features of (N, d) ones), or their product (elementwise, with
    Theta = Theta_1 K_2 + K_1 Theta_2). A sum needs all branches but at most one to end in a Linear or Conv layer
    (followed by linear maps only), so that their outputs are uncorrelated; a product needs all but one to have a
    Linear/Conv layer of their own (independent outputs); a concatenation takes any branches. nn.Identity() is the
    identity branch.

    Args:
        *branches: torch modules, each taking the block's input.
        merge: "sum", "concat" or "prod".

    The kernels, with a_i the branches' shares of the channels:

    .. math::

        K_{sum} = \sum_i K_i, \qquad K_{concat} = \sum_i a_i K_i, \qquad K_{prod} = \prod_i K_i,
        \qquad \Theta_{prod} = \sum_i \Theta_i \prod_{j \ne i} K_j.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from gpytorch_nngp import NNGPKernel, Parallel
        >>> block = Parallel(nn.Conv1d(8, 4, 1), nn.Sequential(nn.ReLU(), nn.Conv1d(8, 4, 3, padding=1)),
        ...                  merge="concat")
        >>> net = nn.Sequential(nn.Conv1d(1, 8, 3, padding=1), block, nn.ReLU(), nn.Flatten(), nn.Linear(40, 1))
        >>> net(torch.randn(2, 1, 5)).shape
        torch.Size([2, 1])
        >>> NNGPKernel.from_module(net, input_shape=(1, 5))(torch.randn(3, 5)).shape
        torch.Size([3, 3])
    """

    def __init__(self, *branches: torch.nn.Module, merge: str = "sum"):
        super().__init__()
        if not branches:
            raise ValueError("Parallel needs at least one branch")
        for i, branch in enumerate(branches):
            if not isinstance(branch, torch.nn.Module):
                raise TypeError(f"Parallel needs torch.nn.Modules as branches, got {type(branch).__name__} for "
                                f"branch {i}")
        if merge not in MERGES:
            raise ValueError(f"merge must be one of {', '.join(map(repr, MERGES))}, got {merge!r}")
        self.branches = torch.nn.ModuleList(branches)
        self.merge = merge

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [branch(x) for branch in self.branches]
        if self.merge == "concat":
            return torch.cat(outs, dim=1)
        out = outs[0]
        for other in outs[1:]:
            out = out + other if self.merge == "sum" else out * other
        return out

    def extra_repr(self) -> str:
        return f"merge={self.merge!r}"


class Elementwise(torch.nn.Module):
    """An elementwise activation as a module, for functions torch has no module for (erf, abs, sign, ...).

    Example:
        >>> import torch
        >>> from gpytorch_nngp import Elementwise
        >>> Elementwise("erf")(torch.zeros(2)).tolist()
        [0.0, 0.0]

    `from_module` uses the activation's closed-form dual where there is one (names and Activation objects of
    gpytorch_nngp.activations), and the numerical one for any other callable.

    Args:
        activation: a name ("erf", "abs", "relu", ...), an Activation, or an elementwise torch callable.
    """

    def __init__(self, activation):
        super().__init__()
        from ..functional.activations import get_activation

        self.activation = get_activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(x)

    def extra_repr(self) -> str:
        return repr(self.activation)
