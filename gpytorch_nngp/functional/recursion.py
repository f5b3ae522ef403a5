"""The fully connected NNGP / NTK recursion on precomputed input Grams.

Lee et al. 2018 (Eq. 1-3) for the NNGP, Jacot et al. 2018 for the NTK in the NTK parametrization
(as neural-tangents' stax.Dense with parameterization="ntk"):

    K^0     = weight_var <x, x'> / d + bias_var,          Theta^0 = K^0
    K^l     = weight_var F(K^{l-1}) + bias_var,           Theta^l = K^l + weight_var Fdot(K^{l-1}) Theta^{l-1}

Only three numbers per pair flow from layer to layer -- the cross covariance and the two variances --
so the recursion is written on broadcastable tensors: (..., n, m) for the cross term and
(..., n, 1), (..., 1, m) for the variances (or (..., n) throughout for a diagonal).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from .activations import Activation


def input_grams(x1: torch.Tensor, x2: torch.Tensor, symmetric: bool):
    """<x1, x2>/d (..., n, m) and the variances |x1|^2/d (..., n, 1), |x2|^2/d (..., 1, m).

    With symmetric=True (x1 and x2 equal) the variances are read off the Gram's diagonal, so that the
    diagonal entries have k12 == k11 == k22 bitwise and |c| = 1 exactly there.
    """
    d = x1.shape[-1]
    gram = (x1 @ x2.transpose(-1, -2)) / d
    if symmetric:
        var1 = gram.diagonal(dim1=-2, dim2=-1).unsqueeze(-1)
        return gram, var1, var1.transpose(-1, -2)
    return gram, (x1 * x1).sum(-1, keepdim=True) / d, ((x2 * x2).sum(-1) / d).unsqueeze(-2)


def input_gram_diag(x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    """<x1_i, x2_i>/d, (..., n)."""
    return (x1 * x2).sum(-1) / x1.shape[-1]


def take_buffer(workspace: Optional[list], like: torch.Tensor, shape=None) -> torch.Tensor:
    """A free tensor with like's dtype/device and shape (default like.shape) from the workspace list (removed from
    it), or a new contiguous one."""
    shape = torch.Size(like.shape if shape is None else shape)
    if workspace:
        for i, t in enumerate(workspace):
            if t.shape == shape and t.dtype == like.dtype and t.device == like.device and t.is_contiguous():
                return workspace.pop(i)
    return torch.empty(shape, dtype=like.dtype, device=like.device)


def fully_connected_recursion(
    gram: torch.Tensor,
    var1: torch.Tensor,
    var2: torch.Tensor,
    depth: int,
    activation: Activation,
    weight_var: torch.Tensor,
    bias_var: torch.Tensor,
    ntk: bool = False,
    symmetric: bool = False,
    workspace: Optional[list] = None,
    consume_gram: bool = False,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Run `depth` hidden layers and the readout; returns (K^L, Theta^L or None).

    gram: (..., n, m); var1: (..., n, 1); var2: (..., 1, m) -- or gram, var1, var2 all (..., n) for a
    diagonal (pass the same tensor three times). weight_var, bias_var broadcast against them.
    symmetric: var2 is var1 transposed (x1 == x2), so the second variance needs no work of its own.
    workspace: a list of free tensors shaped like gram, reused and refilled by the inference path (a caller that
    evaluates many blocks of the same shape passes the same list, so only the first block allocates).
    consume_gram: gram is a temporary of the caller and may be overwritten (inference path only).
    """
    # Without autograd the layers are updated in place: on CPU, allocating a fresh n x n tensor costs as much as
    # several arithmetic passes over it, so the inference path keeps to a handful of buffers.
    inplace = not torch.is_grad_enabled() or not any(
        t.requires_grad for t in (gram, var1, var2, weight_var, bias_var) if isinstance(t, torch.Tensor))

    def affine(f):
        return f.mul_(weight_var).add_(bias_var) if inplace else weight_var * f + bias_var

    if inplace and consume_gram and torch.broadcast_shapes(gram.shape, torch.as_tensor(weight_var).shape,
                                                           torch.as_tensor(bias_var).shape) == gram.shape:
        k12 = gram.mul_(weight_var).add_(bias_var)
    else:
        k12 = weight_var * gram + bias_var
    k11 = weight_var * var1 + bias_var
    k22 = k11 if var2 is var1 else (k11.transpose(-1, -2) if symmetric else weight_var * var2 + bias_var)
    # Free n x m buffers (inference path only): each layer's old k12 and Fdot are recycled for the next layer.
    if not inplace or k12.dim() < 2:
        workspace = None
    elif workspace is None:
        workspace = []
    # The NTK accumulator starts as a copy of K^0 (a recycled buffer on the inference path, where K^0 then
    # changes in place).
    theta = (take_buffer(workspace, k12).copy_(k12) if inplace else k12) if ntk else None
    for _ in range(depth):
        f, fdot, f11, f22 = activation.layer(k12, k11, k22, ntk, symmetric, workspace=workspace)
        new_k11 = affine(f11)
        if k22 is k11:
            new_k22 = new_k11
        elif symmetric:
            new_k22 = new_k11.transpose(-1, -2)
        else:
            new_k22 = affine(f22)
        new_k12 = affine(f)
        if ntk:
            theta = theta.mul_(fdot).mul_(weight_var).add_(new_k12) if inplace else new_k12 + weight_var * fdot * theta
        if workspace is not None:
            workspace.extend(t for t in (k12, fdot) if t is not None and t.shape == new_k12.shape and t is not theta)
        k12, k11, k22 = new_k12, new_k11, new_k22
    return k12, theta
