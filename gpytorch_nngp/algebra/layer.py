"""The contract every layer of the algebra follows.

A layer is a map of pair states (state.py). `build` checks the geometry it gets and returns its output's; `apply`
maps a state; `transform` runs the layer on the input points themselves (for layers before the network's first
weighted layer, whose values are a fixed function of the input). A layer that needs a record of each input (its
variances, its P x P covariance) says how many axes the record has (`record_axes`) and asks the state for it
(`PairState.records`). How to add a layer: docs/design.md, "Adding a layer".
"""
from __future__ import annotations

from dataclasses import replace
from typing import Optional

import torch

from .state import Context, Geometry, PairState


class Layer:
    """One map of the algebra. Subclasses set `_output` and `apply`, and read their input geometry from
    `self.input`; `key` is a unique number Network assigns (the records are stored under it)."""

    key: int = -1
    origin: Optional[str] = None  # where the layer came from (a torch module's name), for error messages
    on_input: bool = False  # set by Network for layers it applies to the input points themselves (its prefix)
    tied: Optional[str] = None  # weighted layers: the first use of the module, when the module is used again
    weighted: bool = False  # it multiplies by fresh zero-mean weights (its output is centred and independent)
    linear: bool = False  # a fixed linear map of its input (pooling, flatten, normalization): keeps centring
    nonlinear_in_state: bool = False  # its map of the pair state is not linear (activations, normalization, ...)
    input: Geometry
    output: Geometry

    def build(self, geometry: Geometry) -> Geometry:
        self.input = geometry
        if geometry.random and self.nonlinear_in_state and not self.on_input:
            raise ValueError(f"{self.describe()} acts on values whose kernel is random in the infinite-width limit "
                             f"({geometry.random}), so it has no closed-form kernel here: only linear layers "
                             "(Linear/Conv, pooling, flatten, sums) may follow such a block")
        self.output = self._output(geometry)
        if geometry.random and not self.output.random:
            self.output = replace(self.output, random=geometry.random)
        return self.output

    def _output(self, geometry: Geometry) -> Geometry:
        return geometry

    def apply(self, state: PairState, ctx: Context) -> PairState:
        raise NotImplementedError

    def transform(self, x: torch.Tensor, side: dict) -> torch.Tensor:
        """The layer on the input points themselves, x (..., *per-point shape); `side` is those points' side data
        (PairState.side: a packed graph's adjacencies, ...), {} when they have none."""
        raise NotImplementedError(f"{self.describe()} cannot act on the input itself")

    def reads_side(self) -> bool:
        """Whether `transform` reads the points' side data (so that a caller unpacks it only when some layer does)."""
        return False

    def needs_full(self) -> Optional[bool]:
        """True: the layer needs the full P x P state below it; False: the diagonal suffices for it and for every
        layer above (flatten); None: it passes the question on to the layers above."""
        return None

    def record_axes(self) -> Optional[int]:
        """The number of axes of this layer's per-input record after the point axis, or None if it keeps none."""
        return None

    def centred(self) -> bool:
        """Whether the output is zero-mean and uncorrelated with anything computed beside this layer (so that the
        kernels of parallel branches add): true after fresh weights, and kept by linear maps after them."""
        return self.weighted

    def flat(self):
        """The layer's step on a flat state (algebra/flat.py: Affine, Dual), or None if it has none."""
        return None

    def low_rank(self, state):
        """The layer on the low-rank representation of a node-level state (algebra/low_rank.py, LowRankState)."""
        raise ValueError(f"the low-rank node kernel supports per-node dense layers (nn.Conv1d with kernel size 1), "
                         f"aggregations and activations, not {self.describe()}")

    def sublayers(self):
        """Layers nested inside this one (branches), for Network's walks."""
        return ()

    def describe(self) -> str:
        return type(self).__name__


def build_one(layer: Layer, geometry: Geometry) -> Geometry:
    """layer.build, with the layer's origin (its torch module) named in any error."""
    try:
        return layer.build(geometry)
    except ValueError as error:
        if layer.origin is None or str(error).startswith(layer.origin):
            raise
        raise ValueError(f"{layer.origin}: {error}") from None


def needs_full(layers) -> bool:
    """Whether the first of `layers` that answers needs the full P x P state below it."""
    for layer in layers:
        answer = layer.needs_full()
        if answer is not None:
            return answer
    return False


def ends_centred(layers) -> bool:
    """Whether a branch's output is centred (Layer.centred) at its end: fixed linear maps after a centred layer."""
    for layer in reversed(list(layers)):
        if layer.linear:
            continue
        return layer.centred()
    return False


def walk(layers):
    """Every layer, nested ones (branches) included, in order."""
    for layer in layers:
        yield layer
        for branch in layer.sublayers():
            yield from walk(branch)


def has_weights(layers) -> bool:
    """Whether any of `layers` (nested blocks included) is a weighted layer: where values stop being a fixed function
    of the input."""
    return any(layer.weighted for layer in walk(layers))
