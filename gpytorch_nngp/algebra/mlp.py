"""The fully connected NNGP / NTK kernel on precomputed input Grams: the input state and the program of its MLP.

Lee et al. 2018 (Eq. 1-3) for the NNGP, Jacot et al. 2018 for the NTK in the NTK parametrization
(as neural-tangents' stax.Dense with parameterization="ntk"):

    K^0     = weight_var <x, x'> / d + bias_var,          Theta^0 = K^0
    K^l     = weight_var F(K^{l-1}) + bias_var,           Theta^l = K^l + weight_var Fdot(K^{l-1}) Theta^{l-1}

Only three numbers per pair flow from layer to layer -- the cross covariance and the two variances --
so the recursion is written on broadcastable tensors: (..., n, m) for the cross term and
(..., n, 1), (..., 1, m) for the variances (or (..., n) throughout for a diagonal). The layers are the algebra's
Dense and Nonlinearity, compiled to a FlatProgram (flat.py); this module builds their input state.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from ..functional.activations import Activation
from ..functional.workspace import Workspace
from .flat import input_variances
from .network import mlp_program

__all__ = ["fully_connected_recursion", "input_grams", "input_variances", "paired_kernel"]


def input_grams(
    x1: torch.Tensor,
    x2: torch.Tensor,
    x1_eq_x2: bool = False,
    out: Optional[torch.Tensor] = None,
    diagonal_offset: Optional[int] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The layer-0 state: the Gram <x1, x2>/d and the two variances, the only place inputs enter the recursion.

    Args:
        x1: (..., n, d) inputs.
        x2: (..., m, d) inputs.
        x1_eq_x2: x1 and x2 are the same points; the variances are then read off the Gram's diagonal, so that
            diagonal entries have k12 == k11 == k22 bitwise (|c| = 1 exactly, finite gradients).
        out: (n, m) buffer to write the Gram into (inference only, unbatched inputs).
        diagonal_offset: x1 are rows offset, offset + 1, ... of x2 (a row block of a symmetric matrix): the
            Gram entries (i, offset + i) are set to the variances, for the same bitwise equality.

    Returns:
        gram (..., n, m), var1 (..., n, 1), var2 (..., 1, m).
    """
    d = x1.shape[-1]
    gram = (torch.matmul(x1, x2.mT, out=out) if out is not None else x1 @ x2.mT).div_(d)
    if x1_eq_x2:
        var1 = gram.diagonal(dim1=-2, dim2=-1).unsqueeze(-1)
        return gram, var1, var1.mT
    var1 = input_variances(x1).unsqueeze(-1)
    var2 = input_variances(x2).unsqueeze(-2)
    if diagonal_offset is not None:
        rows = torch.arange(x1.shape[-2], device=gram.device)
        cols = rows + diagonal_offset
        same = var2[..., 0, :].index_select(-1, cols)
        gram[..., rows, cols] = same  # gram is a fresh tensor; its producer (a division) keeps no output
        var1 = same.unsqueeze(-1)
    return gram, var1, var2


def paired_kernel(
    x1: torch.Tensor,
    x2: torch.Tensor,
    weight_var: torch.Tensor,
    bias_var: torch.Tensor,
    depth: int,
    activation: Activation,
    ntk: bool,
    x1_eq_x2: bool = False,
) -> torch.Tensor:
    """Kernel entries k(x1_i, x2_i) of paired rows (a diagonal, or scattered entries), in O(n).

    Args:
        x1, x2: (..., n, d) inputs, row i of one paired with row i of the other.
        weight_var, bias_var: variances broadcasting against (..., n).
        depth, activation, ntk: the network, as in fully_connected_recursion.
        x1_eq_x2: x1 and x2 are the same points (a kernel diagonal): one variance serves all three state
            entries, so |c| = 1 exactly.

    Returns:
        (..., n): the NNGP, or the NTK with ntk=True.
    """
    var1 = input_variances(x1)
    if x1_eq_x2:
        k, theta = fully_connected_recursion(var1, var1, var1, depth, activation, weight_var, bias_var, ntk)
    else:
        cross = (x1 * x2).sum(-1) / x1.shape[-1]
        k, theta = fully_connected_recursion(cross, var1, input_variances(x2), depth, activation, weight_var,
                                             bias_var, ntk)
    return theta if ntk else k


def fully_connected_recursion(
    gram: torch.Tensor,
    var1: torch.Tensor,
    var2: torch.Tensor,
    depth: int,
    activation: Activation,
    weight_var: torch.Tensor,
    bias_var: torch.Tensor,
    ntk: bool = False,
    x1_eq_x2: bool = False,
    workspace: Optional[Workspace] = None,
    consume_gram: bool = False,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Run `depth` hidden layers and the readout on the layer-0 state (Lee et al. 2018; Jacot et al. 2018).

    Args:
        gram: (..., n, m) input Gram <x1, x2> / d, or (..., n) for paired entries.
        var1: (..., n, 1) variances |x1|^2 / d, or (..., n).
        var2: (..., 1, m) variances |x2|^2 / d, or (..., n); pass var1 itself when the points are the same.
        depth: hidden layers L.
        activation: the Activation.
        weight_var, bias_var: variances broadcasting against gram.
        ntk: also compute the NTK.
        x1_eq_x2: var2 is var1 transposed (x1 == x2), so the second variance needs no work of its own.
        workspace: free tensors shaped like gram, reused and refilled by the inference path (a caller that
            evaluates many blocks of the same shape passes the same list, so only the first block allocates).
        consume_gram: gram is a temporary of the caller and may be overwritten (inference path only).

    Returns:
        (K^L, Theta^L) shaped like gram; Theta^L is None unless ntk.
    """
    return mlp_program(depth, activation).values(gram, var1, var2, weight_var, bias_var, ntk=ntk, x1_eq_x2=x1_eq_x2,
                                                 workspace=workspace, consume_gram=consume_gram)
