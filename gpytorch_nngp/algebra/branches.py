"""Parallel branches and their merge: neural-tangents' FanOut + parallel + FanInSum / FanInConcat / FanInProd.

Branches see the same input. What their merge needs of them (Yang 2019, Tensor Programs I: a layer with fresh
zero-mean weights gives outputs, channel by channel, jointly Gaussian with everything before it and uncorrelated
with everything computed beside it):

- sum:     K = sum_i K_i, Theta = sum_i Theta_i, when the cross terms E[f_i f_j'] vanish: all branches but at most
           one end in fresh weights (followed by linear maps only), which centres them.
- concat:  along channels: each channel comes from one branch and the next weighted layer has independent weights
           per channel, so K = sum_i a_i K_i (Theta alike) with a_i the branches' share of the channels (equal
           shares when the widths are equal or unknown: in the limit every width grows at the same rate), whatever
           the branches end in -- cross-branch correlations never enter. neural-tangents weighs by the declared
           widths the same way. An activation right after a concatenation acts channel by channel, so it moves into
           every branch (Network's simplification).
- prod:    elementwise product: K = prod_i K_i, Theta = sum_i Theta_i prod_{j != i} K_j, when the branch outputs are
           independent: all branches but at most one have fresh weights of their own (a branch without them is a
           function of the block's input, as another such branch is, and the two are dependent).

A residual block x + f(x) is the sum of an empty branch (the identity) and f. Values after a concatenation or a
product are not Gaussian channel by channel (an activation of a concatenation is the average of the branches'
activations, not the activation of the average), so only linear layers may follow them, as in neural-tangents.

A block on the input itself (before any weighted layer) sees values that are a fixed function of the input: its
branches' leading layers (activations, pooling) then act on the values themselves (InputMap), exactly, and a sum
with a weighted branch is a Gaussian with a nonzero mean (the input's part), which a linear layer can take but an
activation cannot. A block whose branches have no weights at all is itself a fixed function of the input
(Parallel.transform), applied to the input points like the layers before the first weighted layer.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import replace
from typing import List, Optional, Sequence

import torch

from .layer import Layer, build_one, ends_centred, has_weights, needs_full
from .state import GAUSSIAN, INPUT, MIXED, pair_gram

MERGES = ("sum", "concat", "prod")


class Parallel(Layer):
    """Branches (lists of layers, an empty list for the identity) fed the same input, merged by `merge`."""

    def __init__(self, branches: Sequence[Sequence[Layer]], merge: str = "sum"):
        if merge not in MERGES:
            raise ValueError(f"merge must be one of {', '.join(map(repr, MERGES))}, got {merge!r}")
        if len(branches) < 1:
            raise ValueError("Parallel needs at least one branch")
        self.branches = [list(b) for b in branches]
        self.merge = merge
        self.shares: Optional[List[float]] = None

    def sublayers(self):
        return self.branches

    @property
    def nonlinear_in_state(self) -> bool:
        return self.merge == "prod"  # a product of kernels

    def needs_full(self):
        return any(needs_full(b) for b in self.branches) or None

    def centred(self):
        flags = [ends_centred(b) for b in self.branches]
        return all(flags) if self.merge != "prod" else any(flags)

    def transform(self, x, side):
        """The block on the input points themselves (a block without weights, in the network's prefix)."""
        outs = []
        for branch in self.branches:
            y = x
            for layer in branch:
                y = layer.transform(y, side)
            outs.append(y)
        if self.merge == "concat":
            return torch.cat(outs, dim=-1 - len(self.input.spatial))
        out = outs[0]
        for other in outs[1:]:
            out = out + other if self.merge == "sum" else out * other
        return out

    def _check_merge(self, law: str):
        """The merge's condition on its branches (module docstring), ValueError naming the branches if it fails.
        On values that are a fixed function of the input nothing is random before the branches, so a product needs
        no more than a sum does."""
        if self.merge == "concat":
            return
        if self.merge == "prod" and law != INPUT:
            shared = [i for i, b in enumerate(self.branches) if not has_weights(b)]
            if len(shared) > 1:
                raise ValueError(f"branches {shared} of a product have no Linear/Conv layer of their own, so their "
                                 "outputs are functions of the same values and dependent: the kernel of their product "
                                 "is not the product of their kernels (neural-tangents multiplies them anyway, and is "
                                 "wrong there). Give all branches but one a weighted layer")
            return
        loose = [i for i, b in enumerate(self.branches) if not ends_centred(b)]
        if len(loose) > 1 and self.merge == "sum":
            raise ValueError(f"branches {loose} of a sum do not end in a Linear/Conv layer (followed by "
                             "linear maps only), so their outputs are correlated and their kernels do not merge: end "
                             "all but one branch in a weighted layer")

    def _outputs(self, geometry):
        if geometry.law == INPUT and not self.on_input:
            self.branches = [_read_input(branch) for branch in self.branches]
        outs = []
        for branch in self.branches:
            out = geometry
            for layer in branch:
                if self.on_input:
                    layer.on_input = True
                out = build_one(layer, out)
            outs.append(out)
        return outs

    def _output(self, geometry):
        self._check_merge(geometry.law)
        outs = self._outputs(geometry)
        first = outs[0]
        for out in outs[1:]:
            if out.spatial != first.spatial or out.full != first.full:
                raise ValueError(f"the branches of a {self.merge} end in different shapes: "
                                 f"{', '.join(o.shape() for o in outs)}")
        channels = [o.channels for o in outs]
        known = None not in channels
        if self.merge == "concat":
            total = sum(channels) if known else None
            self.shares = [c / total for c in channels] if known else [1.0 / len(outs)] * len(outs)
            merged = replace(first, channels=total)
        else:
            if known and len(set(channels)) > 1:
                raise ValueError(f"the branches of a {self.merge} end in different shapes: "
                                 f"{', '.join(o.shape() for o in outs)}")
            merged = replace(first, channels=channels[0] if known else None)
        if all(o.law == INPUT for o in outs):
            return replace(merged, law=INPUT, why="")
        random = next((o.random for o in outs if o.random), "")
        if geometry.law == INPUT and self.merge != "concat" and not random:
            random = _input_block(self.merge, geometry)
        merged = replace(merged, random=random)
        if self.merge == "sum" and all(o.law == GAUSSIAN for o in outs):
            return replace(merged, law=GAUSSIAN, why="")
        if len(outs) == 1:
            return merged
        return replace(merged, law=MIXED, why=self._why(outs))

    def _why(self, outs) -> str:
        if self.merge == "concat":
            return "a concatenation of branches (each channel comes from one branch)"
        if self.merge == "prod":
            return "a product of branches"
        return "a sum of branches that are not all Gaussian"

    def apply(self, state, ctx):
        ws = ctx.workspace
        outs = []
        with ws.protect(state.cov, state.theta) if ws is not None else nullcontext():
            for branch in self.branches:
                s = state
                for layer in branch:
                    s = layer.apply(s, ctx)
                outs.append(s)
        if len(outs) == 1:
            return outs[0]
        # A branch whose first weighted layer is its own has theta and cov in one tensor (Dense: the NTK of a first
        # layer is its NNGP); the in-place sums below would change both: give such a theta its own memory.
        for s in outs:
            if s.theta is not None and s.theta is s.cov:
                s.theta = s.cov.clone()
        covs, thetas = [s.cov for s in outs], [s.theta for s in outs]
        if self.merge == "prod":
            cov, theta = covs[0], thetas[0]
            for c, t in zip(covs[1:], thetas[1:]):
                if theta is not None or t is not None:
                    theta = (0 if theta is None else theta * c) + (0 if t is None else cov * t)
                cov = cov * c
            return state.with_(cov, theta)
        shares = self.shares if self.merge == "concat" else None
        avoid = (state.cov, state.theta)
        return state.with_(_weighted_sum(covs, shares, ctx, avoid), _weighted_sum(thetas, shares, ctx, avoid))



class InputMap(Layer):
    """The leading layers of a branch that sees values which are a fixed function of the input (a block on the
    input itself): they act on the two inputs' values (the state's `values`), exactly, as the layers before a
    network's first weighted layer do, and the state becomes the Gram of what they give."""

    def __init__(self, layers):
        self.layers = list(layers)

    def _output(self, geometry):
        for layer in self.layers:
            layer.on_input = True
            geometry = build_one(layer, geometry)
        return geometry

    def needs_full(self):
        return needs_full(self.layers) or None

    def apply(self, state, ctx):
        if state.values is None:
            raise RuntimeError("InputMap needs the inputs' values in the state (Network.reads_input)")
        values = tuple(self._run(v, state.side[k]) for k, v in enumerate(state.values))
        return state.with_(_input_state(values, self.output, state, ctx), None, values)

    def _run(self, x, side):
        for layer in self.layers:
            x = layer.transform(x, side)
        return x

    def describe(self):
        return ", ".join(f"{layer.describe()} on the input" for layer in self.layers)


def _input_state(values, geometry, state, ctx):
    """The state of two inputs' values (pair_gram), in the layout of `geometry`; the entries of a point with itself
    (ctx.self_pairs) from the paired computation, as Network's input state takes them."""
    a, b = values
    cov = pair_gram(a, b, geometry, state.lead)
    if ctx.self_pairs is not None and state.lead == 2:
        rows, cols = ctx.self_pairs
        own = a[(Ellipsis, rows) + (slice(None),) * (1 + len(geometry.spatial))]
        cov[(Ellipsis, rows, cols) + (slice(None),) * geometry.axes] = pair_gram(own, own, geometry, 1)
    return cov


def _input_block(merge: str, geometry) -> str:
    """Why the output of a sum or product with weighted branches on the input itself has a random kernel."""
    width = f"{geometry.channels} channels" if geometry.channels else "the input's channels"
    what = "adds the input and" if merge == "sum" else "multiplies the input by"
    return (f"a block on the input itself {what} a weighted branch: a Gaussian with a nonzero mean (the input), of "
            f"the data's width ({width}), whose randomness no later layer averages out (start the network with a "
            "Linear/Conv layer, so that the block sees Gaussian values of unbounded width)")


def _read_input(branch):
    """A branch of a block on the input: its layers up to the first weighted layer or block, as one InputMap."""
    branch = list(branch)
    if branch and isinstance(branch[0], InputMap):
        return branch
    split = next((i for i, layer in enumerate(branch) if has_weights([layer])), len(branch))
    return ([InputMap(branch[:split])] if split else []) + branch[split:]


def _weighted_sum(tensors, shares, ctx, avoid):
    """sum_i shares_i t_i (shares None: plain sum; None tensors count as zero); without autograd in place, into a
    tensor a branch made (not one of `avoid`, the branches' shared input)."""
    present = [(t, 1.0 if shares is None else a) for t, a in zip(tensors, shares or [None] * len(tensors))
               if t is not None]
    if not present:
        return None
    target = next((i for i, (t, _) in enumerate(present) if ctx.writable(t) and t.is_contiguous()
                   and not any(t is u for u in avoid) and sum(u is t for u, _ in present) == 1), None)
    if target is None or any(t.shape != present[target][0].shape for t, _ in present):
        out = None
        for t, a in present:
            term = t if a == 1.0 else a * t
            out = term if out is None else out + term
        return out
    out, a0 = present[target]
    if a0 != 1.0:
        out.mul_(a0)
    for i, (t, a) in enumerate(present):
        if i != target:
            out.add_(t, alpha=a)
            ctx.release(t)
    return out


class Residual(Parallel):
    """x + branch(x) where the branch ends in a weighted layer: the sum of the identity and the branch."""

    def __init__(self, branch: Sequence[Layer]):
        super().__init__([[], list(branch)], "sum")

    @property
    def branch(self) -> List[Layer]:
        return self.branches[1]

    def _check_merge(self, law):
        last = self.branch[-1] if self.branch else None
        if not ends_centred(self.branch):
            raise ValueError("a residual branch must end in a Linear or Conv layer (then x and branch(x) are "
                             f"uncorrelated), got {'an empty branch' if last is None else last.describe()}")

    def _output(self, geometry):
        self._check_merge(geometry.law)
        out = self._outputs(geometry)[1]
        if out.spatial != geometry.spatial or None not in (out.channels, geometry.channels) and \
                out.channels != geometry.channels:
            raise ValueError(f"a residual branch must keep the shape of its input: {geometry.shape()} in, "
                             f"{out.shape()} out")
        if geometry.law == GAUSSIAN:
            return geometry
        if geometry.law == INPUT:
            why = _input_block("sum", geometry)
            return replace(geometry, law=MIXED, why=why, random=why)
        return replace(geometry, law=MIXED, why="the sum of non-Gaussian values and a Gaussian residual branch "
                       "(residual networks have a kernel when each block's skip path carries Gaussian values: "
                       "pre-activation blocks x + f(x) on a Linear/Conv output, f starting with the activation)")

    def describe(self):
        return f"Residual({', '.join(layer.describe() for layer in self.branch)})"
