"""Global self-attention with tied keys and queries and logits over key channels (Hron et al. 2020, "Infinite
attention: NNGP and NTK for deep attention networks"; neural-tangents' GlobalSelfAttention, linear_scaling=True).

As the key channels grow, input x's logits converge to a number per pair of positions, qk * Sigma(x)_ab with
Sigma(x) x's OWN P x P covariance (mixed with the positional embeddings' covariance R when there are any), so the
attention weights A(x) = mechanism(qk Sigma(x)) are deterministic, and as the heads grow the output is Gaussian:

    K'(x, x')_ij   = ov sum_ab A(x)_ia A(x')_jb K(x, x')_ab + b,
    Theta'(x, x')  = ov A(x) Theta A(x')^T + b + 2 ov A(x) K A(x')^T    (the value and output weights' terms;
                     the key/query weights' term vanishes in this limit),

with qk = sqrt(query_var key_var) and ov = value_var out_var. Positional embeddings enter the logits only: "sum"
gives Sigma + positional_var R, "concat" (embedding channels C_pe beside the C input channels) gives
(C Sigma + C_pe positional_var R) / (C + C_pe).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Optional

import torch

from .layer import Layer
from .state import GAUSSIAN, from_matrix, to_matrix

MECHANISMS = {
    "softmax": lambda g: torch.softmax(g, -1),
    "identity": lambda g: g,
    "abs": torch.abs,
    "relu": torch.relu,
}


class SelfAttention(Layer):
    """The kernel map of gpytorch_nngp.SelfAttention (frontend/attention.py), whose variances are fixed by the module.

    Args:
        mechanism: "softmax", "identity", "abs" or "relu".
        qk: sqrt(query_var key_var), the logits' scale.
        ov: value_var out_var.
        bias_var: the output bias variance, or None.
        positional: None, "sum" or "concat"; positional_cov: (P, P) covariance of the embeddings (unscaled),
            positional_var their variance, positional_share C_pe / (C + C_pe) for "concat".
        in_channels, out_channels: the finite module's widths, for shape checks.
    """

    nonlinear_in_state = True

    weighted = True

    def __init__(self, mechanism: str, qk: float, ov: float, bias_var: Optional[float] = None,
                 positional: Optional[str] = None, positional_cov: Optional[torch.Tensor] = None,
                 positional_var: float = 1.0, positional_share: float = 0.5, in_channels: Optional[int] = None,
                 out_channels: Optional[int] = None, spatial_shape=None):
        self.mechanism, self.qk, self.ov, self.bias_var = mechanism, float(qk), float(ov), bias_var
        self.positional, self.positional_cov = positional, positional_cov
        self.positional_var, self.positional_share = float(positional_var), float(positional_share)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.spatial_shape = None if spatial_shape is None else tuple(spatial_shape)

    def needs_full(self):
        return True

    def record_axes(self):
        return 2

    def _output(self, geometry):
        if not geometry.spatial:
            raise ValueError("self-attention needs inputs with positions (N, C, L) or (N, C, H, W), got a flat input")
        if None not in (self.in_channels, geometry.channels) and self.in_channels != geometry.channels:
            raise ValueError(f"SelfAttention with in_channels={self.in_channels} gets an input of {geometry.shape()}")
        if self.spatial_shape is not None and self.spatial_shape != geometry.spatial:
            raise ValueError(f"SelfAttention built for spatial_shape {self.spatial_shape} gets an input of "
                             f"{geometry.shape()}")
        return replace(geometry, law=GAUSSIAN, channels=self.out_channels, why="", pooled_axes=0)

    def _weights(self, own: torch.Tensor) -> torch.Tensor:
        """Attention weights (..., n, P, P) of each point from its own full covariance (..., n, h, h', w, w')."""
        sigma = to_matrix(own, len(self.input.spatial))
        if self.positional is not None:
            r = self.positional_cov.to(dtype=sigma.dtype, device=sigma.device)
            if self.positional == "sum":
                sigma = sigma + self.positional_var * r
            else:
                share = self.positional_share
                sigma = (1 - share) * sigma + share * self.positional_var * r
        return MECHANISMS[self.mechanism](self.qk * sigma)

    def apply(self, state, ctx):
        a1, a2 = state.records(self.key, self._weights, 2)
        nd = len(self.input.spatial)

        def attend(k):
            return from_matrix(a1 @ to_matrix(k, nd) @ a2.transpose(-1, -2), self.input.spatial)

        mixed = attend(state.cov)
        cov = self.ov * mixed if self.bias_var is None else self.ov * mixed + self.bias_var
        theta = None
        if ctx.ntk:
            theta = 2 * self.ov * mixed
            if state.theta is not None:
                theta = theta + self.ov * attend(state.theta)
            if self.bias_var is not None:
                theta = theta + self.bias_var
        return state.with_(cov.contiguous(), None if theta is None else theta.contiguous())

    def describe(self):
        return f"SelfAttention(mechanism={self.mechanism!r}, positional={self.positional!r})"
