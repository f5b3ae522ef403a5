"""Layer normalization over all features (channels and positions), no affine part, of a Gaussian input:
cov / sqrt((v(x) + eps)(v(x') + eps)), theta alike, with v the variance averaged over positions (neural-tangents'
stax.LayerNorm over the channel and spatial axes). The normalizer of Gaussian values tends to a number per input, so
the output is Gaussian again."""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from .layer import Layer
from .state import GAUSSIAN, diagonal


class LayerNorm(Layer):
    """torch.nn.LayerNorm over all of a point's features, elementwise_affine=False."""

    nonlinear_in_state = True

    linear = True

    def __init__(self, eps: float = 1e-5, normalized_shape: Optional[Sequence[int]] = None):
        self.eps = float(eps)
        self.normalized_shape = None if normalized_shape is None else tuple(normalized_shape)

    def _output(self, geometry):
        if self.normalized_shape is not None and (len(self.normalized_shape) != 1 + len(geometry.spatial)
                                                  or self.normalized_shape[1:] != geometry.spatial):
            raise ValueError(f"LayerNorm{self.normalized_shape} must normalize over all features (channels and "
                             f"every spatial axis) of its input, here of spatial shape {geometry.describe()}: other "
                             "axes have no infinite-width limit")
        if self.normalized_shape is not None and None not in (geometry.channels, self.normalized_shape[:1]) and \
                self.normalized_shape[0] != geometry.channels:
            raise ValueError(f"LayerNorm{self.normalized_shape} gets an input of {geometry.shape()}: fix "
                             "normalized_shape")
        if geometry.law != GAUSSIAN and not self.on_input:
            raise ValueError("LayerNorm has an infinite-width limit only on Gaussian inputs: place it right after a "
                             "Linear or Conv layer (or a residual sum of such), not after an activation or pooling")
        return geometry

    def transform(self, x, side):
        nd = len(self.input.spatial)
        return torch.nn.functional.layer_norm(x, x.shape[x.dim() - nd - 1:], eps=self.eps)

    def record_axes(self):
        return len(self.input.spatial)

    def apply(self, state, ctx):
        v1, v2 = state.records(self.key, lambda c: diagonal(c, self.input), self.record_axes())
        nd = len(self.input.spatial)
        if nd:
            v1, v2 = v1.mean(tuple(range(-nd, 0))), v2.mean(tuple(range(-nd, 0)))
        shape = [1] * self.input.axes
        scale = (v1 + self.eps).rsqrt().reshape(*v1.shape, *shape) * (v2 + self.eps).rsqrt().reshape(*v2.shape, *shape)
        theta = state.theta
        return state.with_(state.cov * scale, None if theta is None else theta * scale)
