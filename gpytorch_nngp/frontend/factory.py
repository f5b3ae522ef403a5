"""`from_module`: the kernel of an ordinary torch module, as the fastest kernel class that computes it."""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from ..kernels.architecture import ArchitectureKernel
from .translate import fully_connected_form, network_from_module


def kernel_from_module(module: torch.nn.Module, input_shape: Sequence[int], ntk: bool, weight_var=2.0, bias_var=0.1,
                       per_layer: bool = False, fully_connected: Optional[type] = None, **kwargs):
    """The NNGP (ntk=False) or NTK of `module`'s infinite-width limit, for inputs of `input_shape`.

    A plain MLP (Linear layers with biases, one activation, shared variances) becomes `fully_connected` (the
    NNGPKernel or NTKKernel class, or a subclass, which keeps the fully connected fast paths: input Gram cache,
    forward-mode gradients, KeOps); anything else an ArchitectureKernel. See NNGPKernel.from_module.
    """
    network = network_from_module(module, input_shape, per_layer)
    form = fully_connected_form(network)
    if form is not None and fully_connected is not None:
        depth, activation = form
        return fully_connected(depth, activation, weight_var=weight_var, bias_var=bias_var, **kwargs)
    return ArchitectureKernel(network, ntk, weight_var=weight_var, bias_var=bias_var, **kwargs)
