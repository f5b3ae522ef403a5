"""Weighted layers: dense (torch.nn.Linear) and convolution (torch.nn.Conv1d/2d), NTK parametrization.

With weights N(0, w / fan_in) and biases N(0, b) (Novak et al. 2019; Arora et al. 2019 for the NTK):

- dense (flat):  cov' = w cov + b,  theta' = cov' + w theta.
- transposed conv (stride s, taps K, torch's padding p and output_padding q, per axis): output o receives input
                 i through tap t where i s + t - p = o. With the inputs spread s apart (zeros between, on both axes of
                 the pair) it is a stride-1 conv with padding (K - 1 - p, K - 1 - p + q), normalized by K as
                 neural-tangents' ConvTranspose (fan-in C K, whatever the number of taps that land).
- conv, taps S:  cov'_ij = w / |S| sum_{s in S} cov_{i+s, j+s} + b,  theta' = cov' + w / |S| sum_s theta_{i+s, j+s}.
                 Both indices move together, so a k x k filter is a k-tap stencil along (h, h') and then along
                 (w, w'): 2k shifted sums, not k^2. Zero padding drops taps that fall outside (still dividing by
                 |S|), circular padding wraps them, stride keeps every s-th output.
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Optional, Sequence, Tuple

import torch

from .flat import Affine
from .layer import Layer
from .state import GAUSSIAN, Geometry
from .stencil import stencil, window_out


class Dense(Layer):
    """A fully connected layer on a flat state (torch.nn.Linear): cov' = w cov + b, theta' = cov' + w theta."""

    weighted = True

    def __init__(self, index: int = 0, bias: bool = True, in_features: Optional[int] = None,
                 out_features: Optional[int] = None):
        self.index, self.bias = index, bias
        self.in_features, self.out_features = in_features, out_features

    def _output(self, geometry):
        # torch.nn.Linear acts on the last axis: on an unflattened (C, ..., 1) input it would mix the wrong axis.
        strict = self.in_features is not None and geometry.channels is not None
        if geometry.spatial and (strict or math.prod(geometry.spatial) != 1):
            raise ValueError(f"a dense layer needs a flat input, got {geometry.shape()}: flatten it "
                             "first (torch.nn.Flatten) or pool it (torch.nn.AdaptiveAvgPool2d(1))")
        if strict and geometry.pooled_axes:
            shape = (geometry.channels,) + (1,) * geometry.pooled_axes
            raise ValueError(f"a dense layer needs a flat input, got shape {shape} after global average pooling (torch "
                             "keeps the pooled axes): flatten it first (torch.nn.Flatten)")
        if strict and self.in_features != geometry.channels:
            raise ValueError(f"Linear with in_features={self.in_features} gets {geometry.channels} features here: "
                             "fix in_features (or input_shape)")
        return replace(geometry, law=GAUSSIAN, channels=self.out_features, why="", pooled_axes=0)

    def apply(self, state, ctx):
        w = ctx.parameter(ctx.weight_var, self.index, self.input)
        out = w * state.cov
        if self.bias:
            out = out + ctx.parameter(ctx.bias_var, self.index, self.input)
        theta = state.theta
        if ctx.ntk:
            theta = out if theta is None else out + w * theta
        return state.with_(out, theta)

    def flat(self):
        return Affine(self.bias, self.index)


class Conv(Layer):
    """A convolution (torch.nn.Conv1d / Conv2d, dilation 1, one group): per spatial axis a filter of `kernel_size`
    taps, `stride`, and (lo, hi) zero or circular padding."""

    weighted = True

    def __init__(self, kernel_size: Sequence[int], stride: Sequence[int], padding: Sequence[Tuple[int, int]],
                 circular: bool = False, index: int = 0, bias: bool = True, in_channels: Optional[int] = None,
                 out_channels: Optional[int] = None):
        self.kernel_size, self.stride = tuple(kernel_size), tuple(stride)
        self.padding, self.circular = tuple(tuple(p) for p in padding), circular
        self.index, self.bias = index, bias
        self.in_channels, self.out_channels = in_channels, out_channels

    def low_rank(self, state):
        """A per-node dense layer (kernel size 1, stride 1, no padding): Q' = [sqrt(w) Q, sqrt(b) 1]; theta' = K' +
        w theta concatenates the factors."""
        if not (all(k == 1 for k in self.kernel_size) and all(s == 1 for s in self.stride)
                and all(p == (0, 0) for p in self.padding)):
            return super().low_rank(state)
        w = state.variance(state.weight_var, self.index)
        parts = [w.sqrt() * state.q]
        if self.bias:
            parts.append(state.variance(state.bias_var, self.index).sqrt() * torch.ones_like(state.q[:, :1]))
        state.q = torch.cat(parts, -1)
        if state.ntk:
            state.t = state.q if state.t is None else torch.cat([state.q, w.sqrt() * state.t], -1)
        return state

    def _check_input(self, geometry):
        if len(geometry.spatial) != len(self.kernel_size):
            raise ValueError(f"a {len(self.kernel_size)}-d convolution got an input of {geometry.shape()}")
        if None not in (self.in_channels, geometry.channels) and self.in_channels != geometry.channels:
            raise ValueError(f"a convolution with in_channels={self.in_channels} gets an input of "
                             f"{geometry.shape()} (channel first): fix in_channels, or input_shape if it is "
                             "channel last")

    def _output(self, geometry):
        self._check_input(geometry)
        sizes = []
        for size, k, s, (lo, hi) in zip(geometry.spatial, self.kernel_size, self.stride, self.padding):
            if self.circular and max(lo, hi) > size:
                raise ValueError(f"circular padding {max(lo, hi)} exceeds the input size {size}")
            out = window_out(size, k, s, lo, hi)
            if out < 1:
                raise ValueError(f"a convolution with kernel size {k} and padding ({lo}, {hi}) does not fit an input "
                                 f"of size {size}")
            sizes.append(out)
        return Geometry(tuple(sizes), geometry.full, GAUSSIAN, self.out_channels)

    def _spatial(self, x, geometry, ctx):
        """The stencil sum (without 1 / taps) along every axis; intermediates go back to the workspace."""
        nd = len(geometry.spatial)
        for a, (k, s, (lo, hi)) in enumerate(zip(self.kernel_size, self.stride, self.padding)):
            if k == 1 and s == 1 and lo == hi == 0:
                continue
            dims = (-2 * (nd - a), -2 * (nd - a) + 1) if geometry.full else (-(nd - a),)
            out = stencil(x, dims, k, s, lo, hi, self.circular, normalize=False, ctx=ctx)
            if a:
                ctx.release(x)  # an intermediate of this layer
            x = out
        return x

    def _taps(self) -> int:
        return math.prod(self.kernel_size)

    def apply(self, state, ctx):
        cov, theta = state.cov, state.theta
        w = ctx.parameter(ctx.weight_var, self.index, self.input) / self._taps()
        b = ctx.parameter(ctx.bias_var, self.index, self.input) if self.bias else None
        summed = self._spatial(cov, self.input, ctx)
        inplace = ctx.inplace and torch.broadcast_shapes(summed.shape, w.shape) == summed.shape
        if inplace and summed is not cov:
            out = summed.mul_(w) if b is None else summed.mul_(w).add_(b)
        else:
            out = w * summed if b is None else w * summed + b
        if ctx.ntk:
            if theta is None:
                theta = out.clone()
            else:
                spread = self._spatial(theta, self.input, ctx)
                if inplace and spread is not theta:
                    ctx.release(theta)
                    theta = spread.mul_(w).add_(out)
                else:
                    theta = out + w * spread
        ctx.release(cov)
        return state.with_(out, theta)

    def describe(self):
        return f"Conv(kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding})"


class ConvTranspose(Conv):
    """A transposed convolution (torch.nn.ConvTranspose1d / 2d, dilation 1, one group, zero padding): per spatial
    axis `kernel_size` taps, `stride`, and torch's (padding, output_padding) as the (lo, hi) pair of `padding`."""

    low_rank = Layer.low_rank  # no low-rank map (a Conv's per-node rule does not hold for its stencil)

    def _output(self, geometry):
        self._check_input(geometry)
        sizes = []
        for size, k, s, (p, q) in zip(geometry.spatial, self.kernel_size, self.stride, self.padding):
            if p > k - 1:
                raise ValueError(f"a transposed convolution with padding {p} >= kernel size {k} crops more than its "
                                 "taps reach: use padding <= kernel_size - 1")
            if q >= s:
                raise ValueError(f"output_padding {q} must be smaller than the stride {s}")
            sizes.append((size - 1) * s - 2 * p + k + q)
        return Geometry(tuple(sizes), geometry.full, GAUSSIAN, self.out_channels)

    def _spatial(self, x, geometry, ctx):
        nd = len(geometry.spatial)
        for a, (k, s, (p, q)) in enumerate(zip(self.kernel_size, self.stride, self.padding)):
            dims = (-2 * (nd - a), -2 * (nd - a) + 1) if geometry.full else (-(nd - a),)
            spread = _spread(x, dims, s)
            out = stencil(spread, dims, k, 1, k - 1 - p, k - 1 - p + q, normalize=False, ctx=ctx)
            if spread is not x:
                ctx.release(spread)
            if a:
                ctx.release(x)  # an intermediate of this layer
            x = out
        return x

    def describe(self):
        return (f"ConvTranspose(kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={tuple(p for p, _ in self.padding)}, output_padding={tuple(q for _, q in self.padding)})")


def _spread(x: torch.Tensor, dims, stride: int) -> torch.Tensor:
    """x with its entries along `dims` spread `stride` apart, zeros between: size L becomes (L - 1) stride + 1."""
    if stride == 1:
        return x
    shape = list(x.shape)
    index = [slice(None)] * x.dim()
    for d in dims:
        shape[d] = (shape[d] - 1) * stride + 1
        index[d] = slice(None, None, stride)
    out = x.new_zeros(shape)
    out[tuple(index)] = x
    return out
