"""The state a layer of the algebra maps: the kernel of a pair of inputs at one point of the network.

With infinitely many i.i.d. channels, what a layer needs to know about the pair (x, x') is (neural-tangents calls
the same object `Kernel`):

- `cov`: the covariance of one channel between position i of x and position j of x', and `theta`, the NTK between
  the same two outputs (None while only the NNGP is wanted, or before the first weighted layer);
- each input's own record at the layers that need one: the per-position variances of x at an activation or a
  normalization, or x's full P x P covariance at an attention layer (its attention weights are a function of it);
- per-input side data that travels with the inputs (a mask, a graph), keyed by name.

Layout. `cov` has `lead` point axes in front of its spatial axes: (..., n, m) for a kernel matrix, (..., n) for
paired inputs (a kernel diagonal, or a point with itself). Spatial axes are interleaved pairs (h, h', w, w') when
the full P x P matrix is kept (`Geometry.full`), or just (h, w) when only its diagonal i = j is (below a flatten
readout). A flat state (a fully connected network) has no spatial axes.

A state of points with themselves (lead 1, x' = x) computes each record from its own `cov` and keeps it: that is how
a point set's records are computed once (Network.records), before the kernel matrix is evaluated in tiles whose
states read them.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Dict, Optional, Tuple

import torch

from ..functional.workspace import Workspace

# What the values at a point of the network are, in the infinite-width limit (Geometry.law). Only "input" and
# "gaussian" values may go into an activation: the dual maps E[phi(u) phi(v)] assume (u, v) jointly Gaussian.
INPUT = "input"          # a fixed function of the network's input (before any Linear/Conv): computed exactly
GAUSSIAN = "gaussian"    # zero-mean Gaussian: outputs of Linear/Conv layers and linear maps (pooling, sums) of them
ACTIVATED = "activated"  # an elementwise function of Gaussian values: another activation composes with it
MIXED = "mixed"          # anything else (averages of activations, input plus a Gaussian branch): linear layers only

Records = Dict[int, torch.Tensor]


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
    random: why the kernel of these values is itself random in the limit ("" when it is a fixed function of the
        inputs): after a sum or product with weighted branches on the input itself, whose width is the data's
        (finite), no later layer averages that randomness out. The state is then the kernel's expectation, which
        layers linear in the state (weighted layers, pooling, sums, concatenations) map exactly and the others
        (activations, normalization, attention, products) cannot; it stays set up to the output.
    """

    spatial: Tuple[int, ...]
    full: bool = False
    law: str = GAUSSIAN
    channels: Optional[int] = None
    why: str = ""
    pooled_axes: int = 0
    random: str = ""

    @property
    def axes(self) -> int:
        """Number of spatial axes of the pair state."""
        return len(self.spatial) * (2 if self.full else 1)

    @property
    def positions(self) -> int:
        """P, the number of spatial positions (1 for a flat state)."""
        out = 1
        for s in self.spatial:
            out *= s
        return out

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


class PairState:
    """The kernel of a pair of inputs at one point of the network (see the module docstring).

    Args:
        cov: (..., n, m, *pair axes) for lead 2, (..., n, *axes) for lead 1.
        theta: the NTK, shaped like cov, or None.
        lead: 2 for a kernel matrix, 1 for paired inputs.
        own: both inputs' records (layer key -> tensor (..., n, *record axes)), or None for a state of points with
            themselves, which computes and keeps its records (`recorded`).
        side: per-input side data of the two inputs (name -> tensor), shared by every state of the propagation.
    """

    __slots__ = ("cov", "theta", "lead", "own", "recorded", "side", "values")

    def __init__(self, cov: torch.Tensor, theta: Optional[torch.Tensor] = None, *, lead: int,
                 own: Optional[Tuple[Records, Records]] = None, recorded: Optional[Records] = None,
                 side: Tuple[dict, dict] = ({}, {}), values: Optional[Tuple[torch.Tensor, torch.Tensor]] = None):
        self.cov, self.theta, self.lead = cov, theta, lead
        self.own, self.side = own, side
        self.recorded = ({} if recorded is None else recorded) if own is None else None
        # While the values are a fixed function of the input (law INPUT, before any weighted layer): the two inputs'
        # per-point values themselves, (..., n, C, *spatial) each, for layers that act on them exactly (InputMap).
        self.values = values

    def with_(self, cov: torch.Tensor, theta: Optional[torch.Tensor],
              values: Optional[Tuple[torch.Tensor, torch.Tensor]] = None) -> PairState:
        """A state of the same pair with new values (the records and side data are shared); `values` only where the
        new state is still a fixed function of the input."""
        return PairState(cov, theta, lead=self.lead, own=self.own, recorded=self.recorded, side=self.side,
                         values=values)

    def records(self, key: int, compute: Callable[[torch.Tensor], torch.Tensor], axes: int):
        """Layer `key`'s records of the two inputs, shaped to broadcast against the state's point axes.

        compute: cov -> the record of each point, (..., n, *record axes), for a state of points with themselves;
        axes: the number of record axes. Returns (r1, r2): both (..., n, *record axes) for lead 1, else
        (..., n, 1, *record axes) and (..., 1, m, *record axes).
        """
        if self.own is None:
            r = compute(self.cov)
            self.recorded[key] = r
            return r, r
        r1, r2 = self.own[0][key], self.own[1][key]
        if self.lead == 2:
            r1, r2 = r1.unsqueeze(-axes - 1), r2.unsqueeze(-axes - 2)
        return r1, r2


_LETTERS = ("pqr", "PQR")


def pair_gram(a: torch.Tensor, b: torch.Tensor, geometry: Geometry, lead: int) -> torch.Tensor:
    """The state of values that are a fixed function of the input: <a_i, b_j> / C per position pair (i, j).

    a (..., n, C, *spatial) and b (..., m, C, *spatial) per-point values; lead 2 gives (..., n, m, *pair axes),
    lead 1 pairs row k of a with row k of b (n == m): (..., n, *pair axes); the pair axes are geometry's (full or
    diagonal)."""
    nd = len(geometry.spatial)
    s1, s2 = _LETTERS[0][:nd], (_LETTERS[1][:nd] if geometry.full else _LETTERS[0][:nd])
    out = "".join(p + q for p, q in zip(s1, s2)) if geometry.full else s1
    spec = f"...nc{s1},...mc{s2}->...nm{out}" if lead == 2 else f"...nc{s1},...nc{s2}->...n{out}"
    # Contiguous: layers then see the same memory layout for a kernel matrix and for a diagonal, so that
    # reductions (flatten, pooling) add in the same order and diag=True is the matrix diagonal to the bit.
    return (torch.einsum(spec, a, b) / a.shape[-1 - nd]).contiguous()


class Context:
    """What a propagation needs besides the state: the variances, whether the NTK is wanted, and the workspace.

    weight_var, bias_var: (*batch, L) variances, L = 1 (shared) or one per weighted layer.
    lead: point axes of the states (2 for a matrix, 1 for paired inputs).
    workspace: a Workspace for an evaluation without autograd (layers may then update their own intermediates in
        place and recycle buffers), or None with autograd.
    self_pairs: see __init__.
    """

    def __init__(self, weight_var: torch.Tensor, bias_var: torch.Tensor, lead: int, ntk: bool,
                 workspace: Optional[Workspace] = None, self_pairs: Optional[Tuple[torch.Tensor, torch.Tensor]] = None):
        self.weight_var, self.bias_var = weight_var, bias_var
        self.lead, self.ntk = lead, ntk
        self.workspace = workspace
        # For a matrix of two slices of one point set: (rows, columns) of its entries of a point with itself, which
        # states made from the input's values take from the paired (lead 1) computation, as the input state does,
        # so that diag=True is the matrix diagonal to the bit.
        self.self_pairs = self_pairs

    @property
    def inplace(self) -> bool:
        return self.workspace is not None

    def empty(self, shape, like: torch.Tensor) -> torch.Tensor:
        """A tensor of `shape` (contents undefined): recycled from the workspace if there is one, else new."""
        if self.workspace is None:
            return torch.empty(shape, dtype=like.dtype, device=like.device)
        return self.workspace.take(like, shape)

    def release(self, *tensors) -> None:
        """Gives tensors a layer created and no longer needs back to the workspace (no-op with autograd)."""
        if self.workspace is not None:
            self.workspace.give(*tensors)

    def writable(self, t: Optional[torch.Tensor]) -> bool:
        """Whether a layer may overwrite t in place: only without autograd, and not on a branch's shared input."""
        return self.workspace is not None and self.workspace.writable(t)

    def parameter(self, values: torch.Tensor, index: int, geometry: Geometry) -> torch.Tensor:
        """The variance of weighted layer `index`, shaped to broadcast against a state of that geometry."""
        value = values[..., index if values.shape[-1] > 1 else 0]
        return value.reshape(*value.shape, *([1] * (self.lead + geometry.axes)))


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


def to_matrix(cov: torch.Tensor, nd: int) -> torch.Tensor:
    """A full state (..., h, h', w, w') as (..., P, P), P = h w: the positions of the first input, then the
    second's."""
    if nd == 1:
        return cov
    lead = cov.shape[: cov.dim() - 2 * nd]
    sizes = cov.shape[cov.dim() - 2 * nd:]
    order = [2 * a for a in range(nd)] + [2 * a + 1 for a in range(nd)]
    p = 1
    for a in range(nd):
        p *= sizes[2 * a]
    offset = len(lead)
    return cov.permute(*range(offset), *(offset + o for o in order)).reshape(*lead, p, p)


def from_matrix(mat: torch.Tensor, spatial: Tuple[int, ...]) -> torch.Tensor:
    """The inverse of to_matrix: (..., P, P) as the interleaved full state (..., h, h', w, w')."""
    nd = len(spatial)
    if nd == 1:
        return mat
    lead = mat.shape[:-2]
    offset = len(lead)
    out = mat.reshape(*lead, *spatial, *spatial)
    order = []
    for a in range(nd):
        order += [a, nd + a]
    return out.permute(*range(offset), *(offset + o for o in order))
