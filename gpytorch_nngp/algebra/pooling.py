"""Linear readouts and poolings of the spatial axes.

- average pooling: cov'_IJ = mean of cov_ij over i in window I, j in window J: a stencil on each index alone.
- flatten:         mean_i cov_ii (only the diagonal i = j is needed below it: O(P), not O(P^2), per pair).
- global pooling:  mean_ij cov_ij.
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Sequence

import torch

from .layer import Layer
from .state import diagonal
from .stencil import stencil, window_out


class AvgPool(Layer):
    """Average pooling (torch.nn.AvgPool1d/2d with count_include_pad): needs the full state below it."""

    linear = True

    def __init__(self, kernel_size: Sequence[int], stride: Sequence[int], padding: Sequence[int]):
        self.kernel_size, self.stride, self.padding = tuple(kernel_size), tuple(stride), tuple(padding)

    def needs_full(self):
        return True

    def _output(self, geometry):
        if len(geometry.spatial) != len(self.kernel_size):
            raise ValueError(f"a {len(self.kernel_size)}-d average pooling got an input of spatial shape "
                             f"{geometry.describe()}")
        sizes = [window_out(size, k, s, p, p) for size, k, s, p in
                 zip(geometry.spatial, self.kernel_size, self.stride, self.padding)]
        if min(sizes) < 1:
            raise ValueError(f"average pooling with window {self.kernel_size} does not fit spatial shape "
                             f"{geometry.describe()}")
        return replace(geometry.linear_image("averages of activations over a window"), spatial=tuple(sizes),
                       full=True)

    def transform(self, x, side):
        nd = len(self.kernel_size)
        pool = torch.nn.functional.avg_pool1d if nd == 1 else torch.nn.functional.avg_pool2d
        flat = x.reshape(-1, *x.shape[x.dim() - nd - 1:])
        out = pool(flat, self.kernel_size, self.stride, self.padding, count_include_pad=True)
        return out.reshape(*x.shape[: x.dim() - nd - 1], *out.shape[1:])

    def _spatial(self, x, geometry):
        nd = len(geometry.spatial)
        for a, (k, s, p) in enumerate(zip(self.kernel_size, self.stride, self.padding)):
            for d in (-2 * (nd - a), -2 * (nd - a) + 1):  # each index of the pair on its own
                x = stencil(x, (d,), k, s, p, p)
        return x

    def apply(self, state, ctx):
        theta = state.theta
        return state.with_(self._spatial(state.cov, self.input),
                           None if theta is None else self._spatial(theta, self.input))

    def describe(self):
        return f"AvgPool(kernel_size={self.kernel_size}, stride={self.stride})"


class GlobalAvgPool(Layer):
    """Global average pooling to a flat state: mean over all position pairs."""

    linear = True

    def needs_full(self):
        return True

    def _output(self, geometry):
        return replace(geometry.linear_image("averages of activations over all positions"), spatial=(), full=False,
                       pooled_axes=len(geometry.spatial))

    def transform(self, x, side):
        nd = len(self.input.spatial)
        return x.mean(tuple(range(-nd, 0))) if nd else x

    def apply(self, state, ctx):
        dims = tuple(range(-self.input.axes, 0))
        if not dims:
            return state
        theta = state.theta
        return state.with_(state.cov.mean(dims), None if theta is None else theta.mean(dims))


class Flatten(Layer):
    """Flatten to a flat state (followed by a dense readout): mean of the diagonal i = j."""

    linear = True

    def needs_full(self):
        return False

    def _output(self, geometry):
        channels = None if geometry.channels is None else geometry.channels * math.prod(geometry.spatial)
        return replace(geometry, spatial=(), full=False, channels=channels, pooled_axes=0)

    def transform(self, x, side):
        return x.flatten(x.dim() - len(self.input.spatial) - 1)

    def apply(self, state, ctx):
        def reduce(x):
            x = diagonal(x, self.input)
            dims = tuple(range(-len(self.input.spatial), 0))
            return x.mean(dims) if dims else x

        return state.with_(reduce(state.cov), None if state.theta is None else reduce(state.theta))


class ToDiagonal(Layer):
    """Keeps only the diagonal i = j of a full state (inserted by Network where nothing above needs more)."""

    linear = True

    def _output(self, geometry):
        return replace(geometry, full=False)

    def apply(self, state, ctx):
        theta = state.theta
        return state.with_(diagonal(state.cov, self.input), None if theta is None else diagonal(theta, self.input))
