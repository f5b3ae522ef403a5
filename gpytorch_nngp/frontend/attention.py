"""Multi-head self-attention with an infinite-width limit (neural-tangents' GlobalSelfAttention)."""
from __future__ import annotations

import torch

from ..algebra.attention import MECHANISMS

ATTENTION_MECHANISMS = tuple(MECHANISMS)
POSITIONAL = (None, "sum", "concat")


def positional_covariance(spatial_shape, decay=None, p_norm: float = 2.0, dtype=torch.float64) -> torch.Tensor:
    """The (P, P) covariance of positional embeddings over the positions of `spatial_shape` (row-major).

    decay=None: the identity (independent one-hot embeddings); else decay(d) elementwise, with d the distance
    between two positions to the power p_norm, sum_axes |i_a - j_a|^p_norm (neural-tangents' `pos_emb_decay_fn` and
    `pos_emb_p_norm`). decay must map a tensor of distances to a positive semi-definite covariance, e.g.
    ``lambda d: torch.exp(-d / 4)``.
    """
    grids = torch.meshgrid(*[torch.arange(s, dtype=dtype) for s in spatial_shape], indexing="ij")
    coords = torch.stack([g.reshape(-1) for g in grids], -1)  # (P, nd)
    if decay is None:
        return torch.eye(len(coords), dtype=dtype)
    distance = (coords[:, None, :] - coords[None, :, :]).abs().pow(p_norm).sum(-1)
    out = decay(distance)
    if not isinstance(out, torch.Tensor) or out.shape != distance.shape:
        raise ValueError("positional_decay must map a tensor of distances to a tensor of the same shape, e.g. "
                         "lambda d: torch.exp(-d / 4)")
    return out.to(dtype)


class SelfAttention(torch.nn.Module):
    """Global multi-head self-attention over the positions of (N, C, *spatial) inputs, with an infinite-width kernel.

    neural-tangents' ``GlobalSelfAttention`` (Hron et al. 2020, "Infinite attention"), as a real module. Weights are
    drawn N(0, 1) and scaled in forward (NTK parametrization, as neural-tangents): per head h, with inputs X (P, C)
    (positions by channels, after positional embeddings),

        keys K_h = X W_h,   queries = keys (tied, scaling="linear"),
        A_h = mechanism(sqrt(query_var key_var) K_h K_h^T / (C key_channels)),   mechanism over the key positions,
        out = concat_h(A_h X_val V_h) W_out sqrt(value_var out_var / (value_channels heads C)) + sqrt(bias_var) b.

    With scaling="linear" (logits over C key_channels, key and query weights tied) the logits converge to a number
    per pair of positions as the widths grow, and the kernel has a closed form (`from_module`); scaling="standard"
    (1 / sqrt(C key_channels), separate query weights) is the usual transformer layer, which this module also runs,
    but whose infinite-width kernel has no closed form (the logits stay random), so `from_module` refuses it.

    Args:
        in_channels, out_channels: C of the input and of the output.
        heads: number of heads (the kernel is their infinite-count limit; a finite network needs many heads to be
            close to Gaussian).
        mechanism: "softmax" (over the key positions), "identity", "abs" or "relu".
        key_var, query_var, value_var, out_var: weight variances (neural-tangents' W_*_std squared); the kernel
            depends on key_var * query_var and value_var * out_var.
        bias_var: the output bias variance (b_std squared), or None for no bias.
        positional: None, "sum" (embeddings added to the keys' input) or "concat" (appended as channels); values
            never see them (neural-tangents' val_pos_emb=False).
        key_channels, value_channels: widths per head (default out_channels).
        spatial_shape: the spatial shape of the inputs, needed for positional embeddings.
        positional_var: the embeddings' variance (W_pos_emb_std squared).
        positional_decay, positional_p_norm: their covariance across positions (see positional_covariance).
        positional_channels: channels of "concat" embeddings (default in_channels).
        scaling: "linear" or "standard" (see above).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from gpytorch_nngp import NNGPKernel, SelfAttention
        >>> net = nn.Sequential(nn.Conv1d(1, 8, 3, padding=1), SelfAttention(8, 8, heads=2), nn.ReLU(),
        ...                     nn.Flatten(), nn.Linear(48, 1))
        >>> net(torch.randn(2, 1, 6)).shape
        torch.Size([2, 1])
        >>> NNGPKernel.from_module(net, input_shape=(1, 6))(torch.randn(3, 6)).shape
        torch.Size([3, 3])
    """

    def __init__(self, in_channels: int, out_channels: int, heads: int = 1, mechanism: str = "softmax",
                 key_var: float = 1.0, query_var: float = 1.0, value_var: float = 1.0, out_var: float = 1.0,
                 bias_var=None, positional=None, *, key_channels=None, value_channels=None, spatial_shape=None,
                 positional_var: float = 1.0, positional_decay=None, positional_p_norm: float = 2.0,
                 positional_channels=None, scaling: str = "linear"):
        super().__init__()
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels), ("heads", heads),
                            ("key_channels", key_channels), ("value_channels", value_channels),
                            ("positional_channels", positional_channels)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"SelfAttention: {name} must be a positive int, got {value!r}")
        for name, value in (("key_var", key_var), ("query_var", query_var), ("value_var", value_var),
                            ("out_var", out_var), ("bias_var", bias_var), ("positional_var", positional_var)):
            if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool)
                                      or not value >= 0 or value == float("inf")):
                raise ValueError(f"SelfAttention: {name} must be a finite variance >= 0, got {value!r}")
        if mechanism not in ATTENTION_MECHANISMS:
            raise ValueError(f"SelfAttention: mechanism must be one of {', '.join(map(repr, ATTENTION_MECHANISMS))}, "
                             f"got {mechanism!r}")
        if positional not in POSITIONAL:
            raise ValueError(f"SelfAttention: positional must be None, 'sum' or 'concat', got {positional!r}")
        if scaling not in ("linear", "standard"):
            raise ValueError(f"SelfAttention: scaling must be 'linear' or 'standard', got {scaling!r}")
        if positional is not None and spatial_shape is None:
            raise ValueError("SelfAttention: positional embeddings need spatial_shape, the input's spatial shape")
        if positional == "sum" and positional_channels not in (None, in_channels):
            raise ValueError("SelfAttention: 'sum' embeddings have in_channels channels; positional_channels is for "
                             "'concat'")
        self.in_channels, self.out_channels, self.heads = in_channels, out_channels, heads
        self.mechanism, self.scaling, self.positional = mechanism, scaling, positional
        self.key_var, self.query_var, self.value_var, self.out_var = (float(v) for v in
                                                                       (key_var, query_var, value_var, out_var))
        self.bias_var = None if bias_var is None else float(bias_var)
        self.key_channels = key_channels or out_channels
        self.value_channels = value_channels or out_channels
        self.spatial_shape = None if spatial_shape is None else tuple(int(s) for s in spatial_shape)
        self.positional_var, self.positional_decay = float(positional_var), positional_decay
        self.positional_p_norm = float(positional_p_norm)
        self.positional_channels = (positional_channels or in_channels) if positional else 0
        key_in = in_channels + (self.positional_channels if positional == "concat" else 0)
        self.key_weight = torch.nn.Parameter(torch.randn(heads, key_in, self.key_channels))
        self.query_weight = (torch.nn.Parameter(torch.randn(heads, key_in, self.key_channels))
                             if scaling == "standard" else None)
        self.value_weight = torch.nn.Parameter(torch.randn(heads, in_channels, self.value_channels))
        self.out_weight = torch.nn.Parameter(torch.randn(heads * self.value_channels, out_channels))
        self.bias = None if bias_var is None else torch.nn.Parameter(torch.randn(out_channels))
        self.embedding = None
        if positional:
            positions = 1
            for s in self.spatial_shape:
                positions *= s
            self.embedding = torch.nn.Parameter(torch.randn(self.positional_channels, positions))

    def positional_covariance(self, dtype=torch.float64) -> torch.Tensor:
        """The (P, P) covariance of one channel of the (unscaled) positional embeddings."""
        return positional_covariance(self.spatial_shape, self.positional_decay, self.positional_p_norm, dtype)

    def _positional_factor(self, like: torch.Tensor) -> torch.Tensor:
        """The Cholesky factor of positional_covariance, computed once per dtype, device and decay (not per call)."""
        key = (like.dtype, like.device, self.spatial_shape, self.positional_decay, self.positional_p_norm)
        cached = self.__dict__.get("_factor")
        if cached is None or cached[0] != key:
            factor = torch.linalg.cholesky(self.positional_covariance(torch.float64).to(like.device)).to(like.dtype)
            self.__dict__["_factor"] = cached = (key, factor)
        return cached[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[0], x.shape[1]
        spatial = x.shape[2:]
        if c != self.in_channels:
            raise ValueError(f"SelfAttention: expected {self.in_channels} channels, got input of shape "
                             f"{tuple(x.shape)}")
        values_in = x.reshape(n, c, -1).transpose(1, 2)  # (N, P, C)
        keys_in = values_in
        if self.positional:
            if tuple(spatial) != self.spatial_shape:
                raise ValueError(f"SelfAttention: built for spatial_shape {self.spatial_shape}, got input of shape "
                                 f"{tuple(x.shape)}")
            emb = self.embedding
            if self.positional_decay is not None:
                emb = emb @ self._positional_factor(emb).T
            emb = (emb * self.positional_var ** 0.5).T  # (P, C_pe)
            if self.positional == "sum":
                keys_in = values_in + emb
            else:
                keys_in = torch.cat([values_in, emb.expand(n, *emb.shape)], -1)
        keys = torch.einsum("npc,hck->nhpk", keys_in, self.key_weight)
        if self.scaling == "linear":
            queries, norm = keys, keys_in.shape[-1] * self.key_channels
        else:
            queries = torch.einsum("npc,hck->nhpk", keys_in, self.query_weight)
            norm = (keys_in.shape[-1] * self.key_channels) ** 0.5
        logits = queries @ keys.transpose(-1, -2) * ((self.query_var * self.key_var) ** 0.5 / norm)
        weights = MECHANISMS[self.mechanism](logits)
        values = torch.einsum("npc,hcv->nhpv", values_in, self.value_weight)
        heads = (weights @ values).permute(0, 2, 1, 3).reshape(n, values_in.shape[1], -1)  # (N, P, H Cv)
        scale = (self.value_var * self.out_var / (self.value_channels * self.heads * c)) ** 0.5
        out = heads @ self.out_weight * scale
        if self.bias is not None:
            out = out + self.bias * self.bias_var ** 0.5
        return out.transpose(1, 2).reshape(n, self.out_channels, *spatial)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, heads={self.heads}, mechanism={self.mechanism!r}, "
                f"positional={self.positional!r}, scaling={self.scaling!r}")
