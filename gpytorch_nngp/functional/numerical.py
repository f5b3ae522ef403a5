"""Any elementwise torch function as an activation: its duals through Hermite (Mehler) series or Gauss-Hermite
quadrature sized to their accuracy (hermite.py), and the composition of two activations."""
from __future__ import annotations

import warnings
from typing import Callable, Optional, Tuple

import torch

from ..warnings import AccuracyWarning
from .activation_base import _CLOSED_FORM, Activation, DualPair, LayerValues
from .hermite import (
    _nodes_and_projection,
    choose_degree,
    geometric_tail,
    pair_polynomial,
    pair_tail,
    parity_energies,
    quadrature_discrepancy,
    relative_tail,
)
from .workspace import Workspace

# Above these the Numerical kernel may be off by more than about 1e-3 (benchmarks/numerical_activations.py).
QUADRATURE_WARN = 1e-4
SERIES_WARN = 1e-2
_DEGREE_STAGES = (128, 512)


class Numerical(Activation):
    """Any elementwise, autograd-differentiable torch function, by the Hermite/Mehler series of hermite.py.

    fn: callable acting elementwise on tensors (torch.tanh, torch.nn.functional.silu, a lambda...).
    max_degree: largest series degree K; tol: relative tail E[(f - f_K)^2] / E[f^2] at which K stops growing;
    num_nodes: Simpson nodes on [-12, 12] (1 mod 4). Fdot uses phi' from autograd.

    Kinks and jumps at x = 0 (ReLU, leaky ReLU, abs, sign, steps; also the step in phi' of ELU) make the series
    converge like a power of K. They are measured once (one-sided cubic fits of fn near 0) and split off:
    with s = sqrt(var), h(s z) = alpha sign(z) + beta s |z| + g(z), where h is phi (NNGP) or phi' (NTK),
    alpha = jump / 2 and beta = kink / 2. The sign and |z| parts have closed-form duals (arc-cosine kernels of
    degree 0 and 1), and only the remainder g, continuous with a continuous slope at 0, goes through the series:

        E[h(u) h(v)] = sum_k (a_k(g) a_k(h') + gamma_k a_k(g')) c^k + tail(g, g') + alpha^2 F_sign + beta^2 F_abs

    with gamma_k = alpha sign_k + beta s abs_k the coefficients of the split-off part (sign has odd, |z| even
    coefficients, so they do not mix). Kinks away from 0 (ReLU6, hardtanh) are not split off and converge slowly.
    """

    name = "numerical"

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], name: Optional[str] = None,
                 max_degree: int = 1024, tol: float = 1e-5, num_nodes: int = 4001):
        if not callable(fn):
            raise TypeError(f"activation must be a name, an Activation or a callable, got {type(fn).__name__}")
        if not isinstance(max_degree, int) or max_degree < 8:
            raise ValueError(f"max_degree must be an int >= 8, got {max_degree!r}")
        if not isinstance(num_nodes, int) or num_nodes % 4 != 1 or num_nodes < 101:
            raise ValueError(f"num_nodes must be an int >= 101 with num_nodes % 4 == 1, got {num_nodes!r}")
        self.fn = fn
        self.name = name or getattr(fn, "__name__", None) or type(fn).__name__
        check_elementwise(fn, self.name)
        self.max_degree = max_degree
        self.tol = float(tol)
        self.num_nodes = num_nodes
        self._singular = {}

    def __call__(self, x):
        return self.fn(x)

    def __repr__(self):
        return f"Numerical({self.name}, max_degree={self.max_degree})"

    def __eq__(self, other):
        return (type(self) is type(other) and self.fn == other.fn and self.max_degree == other.max_degree
                and self.tol == other.tol and self.num_nodes == other.num_nodes)

    def __hash__(self):
        return hash((type(self), self.fn, self.max_degree, self.tol, self.num_nodes))

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_singular"] = {}
        return state

    def _evaluate(self, x: torch.Tensor, deriv: bool) -> torch.Tensor:
        if not deriv:
            values = self.fn(x)
            self._check(values, x)
            return values
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            values = self.fn(xg)
            self._check(values, x)
            (grad,) = self._gradient(values, xg, create_graph=False)
        return torch.zeros_like(x) if grad is None else grad

    def singular_parts(self, deriv: bool = False) -> Tuple[float, float]:
        """(alpha, beta): half the jump and half the kink at x = 0 of phi (deriv=False) or phi' (deriv=True).

        One-sided cubic fits through h(+-k delta), k = 1..4, delta = 1e-3, in float64: the value and slope
        errors are O(delta^4) and O(delta^3) for a function smooth on each side. Below 1e-7 (relative to the
        one-sided values) they are taken as 0, so smooth functions pay nothing.
        """
        if deriv not in self._singular:
            delta = 1e-3
            steps = torch.arange(1, 5, dtype=torch.float64)
            x = torch.cat((delta * steps, -delta * steps))
            h = self._evaluate(x, deriv).to(torch.float64)
            # Vandermonde in the step index: h(+-k delta) = p0 + p1 (+-k delta) + ... ; solve for p0, p1 per side.
            vander = torch.stack([steps ** p for p in range(4)], dim=-1)
            right = torch.linalg.solve(vander, h[:4])
            left = torch.linalg.solve(vander, h[4:])
            jump = (right[0] - left[0]).item()
            kink = (right[1] + left[1]).item() / delta  # left side was fitted in the variable -x
            scale_value = max(1.0, abs(right[0].item()), abs(left[0].item()))
            scale_slope = max(1.0, abs(right[1].item() / delta), abs(left[1].item() / delta))
            alpha = 0.5 * jump if abs(jump) > 1e-7 * scale_value else 0.0
            beta = 0.5 * kink if abs(kink) > 1e-7 * scale_slope else 0.0
            self._singular[deriv] = (alpha, beta)
        return self._singular[deriv]

    def _samples(self, var: torch.Tensor, ntk: bool):
        """phi (and phi') at sqrt(var) z_q: tensors of shape var.shape + (Q,)."""
        z, _, _ = _nodes_and_projection(self.num_nodes, self.max_degree, var.dtype, str(var.device))
        if not torch.isfinite(var).all():  # (the samples are finite exactly when the variances are)
            raise ValueError(f"the variances that reach activation {self.name!r} are not finite (they overflow "
                             f"{var.dtype}): standardize the inputs (zero mean, unit variance per feature), lower "
                             "weight_var, or compute in float64")
        # The middle node z = 0 is where kinked functions jump in phi' (relu' is a step): Simpson needs the
        # mean of the one-sided limits there, so that node is evaluated at +-delta and averaged.
        mid = self.num_nodes // 2
        delta = 1e-7 if var.dtype == torch.float64 else 1e-4
        z = torch.cat((z, z.new_tensor([-delta])))
        z[mid] = delta
        x = var.sqrt().unsqueeze(-1) * z
        if not ntk:
            values = self.fn(x)
            self._check(values, x)
            return _merge_middle(values, mid), None
        outer_grad = torch.is_grad_enabled() and x.requires_grad
        with torch.enable_grad():
            xg = x if outer_grad else x.detach().requires_grad_(True)
            values = self.fn(xg)
            self._check(values, x)
            (deriv,) = self._gradient(values, xg, create_graph=outer_grad)
        if deriv is None:
            deriv = torch.zeros_like(x)
        if not outer_grad:
            values = values.detach()
        return _merge_middle(values, mid), _merge_middle(deriv, mid)

    def _gradient(self, values, x, create_graph: bool):
        """(d values / d x,) by autograd; a ValueError if values do not depend differentiably on x."""
        if not values.requires_grad:
            raise ValueError(f"activation {self.name!r} has no gradient (its output is not a differentiable function "
                             "of its input: a comparison, a rounding or a detach): the NTK needs phi'. For a step "
                             "function use 'sign' (closed form; its NTK term is 0), or use the NNGP kernel")
        return torch.autograd.grad(values.sum(), x, create_graph=create_graph, allow_unused=True)

    def _check(self, values, x):
        if not isinstance(values, torch.Tensor) or values.shape != x.shape:
            raise ValueError(f"activation {self.name!r} must be elementwise: it changed shape {tuple(x.shape)}")
        if not torch.isfinite(values).all():
            raise ValueError(f"activation {self.name!r} returned NaN/inf on Gaussian inputs; it must be finite on R")

    def _split(self, samples, var, singular, min_degree: int = 0):
        """The series pieces for samples h (..., Q): (coefficients of g, of gamma or None, energies of g, degree).

        g = h - gamma with gamma the split-off sign/|z| part (see the class docstring). Splitting pays when h is
        kinked at 0 on the scale of z; at large variance a smooth function can look more like a step than like
        the kink it has at x = 0 (ELU' at variance 100), so the split is kept only where its series is shorter.
        Coefficients are computed in stages (the projection costs O(points x nodes x degree)): most functions at
        moderate variance stop at the first stage; steep ones at large variance need up to max_degree.
        """
        alpha, beta = singular
        z, w, proj = _nodes_and_projection(self.num_nodes, self.max_degree, samples.dtype, str(samples.device))
        split = energies_g = None
        energies_h = parity_energies(samples, w)
        if alpha != 0.0 or beta != 0.0:
            scale = var.sqrt().unsqueeze(-1)
            split = alpha * torch.sign(z) + beta * scale * z.abs()
            # Parity energies of g = h - split without forming g: |z| is even and sign(z) odd, so
            # E[g_even^2] = E[h_even^2] - 2 beta s E[h |z|] + beta^2 s^2 E[z^2], and likewise for the odd part.
            w_abs, w_sign = w * z.abs(), w * torch.sign(z)
            scale = scale.squeeze(-1)
            energies_g = energies_h - 2 * torch.stack(
                (beta * scale * (samples @ w_abs), alpha * (samples @ w_sign)), dim=-1) + torch.stack(
                (beta * beta * scale * scale * (w_abs * z.abs()).sum(), alpha * alpha * (w_sign * torch.sign(z)).sum()
                 * torch.ones_like(scale)), dim=-1)
        stages = sorted({min(s, self.max_degree) for s in _DEGREE_STAGES + (self.max_degree,)})
        for stage in [s for s in stages if s >= min_degree] or stages[-1:]:
            coeffs = samples @ proj[:, : stage + 1]
            energies = energies_h
            tail = relative_tail(coeffs, energies)
            best = (choose_degree(tail, self.tol), coeffs, None, energies, tail)
            if split is not None:
                gamma = split @ proj[:, : stage + 1]
                tail_g = relative_tail(coeffs - gamma, energies_g, total=energies.sum(-1))
                degree_g = choose_degree(tail_g, self.tol)
                if (degree_g, tail_g[degree_g].item()) <= (best[0], tail[best[0]].item()):
                    best = (degree_g, coeffs - gamma, gamma, energies_g, tail_g)
            if best[0] < stage:
                break
        degree, coeffs, gamma, energies, tail = best
        # The quadrature is judged on what the series expands: g, with a jump or kink at 0 split off.
        self._warn_if_inaccurate(samples, None if gamma is None else split, var,
                                 float(tail[degree]) if degree == self.max_degree else 0.0)
        return coeffs, gamma, energies, degree

    def _warn_if_inaccurate(self, samples, split, var, series_tail: float) -> None:
        """AccuracyWarning when the series or the quadrature cannot resolve phi (or phi') at these variances.

        split: the jump/kink part split off h (see _split), or None; the quadrature is judged on the rest.
        series_tail: the relative energy the series misses at max_degree (0 when it met its tolerance earlier). The
        quadrature is judged by E[h^2] on every node against every other node (Simpson at twice the step): the two
        agree to rounding for smooth h and differ once h varies on the scale of the node spacing (a steep function
        at a large variance), where the whole expansion is unreliable.
        """
        with torch.no_grad():
            # The steepest samples are those of the largest variances: the check looks at a few of them (O(Q)).
            nodes = samples.shape[-1]
            flat = samples.reshape(-1, nodes)
            part = None if split is None else split.expand(samples.shape).reshape(-1, nodes)
            if var.numel() == flat.shape[0]:
                order = var.detach().reshape(-1).argsort(descending=True)[:4]
                flat, part = flat[order], (None if part is None else part[order])
            quad = quadrature_discrepancy(flat if part is None else flat - part, self.num_nodes, flat)
        problems = []
        if quad > QUADRATURE_WARN:
            problems.append(f"the quadrature resolves phi only to {quad:.1e} (relative)")
        if series_tail > SERIES_WARN:
            problems.append(f"the series misses {series_tail:.1e} of its energy at max_degree={self.max_degree}")
        if problems:
            warnings.warn(
                f"activation {self.name!r}: {' and '.join(problems)} at input variances up to "
                f"{var.detach().max().item():.0e}, so its kernel (and NTK) may be off by as much. Standardize the "
                "inputs (zero mean, unit variance per feature) or lower weight_var / bias_var, or use a closed-form "
                "activation (relu, erf, gelu, ...)", AccuracyWarning, stacklevel=2)

    def _series(self, c, side1, side2, deriv, singular):
        """sum_k of the kept coefficients c^k plus the tail model; returns (series, whether the kink was split)."""
        min_degree = 0
        while True:  # ends: the split is dropped at most once, and min_degree grows to at most max_degree
            coeffs1, gamma1, energies1, degree1 = side1.pieces(self, deriv, singular, min_degree)
            coeffs2, gamma2, energies2, degree2 = side2.pieces(self, deriv, singular, min_degree)
            if (gamma1 is None) != (gamma2 is None):  # both sides must use the same split
                singular = (0.0, 0.0)
                continue
            degree = max(degree1, degree2)
            if min(coeffs1.shape[-1], coeffs2.shape[-1]) > degree:
                break
            min_degree = degree  # one side stopped at an earlier stage than the other needs
        kept1 = coeffs1[..., : degree + 1]
        kept2 = coeffs2[..., : degree + 1]
        out = pair_tail(c, geometric_tail(coeffs1, energies1, degree), geometric_tail(coeffs2, energies2, degree))
        if gamma1 is None:
            return out + pair_polynomial(c, kept1, kept2), False
        # sum_k (g1 g2 + g1 gamma2 + gamma1 g2) c^k = sum_k (g1 (g2 + gamma2) + gamma1 g2) c^k
        out = out + pair_polynomial(c, kept1, kept2 + gamma2[..., : degree + 1])
        return out + pair_polynomial(c, gamma1[..., : degree + 1], kept2), True

    def _singular_duals(self, k12, k11, k22, singular):
        alpha, beta = singular
        out = None
        if alpha != 0.0:
            out = alpha * alpha * _CLOSED_FORM["sign"]().dual(k12, k11, k22)[0]
        if beta != 0.0:
            term = beta * beta * _CLOSED_FORM["abs"]().dual(k12, k11, k22)[0]
            out = term if out is None else out + term
        return out

    def _pair(self, k12, k11, k22, side1, side2, deriv):
        singular = self.singular_parts(deriv)
        c = (k12 * (k11.rsqrt() * k22.rsqrt())).clamp(-1.0, 1.0)
        out, was_split = self._series(c, side1, side2, deriv, singular)
        extra = self._singular_duals(k12, k11, k22, singular) if was_split else None
        return out if extra is None else out + extra

    def _side(self, var, ntk):
        phi, dphi = self._samples(var, ntk)
        return _Side(var, {False: phi, True: dphi})

    def dual(self, k12: torch.Tensor, k11: torch.Tensor, k22: torch.Tensor, ntk: bool = False) -> DualPair:
        side1 = self._side(k11, ntk)
        side2 = side1 if k22 is k11 else self._side(k22, ntk)
        f = self._pair(k12, k11, k22, side1, side2, deriv=False)
        fdot = self._pair(k12, k11, k22, side1, side2, deriv=True) if ntk else None
        return f, fdot

    def layer(self, k12: torch.Tensor, k11: torch.Tensor, k22: torch.Tensor, ntk: bool = False,
              x1_eq_x2: bool = False, workspace: Optional[Workspace] = None) -> LayerValues:
        # One set of samples and coefficients per point serves the matrix, its NTK term and the variances.
        # Variances go through the same series at c = 1 as the matrix diagonal, so that identical inputs keep
        # k12 == k11 == k22 bitwise in the next layer (|c| = 1 exactly, safe gradients).
        side1 = self._side(k11, ntk)
        if k22 is k11:
            side2 = side1
        elif x1_eq_x2:
            side2 = side1.transposed()
        else:
            side2 = self._side(k22, ntk)
        f = self._pair(k12, k11, k22, side1, side2, deriv=False)
        fdot = self._pair(k12, k11, k22, side1, side2, deriv=True) if ntk else None
        f11 = self._pair(k11, k11, k11, side1, side1, deriv=False)
        f22 = None if k22 is k11 or x1_eq_x2 else self._pair(k22, k22, k22, side2, side2, deriv=False)
        return f, fdot, f11, f22


def check_elementwise(fn: Callable, name: str) -> None:
    """Raises ValueError unless fn acts elementwise: each output entry depends on its input entry alone.

    fn runs on a small random float64 tensor (float32 if it refuses float64): the output must keep the shape, and
    changing some entries, reshaping or transposing the input must leave the other outputs as they were. softmax,
    cumsum, normalizations and anything else that mixes entries fail; the kernel of such a layer is not the dual of
    an activation, and computing it as one would give a wrong kernel that looks plausible.
    """
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(4, 6, generator=generator, dtype=torch.float64)
    other = x.clone()
    other[1::2, ::3] = torch.randn(2, 2, generator=generator, dtype=torch.float64)
    untouched = torch.ones_like(x, dtype=torch.bool)
    untouched[1::2, ::3] = False
    error = None
    for dtype in (torch.float64, torch.float32):
        try:
            with torch.no_grad():
                outs = [fn(t.to(dtype)) for t in (x, other, x.reshape(-1), x.t().contiguous())]
            break
        except Exception as e:  # noqa: BLE001 - any failure is reported with the activation's name
            error = e
    else:
        raise TypeError(f"activation {name!r} could not be evaluated on a float tensor: {error}") from error
    if not all(isinstance(o, torch.Tensor) for o in outs) or [tuple(o.shape) for o in outs] != [
            (4, 6), (4, 6), (24,), (6, 4)]:
        raise ValueError(f"activation {name!r} must be elementwise: it changed the shape of its input")
    y, y_other, y_flat, y_t = (o.to(torch.float64) for o in outs)
    tol = dict(rtol=1e-9 if outs[0].dtype == torch.float64 else 1e-5, atol=1e-12, equal_nan=True)
    if not (torch.allclose(y[untouched], y_other[untouched], **tol) and torch.allclose(y.reshape(-1), y_flat, **tol)
            and torch.allclose(y.t(), y_t, **tol)):
        raise ValueError(f"activation {name!r} is not elementwise: its output at one entry depends on other entries "
                         "(softmax, cumsum, normalizations, ...). Only elementwise functions have an activation "
                         "kernel; write other layers as torch modules and build the kernel with from_module")


class _Side:
    """Per-point data of one set of variances for Numerical: samples of phi / phi' and their series pieces."""

    def __init__(self, var, samples, parent=None):
        self.var = var
        self.samples = samples
        self._parent = parent
        self._cache = {}

    def transposed(self):
        """The same points along the other matrix dimension ((..., n, 1) -> (..., 1, n)); shares the work."""
        samples = {k: (None if v is None else v.transpose(-2, -3)) for k, v in self.samples.items()}
        return _Side(self.var.transpose(-1, -2), samples, parent=self)

    def pieces(self, activation, deriv, singular, min_degree):
        key = (deriv, singular, min_degree)
        if key not in self._cache:
            if self._parent is not None:
                flip = lambda t: t if t is None else t.transpose(-2, -3)  # noqa: E731
                coeffs, gamma, energies, degree = self._parent.pieces(activation, deriv, singular, min_degree)
                self._cache[key] = (flip(coeffs), flip(gamma), flip(energies), degree)
            else:
                self._cache[key] = activation._split(self.samples[deriv], self.var, singular, min_degree)
        return self._cache[key]




def _merge_middle(values: torch.Tensor, mid: int) -> torch.Tensor:
    """Drop the extra sample at -delta (last) and put the mean of the +-delta samples at the middle node."""
    nodes = values[..., :-1]
    average = 0.5 * (values[..., mid] + values[..., -1])
    return torch.cat((nodes[..., :mid], average.unsqueeze(-1), nodes[..., mid + 1:]), dim=-1)


def _silu(x):
    return torch.nn.functional.silu(x)


def _softplus(x):
    return torch.nn.functional.softplus(x)


def _elu(x):
    return torch.nn.functional.elu(x)


# Activations without a closed-form dual, by name (they go through the Hermite series), and the torch module
# that computes each with its default arguments.
_NUMERICAL = {
    "tanh": (torch.tanh, torch.nn.Tanh),
    "sigmoid": (torch.sigmoid, torch.nn.Sigmoid),
    "softplus": (_softplus, torch.nn.Softplus),
    "silu": (_silu, torch.nn.SiLU),
    "elu": (_elu, torch.nn.ELU),
}
# Other elementwise, stateless torch activation modules: the numerical dual of the module itself.
NUMERICAL_MODULES = (torch.nn.Hardtanh, torch.nn.Mish, torch.nn.SELU, torch.nn.CELU, torch.nn.Softsign,
                     torch.nn.Hardswish, torch.nn.Hardsigmoid, torch.nn.LogSigmoid, torch.nn.Tanhshrink,
                     torch.nn.Softshrink, torch.nn.Hardshrink)
