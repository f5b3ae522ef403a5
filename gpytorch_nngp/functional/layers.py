"""The layer algebra: infinite-width limits of conv, pooling, residual and normalization layers.

Every layer maps the kernel state of a pair of inputs to the state after the layer (Novak et al. 2019, "Bayesian deep
convolutional networks with many channels are Gaussian processes"; Arora et al. 2019 for the NTK; the layer set of
neural-tangents' `stax`). With infinitely many i.i.d. channels, the state is the covariance of one channel between
positions i of x and j of x':

    cov_ij = E[z_i(x) z_j(x')],        theta_ij = the NTK between the same two outputs,

one P x P matrix per pair for P spatial positions. Layers, NTK parametrization (weights N(0, w / fan_in)), with
E = E[phi(u) phi(v)] and Edot = E[phi'(u) phi'(v)] per position pair (activations.py):

- activation:      cov <- E(cov),  theta <- Edot(cov) theta; variances at positions i (of x) and j (of x').
- conv, taps S:    cov'_ij = w / |S| sum_{s in S} cov_{i+s, j+s} + b,  theta' = cov' + w / |S| sum_s theta_{i+s, j+s}.
                   Both indices move together, so a k x k filter is a k-tap stencil along (h, h') and then along
                   (w, w'): 2k shifted sums, not k^2. Zero padding drops taps that fall outside (still dividing by
                   |S|), circular padding wraps them, stride keeps every s-th output.
- dense (flat):    cov' = w cov + b, theta' = cov' + w theta (the fully connected network: P = 1).
- average pooling: cov'_IJ = mean of cov_ij over i in window I, j in window J: a stencil on each index alone.
- flatten:         mean_i cov_ii (only the diagonal i = j is needed below it: O(P), not O(P^2), per pair).
- global pooling:  mean_ij cov_ij.
- layer norm over all features, on a Gaussian input: cov_ij / sqrt((v(x) + eps)(v(x') + eps)), theta alike, with
                   v(x) the variance averaged over positions.
- residual x + f(x) where f ends in a conv/dense layer (zero-mean weights independent of x): cov_x + cov_f, and the
                   same for theta.

Layout. A pair state has `lead` point axes in front of its spatial axes: (..., n, m) for a kernel matrix, (..., n)
for paired inputs (a kernel diagonal, or a point with itself). Spatial axes are interleaved pairs
(h, h', w, w') when the full P x P matrix is kept (`full`), or just (h, w) when only its diagonal i = j is (the
state below a flatten readout). A flat state has no spatial axes. `Network.build` decides where the diagonal is
enough: full from the input up to the last pooling layer, diagonal from there to a flatten.

Memory management (row/column tiles, buffers) belongs to the evaluation code (kernels/architecture.py and
backends/), not to these maps.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from .activations import ABReLU, Activation, Numerical, compose
from .safe_math import abrelu_dual_into

# What the values at a point of the network are, in the infinite-width limit (Geometry.law). Only "input" and
# "gaussian" values may go into an activation: the dual maps E[phi(u) phi(v)] assume (u, v) jointly Gaussian.
INPUT = "input"          # a fixed function of the network's input (before any Linear/Conv): computed exactly
GAUSSIAN = "gaussian"    # zero-mean Gaussian: outputs of Linear/Conv layers and linear maps (pooling, sums) of them
ACTIVATED = "activated"  # an elementwise function of Gaussian values: another activation composes with it
MIXED = "mixed"          # anything else (averages of activations, input plus a Gaussian branch): linear layers only


@dataclass(frozen=True)
class Geometry:
    """The shape of a layer's input or output.

    spatial: positions per spatial axis, () for a flat (fully connected) state.
    full: the state keeps the full P x P matrix per pair (else only its diagonal).
    law: what the values are in the limit (INPUT, GAUSSIAN, ACTIVATED or MIXED); activations and LayerNorm need
        Gaussian values.
    channels: the channel count (features of a flat state) of the finite module, when known: the kernel does not
        depend on it, but a module whose layers disagree on it is not the network the user thinks it is.
    why: for MIXED values, what they are (for error messages).
    pooled_axes: size-1 spatial axes that torch still has after a global average pooling (AdaptiveAvgPool2d(1)
        gives (C, 1, 1)) until a flatten: a Linear there would act on the last of them, not on the channels.
    """

    spatial: Tuple[int, ...]
    full: bool = False
    law: str = GAUSSIAN
    channels: Optional[int] = None
    why: str = ""
    pooled_axes: int = 0

    @property
    def axes(self) -> int:
        """Number of spatial axes of the pair state."""
        return len(self.spatial) * (2 if self.full else 1)

    def describe(self) -> str:
        return "flat" if not self.spatial else "x".join(map(str, self.spatial))

    def shape(self) -> str:
        """The per-point tensor shape of the finite module, e.g. "(4, 6, 6)", or the spatial shape alone."""
        if self.channels is None:
            return f"spatial shape {self.describe()}"
        return f"shape {(self.channels, *self.spatial)}"

    def linear_image(self, why: str) -> Geometry:
        """The law of a linear map (average pooling) of these values: Gaussian and fixed values stay so, an average
        of activations is neither (`why` says what it is)."""
        if self.law in (INPUT, GAUSSIAN):
            return self
        return replace(self, law=MIXED, why=self.why if self.law == MIXED else why)


class _Run:
    """What one propagation needs besides the state: variances, parameters, NTK flag, layout.

    weight_var, bias_var: (*batch, L) variances, L = 1 (shared) or one per conv/dense layer.
    lead: point axes of the state (2 for a matrix, 1 for paired inputs).
    variances: None to read each layer's variances off the state itself and record them in `recorded` (a point with
        itself), else two dicts layer key -> (..., n, *spatial) and (..., m, *spatial) from earlier such runs.
    workspace: a list of free tensors, given by evaluation code that needs no autograd: layers may then update their
        own intermediates in place, take buffers from it (`empty`) and give back what they no longer need
        (`release`). Fresh allocations of large tensors cost as much on a CPU as several arithmetic passes.
    """

    def __init__(self, weight_var, bias_var, lead: int, ntk: bool, variances=None, workspace: Optional[list] = None):
        self.weight_var, self.bias_var = weight_var, bias_var
        self.lead, self.ntk = lead, ntk
        self.variances = variances
        self.recorded: Dict[int, torch.Tensor] = {}
        self.workspace = workspace
        self.protected: set = set()  # ids of states still needed elsewhere (a residual's skip path)

    @property
    def inplace(self) -> bool:
        return self.workspace is not None

    def empty(self, shape, like: torch.Tensor) -> torch.Tensor:
        """A tensor of `shape` (contents undefined): from the workspace if one fits, else new."""
        shape = torch.Size(shape)
        if self.workspace:
            for i, t in enumerate(self.workspace):
                if t.shape == shape and t.dtype == like.dtype and t.device == like.device:
                    return self.workspace.pop(i)
        return torch.empty(shape, dtype=like.dtype, device=like.device)

    def release(self, *tensors) -> None:
        """Gives tensors this layer created and no longer needs back to the workspace (no-op with autograd)."""
        if self.workspace is None:
            return
        for t in tensors:
            if t is not None and id(t) not in self.protected and t.is_contiguous() and t._base is None:
                self.workspace.append(t)

    def parameter(self, values: torch.Tensor, index: int, geometry: Geometry) -> torch.Tensor:
        """The variance of parameterized layer `index`, shaped to broadcast against a state of that geometry."""
        value = values[..., index if values.shape[-1] > 1 else 0]
        return value.reshape(*value.shape, *([1] * (self.lead + geometry.axes)))

    def point_variances(self, key: int, cov: torch.Tensor, geometry: Geometry):
        """Per-position variances of the two sides of the state, shaped (..., n, [1,] *spatial) and (..., [1,] m,
        *spatial) (lead 2) or both (..., n, *spatial) (lead 1), before the full layout is applied."""
        if self.variances is None:
            v = diagonal(cov, geometry)
            self.recorded[key] = v
            return v, v
        v1, v2 = (self.variances[0][key], self.variances[1][key])
        if self.lead == 2:
            k = len(geometry.spatial)
            v1, v2 = v1.unsqueeze(-k - 1), v2.unsqueeze(-k - 2)
        return v1, v2


def diagonal(cov: torch.Tensor, geometry: Geometry) -> torch.Tensor:
    """The entries i = j of a state, (..., *spatial): the state itself unless it is full."""
    if not geometry.full:
        return cov
    nd = len(geometry.spatial)
    out = cov
    for a in range(nd):  # (..., h, h', w, w') -> (..., w, w', h) -> (..., h, w): each diagonal is appended last
        first = -(2 * (nd - a) + a)
        out = out.diagonal(dim1=first, dim2=first + 1)
    return out


def layout(v: torch.Tensor, geometry: Geometry, side: int) -> torch.Tensor:
    """Per-position variances (..., *spatial) shaped to broadcast against a full state: (..., h, 1, w, 1) for the
    first input (side 0), (..., 1, h, 1, w) for the second (side 1). Unchanged for diagonal and flat states."""
    if not geometry.full or not geometry.spatial:
        return v
    nd = len(geometry.spatial)
    shape = list(v.shape[: v.dim() - nd])
    for size in v.shape[v.dim() - nd:]:
        shape += [size, 1] if side == 0 else [1, size]
    return v.reshape(shape)


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
            circular: bool = False, normalize: bool = True, run: Optional[_Run] = None) -> torch.Tensor:
    """(1 / taps) sum_{t < taps} x[.., o * stride + t - lo, ..] along all `dims` at once (the same shift on each).

    One conv or pooling window along one spatial axis: on the pair axes (h, h') together for a conv, on one of
    them for average pooling. dims are negative axis numbers; out-of-range indices read zero (or wrap, circular).
    normalize=False leaves out the 1 / taps; run: where the output buffer comes from (a workspace, without autograd).
    """
    size = x.shape[dims[0]]
    out_len = _window_out(size, taps, stride, lo, hi)
    if stride == 1 and not circular:
        # Zero padding, stride 1: each tap adds a shifted slice where it lands inside x (no padded copy of x).
        # Start from a tap that covers every output (the centre tap of "same", any tap of "valid").
        shifts = [t - lo for t in range(taps)]
        cover = [d for d in shifts if d >= 0 and out_len + d <= size]
        if cover:
            first = x[_slices(x.dim(), dims, cover[0], cover[0] + out_len)]
            total = run.empty(first.shape, x).copy_(first) if run is not None and run.inplace else first.clone()
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


def _window_out(size: int, taps: int, stride: int, lo: int, hi: int) -> int:
    return (size + lo + hi - taps) // stride + 1


# ---------------------------------------------------------------------------------------------------------------------
class Layer:
    """One map of the algebra. `build` checks the input geometry and returns the output's; `apply` maps a state.

    Subclasses set `key` (a unique number, assigned by Network) and read their input geometry from `self.input`.
    """

    key: int = -1
    origin: Optional[str] = None  # where the layer came from (a torch module's name), for error messages
    on_input: bool = False  # set by Network for layers it applies to the input points themselves (its prefix)
    tied: Optional[str] = None  # Linear/Conv layers: the first use of the module, when the module is used again
    input: Geometry
    output: Geometry

    def build(self, geometry: Geometry) -> Geometry:
        self.input = geometry
        self.output = self._output(geometry)
        return self.output

    def _output(self, geometry: Geometry) -> Geometry:
        return geometry

    def apply(self, cov: torch.Tensor, theta: Optional[torch.Tensor], run: _Run):
        raise NotImplementedError

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """The layer on the input points themselves, x (..., *per-point shape): for layers before the network's first
        Linear/Conv, whose values are a fixed function of the input (Network's prefix)."""
        raise NotImplementedError(f"{self.describe()} cannot act on the input itself")

    def needs_full(self) -> Optional[bool]:
        """True: the layer needs the full P x P state below it; False: the diagonal suffices for it and for every
        layer above (flatten); None: it passes the question on to the layers above."""
        return None

    def describe(self) -> str:
        return type(self).__name__


class Dense(Layer):
    """A fully connected layer on a flat state (torch.nn.Linear): cov' = w cov + b, theta' = cov' + w theta."""

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

    def apply(self, cov, theta, run):
        w = run.parameter(run.weight_var, self.index, self.input)
        out = w * cov
        if self.bias:
            out = out + run.parameter(run.bias_var, self.index, self.input)
        if run.ntk:
            theta = out if theta is None else out + w * theta
        return out, theta


class Conv(Layer):
    """A convolution (torch.nn.Conv1d / Conv2d, dilation 1, one group): per spatial axis a filter of `kernel_size`
    taps, `stride`, and (lo, hi) zero or circular padding."""

    def __init__(self, kernel_size: Sequence[int], stride: Sequence[int], padding: Sequence[Tuple[int, int]],
                 circular: bool = False, index: int = 0, bias: bool = True, in_channels: Optional[int] = None,
                 out_channels: Optional[int] = None):
        self.kernel_size, self.stride = tuple(kernel_size), tuple(stride)
        self.padding, self.circular = tuple(tuple(p) for p in padding), circular
        self.index, self.bias = index, bias
        self.in_channels, self.out_channels = in_channels, out_channels

    def _output(self, geometry):
        if len(geometry.spatial) != len(self.kernel_size):
            raise ValueError(f"a {len(self.kernel_size)}-d convolution got an input of {geometry.shape()}")
        if None not in (self.in_channels, geometry.channels) and self.in_channels != geometry.channels:
            raise ValueError(f"a convolution with in_channels={self.in_channels} gets an input of "
                             f"{geometry.shape()} (channel first): fix in_channels, or input_shape if it is "
                             "channel last")
        sizes = []
        for size, k, s, (lo, hi) in zip(geometry.spatial, self.kernel_size, self.stride, self.padding):
            if self.circular and max(lo, hi) > size:
                raise ValueError(f"circular padding {max(lo, hi)} exceeds the input size {size}")
            out = _window_out(size, k, s, lo, hi)
            if out < 1:
                raise ValueError(f"a convolution with kernel size {k} and padding ({lo}, {hi}) does not fit an input "
                                 f"of size {size}")
            sizes.append(out)
        return Geometry(tuple(sizes), geometry.full, GAUSSIAN, self.out_channels)

    def _spatial(self, x, geometry, run):
        """The stencil sum (without 1 / taps) along every axis; intermediates go back to the workspace."""
        nd = len(geometry.spatial)
        for a, (k, s, (lo, hi)) in enumerate(zip(self.kernel_size, self.stride, self.padding)):
            if k == 1 and s == 1 and lo == hi == 0:
                continue
            dims = (-2 * (nd - a), -2 * (nd - a) + 1) if geometry.full else (-(nd - a),)
            out = stencil(x, dims, k, s, lo, hi, self.circular, normalize=False, run=run)
            if a:
                run.release(x)  # an intermediate of this layer
            x = out
        return x

    def apply(self, cov, theta, run):
        w = run.parameter(run.weight_var, self.index, self.input) / math.prod(self.kernel_size)
        b = run.parameter(run.bias_var, self.index, self.input) if self.bias else None
        summed = self._spatial(cov, self.input, run)
        inplace = run.inplace and torch.broadcast_shapes(summed.shape, w.shape) == summed.shape
        if inplace and summed is not cov:
            out = summed.mul_(w) if b is None else summed.mul_(w).add_(b)
        else:
            out = w * summed if b is None else w * summed + b
        if run.ntk:
            if theta is None:
                theta = out.clone()
            else:
                spread = self._spatial(theta, self.input, run)
                if inplace and spread is not theta:
                    run.release(theta)
                    theta = spread.mul_(w).add_(out)
                else:
                    theta = out + w * spread
        run.release(cov)
        return out, theta

    def describe(self):
        return f"Conv(kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding})"


class AvgPool(Layer):
    """Average pooling (torch.nn.AvgPool1d/2d with count_include_pad): needs the full state below it."""

    def __init__(self, kernel_size: Sequence[int], stride: Sequence[int], padding: Sequence[int]):
        self.kernel_size, self.stride, self.padding = tuple(kernel_size), tuple(stride), tuple(padding)

    def needs_full(self):
        return True

    def _output(self, geometry):
        if len(geometry.spatial) != len(self.kernel_size):
            raise ValueError(f"a {len(self.kernel_size)}-d average pooling got an input of spatial shape "
                             f"{geometry.describe()}")
        sizes = [_window_out(size, k, s, p, p) for size, k, s, p in
                 zip(geometry.spatial, self.kernel_size, self.stride, self.padding)]
        if min(sizes) < 1:
            raise ValueError(f"average pooling with window {self.kernel_size} does not fit spatial shape "
                             f"{geometry.describe()}")
        return replace(geometry.linear_image("averages of activations over a window"), spatial=tuple(sizes),
                       full=True)

    def transform(self, x):
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

    def apply(self, cov, theta, run):
        return self._spatial(cov, self.input), None if theta is None else self._spatial(theta, self.input)

    def describe(self):
        return f"AvgPool(kernel_size={self.kernel_size}, stride={self.stride})"


class GlobalAvgPool(Layer):
    """Global average pooling to a flat state: mean over all position pairs."""

    def needs_full(self):
        return True

    def _output(self, geometry):
        return replace(geometry.linear_image("averages of activations over all positions"), spatial=(), full=False,
                       pooled_axes=len(geometry.spatial))

    def transform(self, x):
        nd = len(self.input.spatial)
        return x.mean(tuple(range(-nd, 0))) if nd else x

    def apply(self, cov, theta, run):
        axes = self.input.axes
        dims = tuple(range(-axes, 0))
        if not dims:
            return cov, theta
        return cov.mean(dims), None if theta is None else theta.mean(dims)


class Flatten(Layer):
    """Flatten to a flat state (followed by a dense readout): mean of the diagonal i = j."""

    def needs_full(self):
        return False

    def _output(self, geometry):
        channels = None if geometry.channels is None else geometry.channels * math.prod(geometry.spatial)
        return replace(geometry, spatial=(), full=False, channels=channels, pooled_axes=0)

    def transform(self, x):
        return x.flatten(x.dim() - len(self.input.spatial) - 1)

    def apply(self, cov, theta, run):
        def reduce(x):
            x = diagonal(x, self.input)
            dims = tuple(range(-len(self.input.spatial), 0))
            return x.mean(dims) if dims else x

        return reduce(cov), None if theta is None else reduce(theta)


class ToDiagonal(Layer):
    """Keeps only the diagonal i = j of a full state (inserted by Network.build where nothing above needs more)."""

    def _output(self, geometry):
        return replace(geometry, full=False)

    def apply(self, cov, theta, run):
        return diagonal(cov, self.input), None if theta is None else diagonal(theta, self.input)


class Nonlinearity(Layer):
    """An elementwise activation: cov <- E[phi(u) phi(v)], theta <- E[phi'(u) phi'(v)] theta."""

    def __init__(self, activation: Activation):
        self.activation = activation

    def _output(self, geometry):
        if geometry.law == GAUSSIAN:
            return replace(geometry, law=ACTIVATED)
        if self.on_input:
            return geometry
        if geometry.law == INPUT:
            raise ValueError(f"the activation {self.activation!r} acts on the input inside a residual block whose "
                             "skip path starts at the input: put a Linear or Conv layer before the residual block")
        what = "the output of another activation" if geometry.law == ACTIVATED else geometry.why
        raise ValueError(f"the activation {self.activation!r} acts on {what}, which is neither Gaussian nor a "
                         "fixed function of the input in the infinite-width limit, so its kernel has no closed form "
                         "here: put a Linear or Conv layer before it")

    def transform(self, x):
        return self.activation(x)

    def apply(self, cov, theta, run):
        v1, v2 = run.point_variances(self.key, cov, self.input)
        k11, k22 = layout(v1, self.input, 0), layout(v2, self.input, 1)
        if run.inplace and isinstance(self.activation, ABReLU):
            f, fdot = abrelu_dual_into(cov, k11, k22, self.activation.a, self.activation.b,
                                       [run.empty(cov.shape, cov), run.empty(cov.shape, cov)])
        else:
            f, fdot = self.activation.dual(cov, k11, k22, ntk=theta is not None)
        if theta is not None:
            theta = theta.mul_(fdot) if run.inplace and id(theta) not in run.protected else fdot * theta
        run.release(cov, fdot if run.inplace and isinstance(self.activation, ABReLU) else None)
        return f, theta

    def describe(self):
        return repr(self.activation)


class LayerNorm(Layer):
    """Layer normalization over all features (channels and positions), no affine part, of a Gaussian input:
    cov / sqrt((v(x) + eps)(v(x') + eps)) with v the variance averaged over positions (neural-tangents'
    stax.LayerNorm over the channel and spatial axes)."""

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
        # The normalizer of Gaussian values tends to a number per input: the output is Gaussian again.
        return geometry

    def transform(self, x):
        nd = len(self.input.spatial)
        return torch.nn.functional.layer_norm(x, x.shape[x.dim() - nd - 1:], eps=self.eps)

    def apply(self, cov, theta, run):
        v1, v2 = run.point_variances(self.key, cov, self.input)
        nd = len(self.input.spatial)
        if nd:
            v1, v2 = v1.mean(tuple(range(-nd, 0))), v2.mean(tuple(range(-nd, 0)))
        shape = [1] * self.input.axes
        scale = (v1 + self.eps).rsqrt().reshape(*v1.shape, *shape) * (v2 + self.eps).rsqrt().reshape(*v2.shape, *shape)
        return cov * scale, None if theta is None else theta * scale


class Residual(Layer):
    """x + branch(x) where the branch ends in a conv or dense layer: cov_x + cov_branch, theta_x + theta_branch."""

    def __init__(self, branch: Sequence[Layer]):
        self.branch = list(branch)

    def needs_full(self):
        return _needs_full(self.branch) or None

    def _output(self, geometry):
        last = next((layer for layer in reversed(self.branch) if not isinstance(layer, ToDiagonal)), None)
        if not isinstance(last, (Conv, Dense)):
            raise ValueError("a residual branch must end in a Linear or Conv layer (then x and branch(x) are "
                             f"uncorrelated), got {'an empty branch' if last is None else last.describe()}")
        out = geometry
        for layer in self.branch:
            out = _build_one(layer, out)
        if out.spatial != geometry.spatial or None not in (out.channels, geometry.channels) and \
                out.channels != geometry.channels:
            raise ValueError(f"a residual branch must keep the shape of its input: {geometry.shape()} in, "
                             f"{out.shape()} out")
        if geometry.law == GAUSSIAN:
            return geometry
        skip = "the input" if geometry.law == INPUT else "non-Gaussian values"
        return replace(geometry, law=MIXED, why=f"the sum of {skip} and a Gaussian residual branch (residual networks "
                       "have a kernel when each block's skip path carries Gaussian values: pre-activation blocks "
                       "x + f(x) on a Linear/Conv output, f starting with the activation)")

    def apply(self, cov, theta, run):
        b_cov, b_theta = cov, theta
        added = {id(t) for t in (cov, theta) if t is not None} - run.protected
        run.protected |= added  # the skip path still needs them
        for layer in self.branch:
            b_cov, b_theta = layer.apply(b_cov, b_theta, run)
        run.protected -= added
        if run.inplace:
            out = b_cov.add_(cov)
            run.release(cov)
            if theta is not None:
                b_theta = b_theta.add_(theta)
                run.release(theta)
            return out, b_theta
        return cov + b_cov, (b_theta if theta is None else theta + b_theta)


def _simplify(layers: List[Layer]) -> List[Layer]:
    """The layers with consecutive activations composed into one and activations moved before a flatten (also in
    residual branches); see Network."""
    out: List[Layer] = []
    for layer in layers:
        if isinstance(layer, Residual):
            layer.branch = _simplify(layer.branch)
        if not isinstance(layer, Nonlinearity):
            out.append(layer)
            continue
        moved = []
        while out and isinstance(out[-1], Flatten):  # flatten(phi(x)) = phi(flatten(x)), position by position
            moved.insert(0, out.pop())
        if out and isinstance(out[-1], Nonlinearity):
            inner = out.pop()
            merged = Nonlinearity(compose(layer.activation, inner.activation))
            merged.origin = ", ".join(o for o in (inner.origin, layer.origin) if o) or None
            layer = merged
        out += [layer] + moved
    return out


def _needs_full(layers: Sequence[Layer]) -> bool:
    for layer in layers:
        answer = layer.needs_full()
        if answer is not None:
            return answer
    return False


# ---------------------------------------------------------------------------------------------------------------------
_LETTERS = ("pqr", "PQR")


class Network:
    """A built architecture: its layers (with the diagonal-only stretches decided), input shape and parameter count.

    The layers are first put in a form the algebra computes exactly: consecutive activations become one (phi2 of
    phi1 of a Gaussian is an elementwise function of that Gaussian), and an activation after a flatten moves before
    it (flatten only renames positions). The layers before the first Linear/Conv/residual block (the prefix) act on
    values that are a fixed function of the input, so they are applied to the input points themselves (an
    activation there is phi(x) exactly, not a Gaussian expectation); the algebra starts after them.

    Args:
        layers: the layers in order (Dense, Conv, AvgPool, GlobalAvgPool, Flatten, Nonlinearity, LayerNorm,
            Residual); conv/dense layers carry the index of their variances.
        input_shape: (C, *spatial) of one input, channel first as torch flattens it; (d,) for flat inputs.
        num_parameters: number of distinct (weight_var, bias_var) pairs the layers index.

    Tied weights. A Linear/Conv module used at several depths (layers whose `tied` names its first use) has the NNGP
    and the NTK of independent weights at each use: a forward pass without transposes has the kernel of
    independent weights (Yang 2019, Tensor Programs I), and with an independent zero-mean readout the gradients of
    the uses are uncorrelated in the limit, so the cross terms of the NTK vanish (Yang 2020, Tensor Programs II;
    tests/test_from_module_fidelity.py measures them by Monte Carlo). That needs both widths of the tied layer to go
    to infinity: a tied layer on the input itself (its fan-in is the data dimension) or the readout (its width is the
    output) is refused.

    Raises:
        ValueError: layers that do not fit the input shape, an activation on values that are not Gaussian, or an
            output that is not flat.
    """

    def __init__(self, layers: Sequence[Layer], input_shape: Sequence[int], num_parameters: int = 1):
        self.input_shape = tuple(int(s) for s in input_shape)
        if not self.input_shape or min(self.input_shape) < 1 or len(self.input_shape) > 3:
            raise ValueError(f"input_shape must be (d,), (C, L) or (C, H, W) with positive sizes, got {input_shape!r}")
        self.num_parameters = num_parameters
        layers = _simplify(list(layers))
        split = next((i for i, layer in enumerate(layers) if isinstance(layer, (Dense, Conv, Residual))), len(layers))
        if split == len(layers):
            raise ValueError("the network has no Linear, Conv or residual layer: its output is a fixed function of "
                             "the input, with no weights to vary")
        self.prefix = layers[:split]
        geometry = Geometry(self.input_shape[1:], False, INPUT, self.input_shape[0])
        for layer in self.prefix:
            layer.on_input = True
            geometry = _build_one(layer, geometry)
        # The state the algebra starts from: the Gram of the (transformed) input points.
        self.state_shape = (geometry.channels, *geometry.spatial)
        self.channels, spatial = geometry.channels, geometry.spatial
        geometry = replace(geometry, full=bool(spatial) and _needs_full(layers[split:]))
        self.layers, self.output = _build(layers[split:], geometry)
        if self.output.spatial:
            raise ValueError(f"the network's output still has spatial shape {self.output.describe()}: end it with a "
                             "readout (torch.nn.Flatten() then torch.nn.Linear, or torch.nn.AdaptiveAvgPool2d(1))")
        weighted = [layer for layer in _walk(self.layers) if isinstance(layer, (Dense, Conv))]
        for layer in weighted:
            if layer.tied is None:
                continue
            if layer.input.law == INPUT or layer is weighted[-1]:
                where = "the input" if layer.input.law == INPUT else "the readout"
                raise ValueError(f"{layer.tied} is used more than once (tied weights), and {layer.origin} is "
                                 f"{where}: one of its widths is "
                                 "then the data dimension or the output size, which the infinite-width limit cannot "
                                 "send to infinity. Reuse only hidden-to-hidden layers, or give each use a module")
        self._keys = 0
        for layer in _walk(self.layers):
            layer.key = self._keys
            self._keys += 1
        self._point_axes = {layer.key: len(layer.input.spatial) for layer in _walk(self.layers)}
        # Whether an activation goes through the numerical (Hermite series) dual: its per-point setup is costly.
        self.numerical = any(isinstance(layer, Nonlinearity) and isinstance(layer.activation, Numerical)
                             for layer in _walk(self.layers))
        self.entries_per_pair = max([_entries(geometry)] + [_entries(layer.output) for layer in _walk(self.layers)])

    @property
    def features(self) -> int:
        return math.prod(self.input_shape)

    def describe(self) -> str:
        prefix = [f"{layer.describe()} on the input" for layer in self.prefix if not isinstance(layer, Flatten)]
        return ", ".join(prefix + [layer.describe() for layer in self.layers if not isinstance(layer, ToDiagonal)])

    def take(self, variances: Dict[int, torch.Tensor], index) -> Dict[int, torch.Tensor]:
        """The variances (from `variances`) of a subset of the points: `index` (a slice or index tensor) applied to
        the point axis of each entry."""
        return {key: v[(Ellipsis, index) + (slice(None),) * self._point_axes[key]] for key, v in variances.items()}

    # -- the two halves of a propagation --------------------------------------------------------------------------
    def input_state(self, x1: torch.Tensor, x2: torch.Tensor, lead: int) -> torch.Tensor:
        """The covariance of the inputs, channel-averaged: <x1_i, x2_j> / C per position pair (i, j).

        x1 (..., n, F), x2 (..., m, F) with F = C * prod(spatial); lead 2 gives (..., n, m, *pair axes), lead 1
        pairs row k of x1 with row k of x2 (n == m): (..., n, *pair axes).
        """
        spatial = self.state_shape[1:]
        nd = len(spatial)
        geometry = Geometry(spatial, full=bool(spatial) and self.layers[0].input.full)
        a, b = self.transform_input(x1), (None if x2 is x1 else self.transform_input(x2))
        b = a if b is None else b
        s1, s2 = _LETTERS[0][:nd], (_LETTERS[1][:nd] if geometry.full else _LETTERS[0][:nd])
        out = "".join(p + q for p, q in zip(s1, s2)) if geometry.full else s1
        if lead == 2:
            spec = f"...nc{s1},...mc{s2}->...nm{out}"
        else:
            spec = f"...nc{s1},...nc{s2}->...n{out}"
        # Contiguous: layers then see the same memory layout for a kernel matrix and for a diagonal, so that
        # reductions (flatten, pooling) add in the same order and diag=True is the matrix diagonal to the bit.
        return (torch.einsum(spec, a, b) / self.channels).contiguous()

    def transform_input(self, x: torch.Tensor) -> torch.Tensor:
        """Input points (..., n, F) as per-point tensors (..., n, *state_shape), after the prefix layers."""
        x = x.reshape(*x.shape[:-1], *self.input_shape)
        for layer in self.prefix:
            x = layer.transform(x)
        return x

    def propagate(self, cov: torch.Tensor, run: _Run):
        """Runs every layer on an input state; returns (cov, theta) of the output, flat: (..., n, m) or (..., n)."""
        theta = None
        for layer in self.layers:
            cov, theta = layer.apply(cov, theta, run)
        return cov, theta

    # -- what the kernels call -------------------------------------------------------------------------------------
    def variances(self, x: torch.Tensor, weight_var: torch.Tensor, bias_var: torch.Tensor) -> Dict[int, torch.Tensor]:
        """Per-position variances of x (..., n, F) at every activation and normalization: layer key ->
        (..., n, *spatial). What a kernel matrix needs of each side, computed once per point set."""
        run = _Run(weight_var, bias_var, lead=1, ntk=False)
        self.propagate(self.input_state(x, x, lead=1), run)
        return run.recorded

    def matrix(self, x1, x2, weight_var, bias_var, ntk: bool, variances, same_points: Optional[Tuple[int, int]] = None,
               workspace: Optional[list] = None):
        """Kernel entries k(x1_i, x2_j), (..., n, m), given both sides' variances (from `variances`).

        same_points: (r, c) when x1 are rows r.. and x2 rows c.. of one point set: entries of a point with itself
        start from the same input state as the variances did, so that their correlation is 1 to the last bit.
        workspace: free tensors for an evaluation without autograd (see _Run); refilled with this call's buffers.
        """
        cov = self.input_state(x1, x2, lead=2)
        if same_points is not None:
            r, c = same_points
            first, last = max(r, c), min(r + x1.shape[-2], c + x2.shape[-2])
            if first < last:
                rows = torch.arange(first, last, device=cov.device)
                nd = self.layers[0].input.axes
                tail = (slice(None),) * nd
                own = self.input_state(x1[..., rows - r, :], x1[..., rows - r, :], lead=1)
                cov = cov.clone() if cov.requires_grad else cov
                cov[(Ellipsis, rows - r, rows - c) + tail] = own
        run = _Run(weight_var, bias_var, lead=2, ntk=ntk, variances=variances, workspace=workspace)
        k, theta = self.propagate(cov, run)
        return theta if ntk else k

    def paired(self, x1, x2, weight_var, bias_var, ntk: bool, same_points: bool = False) -> torch.Tensor:
        """k(x1_i, x2_i) for paired rows, (..., n): a kernel diagonal (same_points) or scattered entries."""
        if same_points:
            run = _Run(weight_var, bias_var, lead=1, ntk=ntk)
            k, theta = self.propagate(self.input_state(x1, x1, lead=1), run)
        else:
            variances = (self.variances(x1, weight_var, bias_var), self.variances(x2, weight_var, bias_var))
            run = _Run(weight_var, bias_var, lead=1, ntk=ntk, variances=variances)
            k, theta = self.propagate(self.input_state(x1, x2, lead=1), run)
        return theta if ntk else k


def _entries(geometry: Geometry) -> int:
    p = math.prod(geometry.spatial) if geometry.spatial else 1
    return p * p if geometry.full else p


def _walk(layers):
    for layer in layers:
        yield layer
        if isinstance(layer, Residual):
            yield from _walk(layer.branch)


def _build(layers: List[Layer], geometry: Geometry):
    """Builds the layers in order, switching a full state to its diagonal where no layer above needs more."""
    out = []
    for i, layer in enumerate(layers):
        if geometry.full and not _needs_full(layers[i:]):
            switch = ToDiagonal()
            geometry = switch.build(geometry)
            out.append(switch)
        geometry = _build_one(layer, geometry)
        if not geometry.spatial and geometry.full:
            geometry = replace(geometry, full=False)
        out.append(layer)
    return out, geometry


def _build_one(layer: Layer, geometry: Geometry) -> Geometry:
    """layer.build, with the layer's origin (its torch module) named in any error."""
    try:
        return layer.build(geometry)
    except ValueError as error:
        if layer.origin is None or str(error).startswith(layer.origin):
            raise
        raise ValueError(f"{layer.origin}: {error}") from None
