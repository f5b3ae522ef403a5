"""A built architecture: the layers of the algebra in order, checked against the input shape, and the two halves of
every kernel evaluation (the input state, the propagation through the layers)."""
from __future__ import annotations

import math
from dataclasses import replace
from functools import lru_cache
from typing import List, Optional, Sequence, Tuple

import torch

from ..functional.activations import Activation, Numerical, compose
from ..functional.workspace import Workspace
from .branches import InputMap, Parallel, Residual
from .elementwise import Nonlinearity
from .flat import FlatProgram
from .layer import Layer, build_one, has_weights, needs_full, walk
from .linear import Dense
from .pooling import Flatten, ToDiagonal
from .state import INPUT, Context, Geometry, PairState, Records, pair_gram


def _simplify(layers: List[Layer]) -> List[Layer]:
    """The layers with consecutive activations composed into one and activations moved before a flatten (also in
    branches); an activation before a block whose branches start with activations moved into every branch, and an
    activation after a concatenation moved into every branch (both exact: an elementwise function commutes with
    fanning out and with concatenating channels); see Network."""
    out: List[Layer] = []
    for layer in layers:
        if isinstance(layer, Parallel):
            layer.branches = [_simplify(branch) for branch in layer.branches]
            if out and isinstance(out[-1], Nonlinearity) and any(
                    b and isinstance(b[0], Nonlinearity) for b in layer.branches):
                layer = _into_branches(out.pop(), layer, first=True)
        if not isinstance(layer, Nonlinearity):
            out.append(layer)
            continue
        if out and isinstance(out[-1], Parallel) and out[-1].merge == "concat":
            out.append(_into_branches(layer, out.pop(), first=False))
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


def _into_branches(activation: Nonlinearity, block: Parallel, first: bool) -> Parallel:
    """The block with `activation` at the start (first) or the end of every branch, composed there. A residual
    block then has a skip path that is no longer the identity: it becomes the sum it is."""
    if isinstance(block, Residual):
        merged = Parallel(block.branches, "sum")
        merged.origin = block.origin
        block = merged
    branches = []
    for branch in block.branches:
        copy = Nonlinearity(activation.activation)
        copy.origin = activation.origin
        branches.append(_simplify([copy] + branch if first else branch + [copy]))
    block.branches = branches
    return block


class Network:
    """A built architecture: its layers (with the diagonal-only stretches decided), input shape and parameter count.

    The layers are first put in a form the algebra computes exactly: consecutive activations become one (phi2 of
    phi1 of a Gaussian is an elementwise function of that Gaussian), and an activation after a flatten moves before
    it (flatten only renames positions). The layers before the first Linear/Conv/residual block (the prefix) act on
    values that are a fixed function of the input, so they are applied to the input points themselves (an
    activation there is phi(x) exactly, not a Gaussian expectation); the algebra starts after them.

    Args:
        layers: the layers in order (algebra/: Dense, Conv, AvgPool, GlobalAvgPool, Flatten, Nonlinearity,
            LayerNorm, Parallel, Residual, ...); weighted layers carry the index of their variances.
        input_shape: (C, *spatial) of one input, channel first as torch flattens it; (d,) for flat inputs.
        num_parameters: number of distinct (weight_var, bias_var) pairs the layers index.
        graphs: for inputs that carry their own graph, the packing (graphs/packing.py GraphInputs): each input row
            is then the node features (C, V) and the graph, which Aggregate layers without a graph of their own
            read from the state's side data.
        spatial_output: the output keeps its positions (the nodes of a graph for GraphNodeKernel): the state
            after the last layer is the full P x P covariance of one input's positions, not a flat kernel.

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

    def __init__(self, layers: Sequence[Layer], input_shape: Sequence[int], num_parameters: int = 1, graphs=None,
                 spatial_output: bool = False):
        self.input_shape = tuple(int(s) for s in input_shape)
        self.graphs = graphs
        if graphs is not None and self.input_shape != (graphs.channels, graphs.nodes):
            raise ValueError(f"{graphs!r} packs features of shape {(graphs.channels, graphs.nodes)}, not "
                             f"{self.input_shape}")
        if not self.input_shape or min(self.input_shape) < 1 or len(self.input_shape) > 3:
            raise ValueError(f"input_shape must be (d,), (C, L) or (C, H, W) with positive sizes, got {input_shape!r}")
        self.num_parameters = num_parameters
        layers = _simplify(list(layers))
        split = next((i for i, layer in enumerate(layers) if has_weights([layer])), len(layers))
        if split == len(layers):
            raise ValueError("the network has no Linear, Conv or residual layer: its output is a fixed function of "
                             "the input, with no weights to vary")
        self.prefix = layers[:split]
        geometry = Geometry(self.input_shape[1:], False, INPUT, self.input_shape[0])
        for layer in self.prefix:
            layer.on_input = True
            geometry = build_one(layer, geometry)
        # The state the algebra starts from: the Gram of the (transformed) input points.
        self.state_shape = (geometry.channels, *geometry.spatial)
        self.channels, spatial = geometry.channels, geometry.spatial
        geometry = replace(geometry, full=bool(spatial) and (spatial_output or needs_full(layers[split:])))
        self.spatial_output = spatial_output
        self.layers, self.output = _build(layers[split:], geometry, keep_full=spatial_output)
        if self.output.spatial and not spatial_output:
            raise ValueError(f"the network's output still has spatial shape {self.output.describe()}: end it with a "
                             "readout (torch.nn.Flatten() then torch.nn.Linear, or torch.nn.AdaptiveAvgPool2d(1))")
        weighted = [layer for layer in walk(self.layers) if layer.weighted]
        for layer in weighted:
            if layer.tied is None:
                continue
            if layer.input.law == INPUT or layer is weighted[-1]:
                where = "the input" if layer.input.law == INPUT else "the readout"
                raise ValueError(f"{layer.tied} is used more than once (tied weights), and {layer.origin} is "
                                 f"{where}: one of its widths is "
                                 "then the data dimension or the output size, which the infinite-width limit cannot "
                                 "send to infinity. Reuse only hidden-to-hidden layers, or give each use a module")
        # Layers that act on the input's values inside a block on the input: the states then carry the values.
        self.reads_input = any(isinstance(layer, InputMap) for layer in walk(self.layers))
        self._keys = 0
        for layer in walk(self.layers):
            layer.key = self._keys
            self._keys += 1
        self._record_axes = {layer.key: layer.record_axes() for layer in walk(self.layers)}
        # Whether an activation goes through the numerical (Hermite series) dual: its per-point setup is costly.
        self.numerical = any(isinstance(layer, Nonlinearity) and isinstance(layer.activation, Numerical)
                             for layer in walk(self.layers))
        self.entries_per_pair = max([_entries(geometry)] + [_entries(layer.output) for layer in walk(self.layers)])

    @property
    def features(self) -> int:
        """The width of an input row: the flattened input shape, or a packed graph's width."""
        return self.graphs.dim if self.graphs is not None else math.prod(self.input_shape)

    def side(self, x1: torch.Tensor, x2: torch.Tensor, batch_shape=()) -> tuple:
        """Per-input side data of the two inputs (PairState.side): each point's graph for packed graph inputs, for
        the points of x1 and x2 broadcast against each other's and the variances' batch shapes."""
        if self.graphs is None:
            return {}, {}
        batch = torch.broadcast_shapes(x1.shape[:-2], x2.shape[:-2], tuple(batch_shape))
        g1 = self.graphs.graph(x1.expand(*batch, *x1.shape[-2:]))
        g2 = g1 if x2 is x1 else self.graphs.graph(x2.expand(*batch, *x2.shape[-2:]))
        return {"graph": g1}, {"graph": g2}

    def describe(self) -> str:
        prefix = [f"{layer.describe()} on the input" for layer in self.prefix if not isinstance(layer, Flatten)]
        return ", ".join(prefix + [layer.describe() for layer in self.layers if not isinstance(layer, ToDiagonal)])

    def take(self, records: Records, index) -> Records:
        """The records (from `records`) of a subset of the points: `index` (a slice or index tensor) applied to the
        point axis of each entry."""
        return {key: v[(Ellipsis, index) + (slice(None),) * self._record_axes[key]] for key, v in records.items()}

    # -- the two halves of a propagation --------------------------------------------------------------------------
    def input_state(self, x1: torch.Tensor, x2: torch.Tensor, lead: int) -> torch.Tensor:
        """The covariance of the inputs, channel-averaged: <x1_i, x2_j> / C per position pair (i, j).

        x1 (..., n, F), x2 (..., m, F) with F = C * prod(spatial); lead 2 gives (..., n, m, *pair axes), lead 1
        pairs row k of x1 with row k of x2 (n == m): (..., n, *pair axes).
        """
        return self._input(x1, x2, lead)[0]

    def _input(self, x1: torch.Tensor, x2: torch.Tensor, lead: int):
        """(the input state, the two inputs' values where a layer reads them (see reads_input), else None)."""
        geometry = Geometry(self.state_shape[1:], full=bool(self.state_shape[1:]) and self.layers[0].input.full)
        a, b = self.transform_input(x1), (None if x2 is x1 else self.transform_input(x2))
        b = a if b is None else b
        return pair_gram(a, b, geometry, lead), ((a, b) if self.reads_input else None)

    def _start(self, x1: torch.Tensor, x2: torch.Tensor, lead: int, batch, own=None) -> PairState:
        """The state a propagation starts from, with its side data (and values where a layer reads them)."""
        cov, values = self._input(x1, x2, lead)
        return PairState(cov, lead=lead, own=own, side=self.side(x1, x2, batch), values=values)

    def transform_input(self, x: torch.Tensor) -> torch.Tensor:
        """Input points (..., n, F) as per-point tensors (..., n, *state_shape), after the prefix layers."""
        side = {}
        if self.graphs is not None:
            if any(layer.reads_side() for layer in walk(self.prefix)):
                side = {"graph": self.graphs.graph(x)}
            x = self.graphs.features(x)
        x = x.reshape(*x.shape[:-1], *self.input_shape)
        for layer in self.prefix:
            x = layer.transform(x, side)
        return x

    def propagate(self, state: PairState, ctx: Context) -> PairState:
        """Runs every layer on an input state; the output is flat: (..., n, m) or (..., n)."""
        for layer in self.layers:
            state = layer.apply(state, ctx)
        return state

    # -- what the kernels call -------------------------------------------------------------------------------------
    def records(self, x: torch.Tensor, weight_var: torch.Tensor, bias_var: torch.Tensor,
                chunk: Optional[int] = None) -> Records:
        """Each point's own records (its per-position variances at every activation and normalization, its P x P
        covariance where a layer needs it): layer key -> (..., n, *record axes). What a kernel matrix needs of each
        side, computed once per point set; `chunk` points at a time (a point's state holds P^2 numbers below
        pooling or attention)."""
        n = x.shape[-2]
        if chunk is not None and n > chunk:
            parts = [self.records(x[..., i:i + chunk, :], weight_var, bias_var) for i in range(0, n, chunk)]
            return {key: torch.cat([p[key] for p in parts], dim=-1 - self._record_axes[key]) for key in parts[0]}
        state = self._start(x, x, 1, weight_var.shape[:-1])
        self.propagate(state, Context(weight_var, bias_var, lead=1, ntk=False))
        return state.recorded

    def matrix(self, x1, x2, weight_var, bias_var, ntk: bool, records: Tuple[Records, Records],
               offsets: Optional[Tuple[int, int]] = None, workspace: Optional[Workspace] = None):
        """Kernel entries k(x1_i, x2_j), (..., n, m), given both sides' records (from `records`).

        offsets: (r, c) when x1 are rows r.. and x2 rows c.. of one point set: entries of a point with itself
        start from the same input state as the records did, so that their correlation is 1 to the last bit.
        workspace: buffers for an evaluation without autograd (functional/workspace.py), or None.
        """
        state = self._start(x1, x2, 2, weight_var.shape[:-1], own=records)
        pairs = None
        if offsets is not None:
            r, c = offsets
            first, last = max(r, c), min(r + x1.shape[-2], c + x2.shape[-2])
            if first < last:
                rows = torch.arange(first, last, device=state.cov.device)
                pairs = (rows - r, rows - c)
                nd = self.layers[0].input.axes
                tail = (slice(None),) * nd
                own = self.input_state(x1[..., rows - r, :], x1[..., rows - r, :], lead=1)
                cov = state.cov.clone() if state.cov.requires_grad else state.cov
                cov[(Ellipsis, *pairs) + tail] = own
                state.cov = cov
        out = self.propagate(state, Context(weight_var, bias_var, 2, ntk, workspace, self_pairs=pairs))
        return out.theta if ntk else out.cov

    def paired(self, x1, x2, weight_var, bias_var, ntk: bool, x1_eq_x2: bool = False,
               chunk: Optional[int] = None) -> torch.Tensor:
        """k(x1_i, x2_i) for paired rows, (..., n): a kernel diagonal (x1_eq_x2) or scattered entries; `chunk`
        pairs at a time."""
        n = x1.shape[-2]
        if chunk is not None and n > chunk:
            return torch.cat([self.paired(x1[..., i:i + chunk, :], x2[..., i:i + chunk, :], weight_var, bias_var, ntk,
                                          x1_eq_x2) for i in range(0, n, chunk)], dim=-1)
        ctx = Context(weight_var, bias_var, lead=1, ntk=ntk)
        batch = weight_var.shape[:-1]
        if x1_eq_x2:
            out = self.propagate(self._start(x1, x1, 1, batch), ctx)
        else:
            own = (self.records(x1, weight_var, bias_var), self.records(x2, weight_var, bias_var))
            out = self.propagate(self._start(x1, x2, 1, batch, own=own), ctx)
        return out.theta if ntk else out.cov


def _entries(geometry: Geometry) -> int:
    p = math.prod(geometry.spatial) if geometry.spatial else 1
    return p * p if geometry.full else p


def _build(layers: List[Layer], geometry: Geometry, keep_full: bool = False):
    """Builds the layers in order, switching a full state to its diagonal where no layer above needs more (unless
    keep_full: the output is the full state)."""
    out = []
    for i, layer in enumerate(layers):
        if geometry.full and not keep_full and not needs_full(layers[i:]):
            switch = ToDiagonal()
            geometry = switch.build(geometry)
            out.append(switch)
        geometry = build_one(layer, geometry)
        if not geometry.spatial and geometry.full:
            geometry = replace(geometry, full=False)
        out.append(layer)
    return out, geometry


@lru_cache(maxsize=64)
def mlp_program(depth: int, activation: Activation) -> FlatProgram:
    """The fully connected kernel's program: `depth` hidden layers with `activation` and a dense readout, compiled
    from the algebra's Dense and Nonlinearity layers (algebra/flat.py)."""
    layers = [Dense()]
    for _ in range(depth):
        layers += [Nonlinearity(activation), Dense()]
    return FlatProgram(layers)
