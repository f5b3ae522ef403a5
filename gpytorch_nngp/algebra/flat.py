"""The fully connected kernel, compiled from the algebra.

On a flat input every state of the algebra is three numbers per pair -- the cross covariance k12 and the two inputs'
own variances k11, k22 (their records) -- plus the NTK. An MLP's layers (Dense, Nonlinearity) then compile
(`Layer.flat`) into two steps, `Affine` and `Dual`, and a `FlatProgram` runs them three ways:

- `values`: torch tensors, (..., n, m) for the cross term and (..., n, 1), (..., 1, m) for the variances (or (..., n)
  throughout for paired entries); without autograd in place, with buffers from a Workspace.
- `keops`: the cross term and the NTK as symbolic KeOps LazyTensors (O(n + m) memory), the variances in torch.
- `tangents`: the values together with their derivatives wrt the two variances, by forward mode (no autograd
  graph), contracted with given weights: the lazy backend's derivative of u^T K v wrt weight_var and bias_var.

The math of each step lives once, on the step, and each activation's part of it on the activation (`dual`,
`dual_into`, `keops_dual`, `dual_tangents`). tests/test_one_recursion.py checks that the program equals the general
propagation of the same layers (Network.propagate) for every activation.

Lee et al. 2018 (NNGP), Jacot et al. 2018 (NTK, NTK parametrization as neural-tangents' stax.Dense):
    Affine:  k -> w k + b,                 theta -> k' + w theta    (theta starts at 0: theta' = k')
    Dual:    k12 -> F(k12, k11, k22),       theta -> Fdot(k12, k11, k22) theta,   k11 -> F(k11, k11, k11)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch

from ..functional.activations import Activation
from ..functional.workspace import Workspace


@dataclass
class FlatState:
    """k12, k11, k22 and the NTK accumulated so far (None: zero, before the first Affine or after Fdot = 0).

    k22 is k11 itself for paired entries of one point set, or k11 transposed when `symmetric` (x1 == x2).
    `owned`: whether k12 was made by the program (so the inference path may overwrite it), `owned_variances` the
    same for k11 and k22."""

    k12: object
    k11: object
    k22: object
    theta: object = None
    owned: bool = False
    owned_variances: bool = False


class _Run:
    """How a program runs on torch values: the variances, the NTK flag, and the inference-path workspace."""

    def __init__(self, weight_var, bias_var, ntk: bool, x1_eq_x2: bool, workspace: Optional[Workspace]):
        self.w, self.b, self.ntk, self.x1_eq_x2, self.workspace = weight_var, bias_var, ntk, x1_eq_x2, workspace

    @property
    def inplace(self) -> bool:
        return self.workspace is not None

    def affine(self, x, owned: bool, bias: bool):
        """w x + b, in place when allowed (x owned, and the variances do not broadcast it to a larger shape)."""
        w, b = self.w, self.b
        if self.inplace and owned and torch.broadcast_shapes(x.shape, _shape(w), _shape(b)) == x.shape:
            x = x.mul_(w)
            return x.add_(b) if bias else x
        x = w * x
        return x + b if bias else x


def _shape(t) -> torch.Size:
    return t.shape if isinstance(t, torch.Tensor) else torch.Size()


class Affine:
    """A Dense layer (torch.nn.Linear, NTK parametrization) on the flat state."""

    def __init__(self, bias: bool = True, index: int = 0):
        self.bias, self.index = bias, index

    def values(self, s: FlatState, run: _Run) -> FlatState:
        k12 = run.affine(s.k12, s.owned, self.bias)
        k11 = run.affine(s.k11, s.owned_variances, self.bias)
        k22 = _next_k22(s, k11, run.x1_eq_x2, lambda: run.affine(s.k22, s.owned_variances, self.bias))
        theta = None
        if run.ntk:
            if s.theta is None:  # theta' = k' (a copy on the inference path, where k' then changes in place)
                theta = run.workspace.take(k12).copy_(k12) if run.inplace else k12
            elif run.inplace:
                theta = s.theta.mul_(run.w).add_(k12)
            else:
                theta = k12 + run.w * s.theta
        return FlatState(k12, k11, k22, theta, owned=True, owned_variances=True)

    def keops(self, s: FlatState, w, b, weight_var, bias_var, ntk: bool) -> FlatState:
        """k12, theta LazyTensors (w, b LazyTensors of the variances); k11, k22 torch (..., n), (..., m)."""
        k12 = w * s.k12 + b if self.bias else w * s.k12
        k11 = weight_var * s.k11 + bias_var if self.bias else weight_var * s.k11
        k22 = weight_var * s.k22 + bias_var if self.bias else weight_var * s.k22
        theta = None
        if ntk:
            theta = k12 if s.theta is None else k12 + w * s.theta
        return FlatState(k12, k11, k22, theta)

    def tangents(self, s: FlatState, ds: List[FlatState], w: float, b: float, ntk: bool):
        """Values and their derivatives along d/dweight_var (ds[0]), d/dbias_var (ds[1]) and directions of the
        input state (ds[2:], see FlatProgram.tangents); a None tangent is 0. In place where the state is the
        program's own (s.owned: made by a Dual, never the caller's inputs)."""
        bias = 1.0 if self.bias else 0.0
        own = s.owned

        def along(x, dx, p):  # d(w x + b) = [w] x + w dx + [b], before x changes
            if dx is None:
                return x if p == 0 else torch.full((), bias if p == 1 else 0.0, dtype=x.dtype, device=x.device)
            if p == 0:
                return _axpy(dx, w, x, own)
            if p == 1:
                return dx.mul_(w).add_(bias) if own else dx * w + bias
            return dx.mul_(w) if own and dx.dim() else dx * w

        douts = [FlatState(along(s.k12, d.k12, p), along(s.k11, d.k11, p), along(s.k22, d.k22, p), owned=own)
                 for p, d in enumerate(ds)]
        out = FlatState(*(_axpy(x, w, b * bias, own) for x in (s.k12, s.k11, s.k22)), owned=own)
        if ntk:
            if s.theta is None:  # theta' = k'
                out.theta = out.k12
                for d in douts:
                    d.theta = d.k12
            else:  # theta' = k' + w theta: dtheta' = dk' + [w] theta + w dtheta
                for p, (d, old) in enumerate(zip(douts, ds)):
                    d.theta = d.k12 if old.theta is None else _axpy(old.theta, w, d.k12, own)
                    if p == 0:
                        d.theta = d.theta.add_(s.theta) if own and d.theta is not d.k12 else d.theta + s.theta
                out.theta = _axpy(s.theta, w, out.k12, own)
        return out, douts


def _axpy(y, a: float, x, inplace: bool):
    """y * a + x, into y when allowed (y the program's own, and x does not broadcast it to a larger shape)."""
    if inplace and isinstance(y, torch.Tensor) and torch.broadcast_shapes(y.shape, _shape(x)) == y.shape:
        return y.mul_(a).add_(x)
    return y * a + x


class Dual:
    """An elementwise activation on the flat state, through the activation's dual maps."""

    def __init__(self, activation: Activation):
        self.activation = activation

    def values(self, s: FlatState, run: _Run) -> FlatState:
        f, fdot, f11, f22 = self.activation.layer(s.k12, s.k11, s.k22, run.ntk, run.x1_eq_x2,
                                                  workspace=run.workspace)
        k22 = _next_k22(s, f11, run.x1_eq_x2, lambda: f22)
        theta = s.theta
        if run.ntk and theta is not None:
            theta = theta.mul_(fdot) if run.inplace else fdot * theta
        if run.inplace:
            # The old cross term and Fdot are free now (the caller's input Gram is not ours to recycle).
            old = s.k12 if s.owned else None
            run.workspace.give(*(t for t in (old, fdot) if t is not None and t is not f and t is not theta
                                 and t.shape == f.shape))
        return FlatState(f, f11, k22, theta, owned=f is not s.k12 or s.owned, owned_variances=True)

    def keops(self, s: FlatState, ntk: bool, rel_eps: float, lazy) -> FlatState:
        v1 = lazy(s.k11[..., :, None, None].contiguous())
        v2 = lazy(s.k22[..., None, :, None].contiguous())
        f, fdot = self.activation.keops_dual(s.k12, v1, v2, ntk, rel_eps)
        k11 = self.activation.dual(s.k11, s.k11, s.k11, False)[0]
        k22 = self.activation.dual(s.k22, s.k22, s.k22, False)[0]
        theta = None
        if ntk and s.theta is not None and not (isinstance(fdot, float) and fdot == 0.0):
            theta = fdot * s.theta  # (Fdot is a number for identity and sign)
        return FlatState(f, k11, k22, theta)

    def tangents(self, s: FlatState, ds: List[FlatState], w: float, b: float, ntk: bool):
        act = self.activation
        f, fdot, df, dfdot = act.dual_tangents(s.k12, s.k11, s.k22, [d.k12 for d in ds], [d.k11 for d in ds],
                                               [d.k22 for d in ds], ntk)
        f11, _, df11, _ = act.dual_tangents(s.k11, s.k11, s.k11, *([[d.k11 for d in ds]] * 3), False)
        f22, _, df22, _ = act.dual_tangents(s.k22, s.k22, s.k22, *([[d.k22 for d in ds]] * 3), False)
        out = FlatState(f, f11, f22, owned=True)  # all fresh: the next step may overwrite them
        douts = [FlatState(df[p], df11[p], df22[p], owned=True) for p in range(len(ds))]
        if ntk and s.theta is not None:  # theta' = Fdot theta: dtheta' = dFdot theta + Fdot dtheta
            for p, d in enumerate(douts):
                d.theta = dfdot[p].mul_(s.theta).addcmul_(fdot, ds[p].theta)
            out.theta = fdot.mul_(s.theta)
        return out, douts


def _next_k22(s: FlatState, new_k11, x1_eq_x2: bool, compute):
    """The new k22: new_k11 itself (or its transpose, for one point set) when k22 is k11, else compute()."""
    if s.k22 is s.k11:
        return new_k11
    if x1_eq_x2:
        return new_k11.transpose(-1, -2)
    return compute()


class FlatProgram:
    """An MLP's layers compiled to flat steps (Layer.flat), run on torch values, KeOps formulas or tangents."""

    def __init__(self, layers: Sequence):
        steps = [layer.flat() for layer in layers]
        missing = [layer.describe() for layer, step in zip(layers, steps) if step is None]
        if missing:
            raise ValueError(f"layers without a flat form: {', '.join(missing)}")
        if not steps or not isinstance(steps[0], Affine):
            raise ValueError("a flat program starts with a Dense layer")
        if any(isinstance(step, Affine) and step.index != 0 for step in steps):
            raise ValueError("a flat program shares one weight_var and bias_var between its Dense layers")
        self.steps = steps
        self.activations = [step.activation for step in steps if isinstance(step, Dual)]

    def values(self, gram, var1, var2, weight_var, bias_var, ntk: bool = False, x1_eq_x2: bool = False,
               workspace: Optional[Workspace] = None, consume_gram: bool = False) -> Tuple[torch.Tensor, object]:
        """(K, Theta or None) from the input state: gram (..., n, m) (or (..., n) paired), var1 (..., n, 1),
        var2 (..., 1, m) (var1 itself for the same points; var1 transposed with x1_eq_x2=True). `workspace`
        (inference only) recycles buffers; with consume_gram the gram may be overwritten."""
        inplace = not torch.is_grad_enabled() or not any(
            t.requires_grad for t in (gram, var1, var2, weight_var, bias_var) if isinstance(t, torch.Tensor))
        if not inplace or gram.dim() < 2:
            workspace = None
        elif workspace is None:
            workspace = Workspace(shrink=True)
        run = _Run(weight_var, bias_var, ntk, x1_eq_x2, workspace)
        # The input's variances are never the program's to overwrite; the gram is when the caller hands it over.
        state = FlatState(gram, var1, var2, owned=consume_gram and run.inplace)
        for step in self.steps:
            state = step.values(state, run)
        return state.k12, state.theta

    def keops(self, x1, x2, weight_var, bias_var, ntk: bool, lazy):
        """The kernel as a KeOps LazyTensor (..., n, m); x1 (..., n, d), x2 (..., m, d); weight_var and bias_var
        one-element tensors; `lazy` is pykeops' LazyTensor class."""
        rel_eps = 1e-12 if x1.dtype == torch.float64 else 1e-6
        xi = lazy(x1[..., :, None, :].contiguous())
        xj = lazy(x2[..., None, :, :].contiguous())
        w, b = lazy(weight_var.reshape(1).to(x1)), lazy(bias_var.reshape(1).to(x1))
        wv, bv = weight_var.reshape(()), bias_var.reshape(())
        state = FlatState((xi | xj) / x1.shape[-1], input_variances(x1), input_variances(x2))
        for step in self.steps:
            state = step.keops(state, w, b, wv, bv, ntk) if isinstance(step, Affine) else \
                step.keops(state, ntk, rel_eps, lazy)
        return state.theta if ntk else state.k12

    def tangents(self, gram, var1, var2, weight_var: float, bias_var: float, ntk: bool, weights: torch.Tensor,
                 inputs: bool = False):
        """The derivative of sum(K * weights) by forward mode without autograd, on the inputs' device (no host
        synchronization): gram (n, m), var1 (n, 1), var2 (1, m) the input state, weights (n, m) what the derivative
        is contracted with (U V^T in a bilinear derivative).

        Returns the derivatives wrt weight_var and bias_var (0-d tensors); with inputs=True also wrt the input
        state, entry by entry: G = dK/dgram * weights (n, m), and the row and column sums h1 (n,), h2 (m,) of
        dK/dvar1 * weights and dK/dvar2 * weights (K_ij depends on gram_ij, var1_i and var2_j alone, so a tangent
        of ones along each gives these partials). The caller chains them to the inputs (gram = x1 x2^T / d)."""
        missing = [a for a in self.activations if not a.has_tangents]
        if missing:
            raise ValueError(f"{missing[0]!r} has no forward-mode derivative (Activation.dual_tangents)")
        state = FlatState(gram, var1, var2)
        ds = [FlatState(None, None, None), FlatState(None, None, None)]
        if inputs:
            one, zero = (torch.full((), v, dtype=gram.dtype, device=gram.device) for v in (1.0, 0.0))
            ds += [FlatState(one, zero, zero), FlatState(zero, one, zero), FlatState(zero, zero, one)]
        with torch.no_grad():
            for step in self.steps:
                state, ds = step.tangents(state, ds, weight_var, bias_var, ntk)
        final = [d.theta if ntk else d.k12 for d in ds]
        out = [(final[0] * weights).sum(), (final[1] * weights).sum()]
        if inputs:
            out += [final[2] * weights, (final[3] * weights).sum(-1), (final[4] * weights).sum(-2)]
        return tuple(out)


def input_variances(x: torch.Tensor) -> torch.Tensor:
    """|x_i|^2 / d for inputs x (..., n, d): (..., n)."""
    return (x * x).sum(-1) / x.shape[-1]
