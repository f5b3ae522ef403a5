"""Parallel branches and their merge: neural-tangents' FanOut + parallel + FanInSum / FanInConcat / FanInProd.

Branches that see the same input and whose outputs are uncorrelated (each but at most one ends in fresh zero-mean
weights, followed by linear maps only) have, in the limit, independent centred Gaussian outputs. Then:

- sum:     K = sum_i K_i, Theta = sum_i Theta_i.
- concat:  along channels: the next weighted layer averages over all channels, so K = sum_i a_i K_i (Theta alike)
           with a_i the branches' share of the channels (equal shares when the widths are equal or unknown: in the
           limit every width grows at the same rate). neural-tangents weighs by the declared widths the same way.
- prod:    elementwise product: K = prod_i K_i, Theta = sum_i Theta_i prod_{j != i} K_j.

A residual block x + f(x) is the sum of an empty branch (the identity) and f. Values after a concatenation or a
product are not Gaussian channel by channel (an activation of a concatenation is the average of the branches'
activations, not the activation of the average), so only linear layers may follow them, as in neural-tangents.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import replace
from typing import List, Optional, Sequence

from .layer import Layer, build_one, ends_centred, needs_full
from .state import GAUSSIAN, INPUT, MIXED

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

    def needs_full(self):
        return any(needs_full(b) for b in self.branches) or None

    def centred(self):
        flags = [ends_centred(b) for b in self.branches]
        return all(flags) if self.merge != "prod" else any(flags)

    def _check_centred(self):
        loose = [i for i, b in enumerate(self.branches) if not ends_centred(b)]
        if len(loose) > 1:
            raise ValueError(f"branches {loose} of a {self.merge} do not end in a Linear/Conv layer (followed by "
                             "linear maps only), so their outputs are correlated and their kernels do not merge: end "
                             "all but one branch in a weighted layer")

    def _outputs(self, geometry):
        outs = []
        for branch in self.branches:
            out = geometry
            for layer in branch:
                out = build_one(layer, out)
            outs.append(out)
        return outs

    def _output(self, geometry):
        self._check_centred()
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
        if self.merge == "sum" and all(o.law == GAUSSIAN for o in outs):
            return replace(merged, law=GAUSSIAN, why="")
        if len(outs) == 1:
            return merged
        return replace(merged, law=MIXED, why=self._why())

    def _why(self) -> str:
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

    def _check_centred(self):
        last = self.branch[-1] if self.branch else None
        if not ends_centred(self.branch):
            raise ValueError("a residual branch must end in a Linear or Conv layer (then x and branch(x) are "
                             f"uncorrelated), got {'an empty branch' if last is None else last.describe()}")

    def _output(self, geometry):
        self._check_centred()
        out = self._outputs(geometry)[1]
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

    def describe(self):
        return f"Residual({', '.join(layer.describe() for layer in self.branch)})"
