"""Elementwise activations: cov <- E[phi(u) phi(v)], theta <- E[phi'(u) phi'(v)] theta per position pair, with the
variances of u and v the two inputs' own variances at those positions (their records)."""
from __future__ import annotations

from dataclasses import replace

from ..functional.activations import Activation
from .flat import Dual
from .layer import Layer
from .low_rank import nystrom
from .state import ACTIVATED, GAUSSIAN, INPUT, diagonal, layout


class Nonlinearity(Layer):
    """An elementwise activation (functional/activations.py holds its dual maps)."""

    nonlinear_in_state = True

    def __init__(self, activation: Activation):
        self.activation = activation

    def _output(self, geometry):
        if geometry.law == GAUSSIAN:
            return replace(geometry, law=ACTIVATED)
        if self.on_input:
            return geometry
        if geometry.law == INPUT:  # the input's values are mapped exactly (Network's prefix, or an InputMap)
            raise RuntimeError(f"the activation {self.activation!r} got the input's values outside an InputMap")
        what = "the output of another activation" if geometry.law == ACTIVATED else geometry.why
        raise ValueError(f"the activation {self.activation!r} acts on {what}, which is neither Gaussian nor a "
                         "fixed function of the input in the infinite-width limit, so its kernel has no closed form "
                         "here: put a Linear or Conv layer before it")

    def transform(self, x, side):
        return self.activation(x)

    def record_axes(self):
        return len(self.input.spatial)

    def apply(self, state, ctx):
        cov, theta = state.cov, state.theta
        v1, v2 = state.records(self.key, lambda c: diagonal(c, self.input), self.record_axes())
        k11, k22 = layout(v1, self.input, 0), layout(v2, self.input, 1)
        ntk = theta is not None
        if ctx.inplace:
            f, fdot = self.activation.dual_into(cov, k11, k22, ntk, ctx.workspace)
        else:
            f, fdot = self.activation.dual(cov, k11, k22, ntk=ntk)
        if ntk:
            theta = theta.mul_(fdot) if ctx.writable(theta) else fdot * theta
            if fdot is not f:
                ctx.release(fdot)
        if f is not cov:  # (the identity's dual is its argument)
            ctx.release(cov)
        return state.with_(f, theta)

    def flat(self):
        return Dual(self.activation)

    def low_rank(self, state):
        """A Nystrom step over the landmark nodes: Q' from the columns F(K[:, S]) (the NTK's from
        Fdot(K[:, S]) * theta[:, S])."""
        q, t, s = state.q, state.t, state.landmarks
        variances = (q * q).sum(-1)
        f, fdot = self.activation.dual(q @ q[s].mT, variances.unsqueeze(-1), variances[s].unsqueeze(0),
                                       ntk=state.ntk and t is not None)
        if fdot is not None:
            state.t = nystrom(fdot * (t @ t[s].mT), s, state.rel_eps)
        state.q = nystrom(f, s, state.rel_eps)
        return state

    def describe(self):
        return repr(self.activation)
