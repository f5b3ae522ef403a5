"""Shifted sums along spatial axes: the one primitive of convolutions and average pooling on a pair state."""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from .state import Context


def _pad(x: torch.Tensor, dim: int, lo: int, hi: int, circular: bool) -> torch.Tensor:
    """x padded along `dim` by lo and hi entries: zeros, or wrapped around (circular)."""
    if lo == 0 and hi == 0:
        return x
    size = x.shape[dim]
    if circular:
        parts = ([x.narrow(dim, size - lo, lo)] if lo else []) + [x] + ([x.narrow(dim, 0, hi)] if hi else [])
        return torch.cat(parts, dim)
    shape = list(x.shape)
    parts = []
    if lo:
        shape[dim] = lo
        parts.append(x.new_zeros(shape))
    parts.append(x)
    if hi:
        shape[dim] = hi
        parts.append(x.new_zeros(shape))
    return torch.cat(parts, dim)


def stencil(x: torch.Tensor, dims: Sequence[int], taps: int, stride: int, lo: int, hi: int,
            circular: bool = False, normalize: bool = True, ctx: Optional[Context] = None) -> torch.Tensor:
    """(1 / taps) sum_{t < taps} x[.., o * stride + t - lo, ..] along all `dims` at once (the same shift on each).

    One conv or pooling window along one spatial axis: on the pair axes (h, h') together for a conv, on one of
    them for average pooling. dims are negative axis numbers; out-of-range indices read zero (or wrap, circular).
    normalize=False leaves out the 1 / taps; ctx: where the output buffer comes from (a workspace, without autograd).
    """
    size = x.shape[dims[0]]
    out_len = window_out(size, taps, stride, lo, hi)
    if stride == 1 and not circular:
        # Zero padding, stride 1: each tap adds a shifted slice where it lands inside x (no padded copy of x).
        # Start from a tap that covers every output (the centre tap of "same", any tap of "valid").
        shifts = [t - lo for t in range(taps)]
        cover = [d for d in shifts if d >= 0 and out_len + d <= size]
        if cover:
            first = x[_slices(x.dim(), dims, cover[0], cover[0] + out_len)]
            total = ctx.empty(first.shape, x).copy_(first) if ctx is not None and ctx.inplace else first.clone()
            shifts.remove(cover[0])
        else:
            shape = list(x.shape)
            for d in dims:
                shape[d] = out_len
            total = x.new_zeros(shape)
        for d in shifts:
            first, last = max(0, -d), min(out_len, size - d)  # outputs o with 0 <= o + d < size
            if first < last:
                total[_slices(x.dim(), dims, first, last)] += x[_slices(x.dim(), dims, first + d, last + d)]
        return total.mul_(1.0 / taps) if normalize else total
    for d in dims:
        x = _pad(x, d, lo, hi, circular)
    total = None
    for t in range(taps):
        part = x[_slices(x.dim(), dims, t, t + (out_len - 1) * stride + 1, stride)]
        total = part.clone() if total is None else total.add_(part)
    return total.mul_(1.0 / taps) if normalize else total


def _slices(ndim: int, dims: Sequence[int], start: int, stop: int, step: int = 1):
    index = [slice(None)] * ndim
    for d in dims:
        index[d] = slice(start, stop, step)
    return tuple(index)


def window_out(size: int, taps: int, stride: int, lo: int, hi: int) -> int:
    return (size + lo + hi - taps) // stride + 1
