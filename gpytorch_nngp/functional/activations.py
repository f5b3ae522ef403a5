"""Activations and their dual functions F and Fdot.

For (u, v) ~ N(0, [[k11, k12], [k12, k22]]):

    F(k12, k11, k22)    = E[phi(u) phi(v)]      (NNGP layer map, Lee et al. 2018, Eq. 3)
    Fdot(k12, k11, k22) = E[phi'(u) phi'(v)]    (NTK layer map, Jacot et al. 2018)

Every activation implements `dual(k12, k11, k22, ntk)` on broadcastable tensors: k12 (..., n, m),
k11 (..., n, 1), k22 (..., 1, m) for a kernel matrix, or all (..., n) for a diagonal. It returns
(F, Fdot) with Fdot None when ntk is False. Closed forms where they exist; any other elementwise torch
function goes through `Numerical` (Hermite/Mehler series, see hermite.py).
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Tuple

import torch

from .hermite import choose_degree, hermite_coefficients, pair_polynomial, with_tail, _nodes_and_projection
from .safe_math import abrelu_dual, safe_angle

Dual = Tuple[torch.Tensor, Optional[torch.Tensor]]


class Activation:
    """Base class: an elementwise function together with its Gaussian dual maps."""

    name = "activation"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def dual(self, k12: torch.Tensor, k11: torch.Tensor, k22: torch.Tensor, ntk: bool = False) -> Dual:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and self.__dict__ == other.__dict__

    def __hash__(self) -> int:
        return hash((type(self), tuple(sorted(map(str, self.__dict__.items())))))


class ABReLU(Activation):
    """phi(x) = a x for x < 0 and b x for x >= 0 (ReLU: a=0, b=1; Abs: a=-1, b=1; Identity: a=b=1).

    Arc-cosine closed form (Cho & Saul 2009; neural-tangents' ABRelu), theta = arccos(c):
        Fdot = ((a^2 + b^2) pi - (a - b)^2 theta) / (2 pi)
        F    = (a - b)^2 / (2 pi) sqrt(k11 k22 - k12^2) + Fdot k12
    """

    name = "abrelu"

    def __init__(self, a: float = 0.0, b: float = 1.0):
        for label, value in (("a", a), ("b", b)):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise TypeError(f"{type(self).__name__}: slope {label} must be a finite float, got {value!r}")
        self.a = float(a)
        self.b = float(b)

    def __call__(self, x):
        return torch.where(x < 0, self.a * x, self.b * x)

    def dual(self, k12, k11, k22, ntk=False):
        f, fdot = abrelu_dual(k12, k11, k22, self.a, self.b)
        return f, (fdot if ntk else None)

    def __repr__(self):
        return f"{type(self).__name__}(a={self.a}, b={self.b})"


class ReLU(ABReLU):
    name = "relu"

    def __init__(self):
        super().__init__(0.0, 1.0)

    def __call__(self, x):
        return torch.relu(x)

    def __repr__(self):
        return "ReLU()"


class LeakyReLU(ABReLU):
    """phi(x) = x for x >= 0, negative_slope * x for x < 0."""

    name = "leaky_relu"

    def __init__(self, negative_slope: float = 0.01):
        super().__init__(negative_slope, 1.0)

    def __repr__(self):
        return f"LeakyReLU(negative_slope={self.a})"


class Abs(ABReLU):
    name = "abs"

    def __init__(self):
        super().__init__(-1.0, 1.0)

    def __call__(self, x):
        return x.abs()

    def __repr__(self):
        return "Abs()"


class Identity(Activation):
    """phi(x) = x: F = k12, Fdot = 1 (a deep linear network)."""

    name = "identity"

    def __call__(self, x):
        return x

    def dual(self, k12, k11, k22, ntk=False):
        return k12, (torch.ones_like(k12) if ntk else None)


class Erf(Activation):
    """phi(x) = erf(x) (Williams 1997):
    F = (2/pi) arcsin(2 k12 / sqrt((1 + 2 k11)(1 + 2 k22))),  Fdot = (4/pi) / sqrt((1 + 2 k11)(1 + 2 k22) - 4 k12^2).
    The arcsin argument is strictly inside (-1, 1), so plain autograd is finite everywhere.
    """

    name = "erf"

    def __call__(self, x):
        return torch.erf(x)

    def dual(self, k12, k11, k22, ntk=False):
        prod = (1 + 2 * k11) * (1 + 2 * k22)
        f = (2 / math.pi) * torch.asin(2 * k12 * torch.rsqrt(prod))
        fdot = (4 / math.pi) * torch.rsqrt(prod - 4 * k12 * k12) if ntk else None
        return f, fdot


class GELU(Activation):
    """Exact GELU, phi(x) = x Phi(x) (Tsuchida et al. 2020, "Avoiding kernel fixed points"; as in neural-tangents).

    With P = k11 k22, P1 = (1 + k11)(1 + k22), D = sqrt(P1 - k12^2) > 0 and alpha = atan2(k12, D):
        F    = k12 / 4 + ((k12^2 + P D^2) / (P1 D) + k12 alpha) / (2 pi)
        Fdot = 1/4 + alpha / (2 pi) + k12 / (2 pi D) (1 / D^2 + (1 - P) / P1 + 1)
    """

    name = "gelu"

    def __call__(self, x):
        return torch.nn.functional.gelu(x)

    def dual(self, k12, k11, k22, ntk=False):
        prod = k11 * k22
        prod1 = (1 + k11) * (1 + k22)
        d2 = prod1 - k12 * k12
        d = d2.sqrt()
        alpha = torch.atan2(k12, d)
        f = 0.25 * k12 + ((k12 * k12 + prod * d2) / (prod1 * d) + k12 * alpha) / (2 * math.pi)
        fdot = None
        if ntk:
            fdot = 0.25 + alpha / (2 * math.pi) + k12 / (2 * math.pi * d) * (1 / d2 + (1 - prod) / prod1 + 1)
        return f, fdot


class Sign(Activation):
    """phi(x) = sign(x): F = (2/pi) arcsin(c) = 1 - 2 theta / pi.

    The derivative is zero almost everywhere, so the NTK term Fdot is 0 (what autograd gives for a finite network).
    """

    name = "sign"

    def __call__(self, x):
        return torch.sign(x)

    def dual(self, k12, k11, k22, ntk=False):
        f = 1 - (2 / math.pi) * safe_angle(k12, k11, k22)
        return f, (torch.zeros_like(f) if ntk else None)


class Numerical(Activation):
    """Any elementwise, autograd-differentiable torch function, by the Hermite/Mehler series of hermite.py.

    fn: callable acting elementwise on tensors (torch.tanh, torch.nn.functional.silu, a lambda...).
    max_degree: largest series degree K; tol: relative tail E[(f - f_K)^2] / E[f^2] at which K stops growing;
    num_nodes: Simpson nodes on [-12, 12] (1 mod 4). Fdot uses phi' from autograd.
    """

    name = "numerical"

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], name: Optional[str] = None,
                 max_degree: int = 128, tol: float = 1e-8, num_nodes: int = 4001):
        if not callable(fn):
            raise TypeError(f"activation must be a name, an Activation or a callable, got {type(fn).__name__}")
        if not isinstance(max_degree, int) or max_degree < 8:
            raise ValueError(f"max_degree must be an int >= 8, got {max_degree!r}")
        if not isinstance(num_nodes, int) or num_nodes % 4 != 1 or num_nodes < 101:
            raise ValueError(f"num_nodes must be an int >= 101 with num_nodes % 4 == 1, got {num_nodes!r}")
        self.fn = fn
        self.name = name or getattr(fn, "__name__", "numerical")
        self.max_degree = max_degree
        self.tol = float(tol)
        self.num_nodes = num_nodes

    def __call__(self, x):
        return self.fn(x)

    def __repr__(self):
        return f"Numerical({self.name}, max_degree={self.max_degree})"

    def _samples(self, var: torch.Tensor, ntk: bool):
        """phi (and phi') at sqrt(var) z_q: tensors of shape var.shape + (Q,)."""
        z, _, _ = _nodes_and_projection(self.num_nodes, self.max_degree, var.dtype, str(var.device))
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
            (deriv,) = torch.autograd.grad(values.sum(), xg, create_graph=outer_grad, allow_unused=True)
        if deriv is None:
            deriv = torch.zeros_like(x)
        if not outer_grad:
            values = values.detach()
        return _merge_middle(values, mid), _merge_middle(deriv, mid)

    def _check(self, values, x):
        if not isinstance(values, torch.Tensor) or values.shape != x.shape:
            raise ValueError(f"activation {self.name!r} must be elementwise: it changed shape {tuple(x.shape)}")
        if not torch.isfinite(values).all():
            raise ValueError(f"activation {self.name!r} returned NaN/inf on Gaussian inputs; it must be finite on R")

    def _series(self, c, samples1, samples2):
        coeffs1, energies1 = hermite_coefficients(samples1, self.num_nodes, self.max_degree)
        if samples2 is samples1:
            coeffs2, energies2 = coeffs1, energies1
        else:
            coeffs2, energies2 = hermite_coefficients(samples2, self.num_nodes, self.max_degree)
        degree = max(choose_degree(coeffs1, energies1, self.tol), choose_degree(coeffs2, energies2, self.tol))
        a = with_tail(coeffs1, energies1, degree)
        b = a if coeffs2 is coeffs1 else with_tail(coeffs2, energies2, degree)
        return pair_polynomial(c, a, b)

    def dual(self, k12, k11, k22, ntk=False):
        same = k22 is k11
        phi1, dphi1 = self._samples(k11, ntk)
        phi2, dphi2 = (phi1, dphi1) if same else self._samples(k22, ntk)
        c = (k12 * (k11.rsqrt() * k22.rsqrt())).clamp(-1.0, 1.0)
        f = self._series(c, phi1, phi2)
        fdot = self._series(c, dphi1, dphi2) if ntk else None
        return f, fdot


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


_CLOSED_FORM = {
    "relu": ReLU,
    "erf": Erf,
    "abs": Abs,
    "identity": Identity,
    "linear": Identity,
    "gelu": GELU,
    "sign": Sign,
    "leaky_relu": LeakyReLU,
}
_NUMERICAL = {
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "softplus": _softplus,
    "silu": _silu,
    "elu": _elu,
}
NAMES = tuple(sorted(set(_CLOSED_FORM) | set(_NUMERICAL)))


def get_activation(activation) -> Activation:
    """Resolve a name, an Activation, or an elementwise torch callable."""
    if isinstance(activation, Activation):
        return activation
    if isinstance(activation, str):
        key = activation.lower().replace("-", "_")
        if key in _CLOSED_FORM:
            return _CLOSED_FORM[key]()
        if key in _NUMERICAL:
            return Numerical(_NUMERICAL[key], name=key)
        raise ValueError(f"unknown activation {activation!r}; known names: {', '.join(NAMES)}, "
                         "or pass an Activation from gpytorch_nngp.activations or any elementwise torch callable")
    if callable(activation):
        return Numerical(activation)
    raise TypeError(f"activation must be a name, an Activation or an elementwise torch callable, got {type(activation).__name__}")
