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
import warnings
from typing import Callable, Dict, Optional, Tuple

import torch

from ..warnings import AccuracyWarning
from .forward_mode import abrelu_dual_tangents
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
from .safe_math import abrelu_dual, abrelu_dual_into, safe_angle, shifted_root_determinant
from .workspace import Workspace

Dual = Tuple[torch.Tensor, Optional[torch.Tensor]]  # (F, Fdot or None)
Layer = Tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor, Optional[torch.Tensor]]  # (F, Fdot, F11, F22)


# Registrations, filled by the Activation subclasses themselves (Activation.__init_subclass__).
_CLOSED_FORM: Dict[str, type] = {}  # name for get_activation -> class (activations without arguments)
_TORCH_MODULES: Dict[type, Callable] = {}  # torch module class -> module -> Activation


class Activation:
    """Base class: an elementwise function together with its Gaussian dual maps.

    Everything the library knows about an activation lives on its class (docs/design.md, "Adding an activation"):
    `dual` (E[phi(u) phi(v)] and E[phi'(u) phi'(v)]), optionally `dual_into` (the in-place inference path),
    `keops_dual` (the same formulas on KeOps LazyTensors), `dual_tangents` (forward-mode derivatives of F and
    Fdot, for the fully connected kernel's derivative wrt its variances), and the registrations: `aliases` (names
    get_activation knows) and `torch_modules` (torch module classes that from_module translates into it, through
    `from_torch`).
    """

    name = "activation"
    aliases: Tuple[str, ...] = ()
    torch_modules: Tuple[type, ...] = ()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for alias in cls.__dict__.get("aliases", ()):
            _CLOSED_FORM[alias] = cls
        for module in cls.__dict__.get("torch_modules", ()):
            _TORCH_MODULES[module] = cls.from_torch

    @classmethod
    def from_torch(cls, module: torch.nn.Module) -> Activation:
        """The activation a torch module of one of `torch_modules` computes."""
        return cls()

    def keops_dual(self, k12, v1, v2, ntk: bool, rel_eps: float):
        """(F, Fdot) on KeOps LazyTensors, k12 (i, j), v1 (i), v2 (j); activations without one raise."""
        raise NotImplementedError(f"{self!r} has no KeOps formula")

    @property
    def has_keops(self) -> bool:
        return type(self).keops_dual is not Activation.keops_dual

    def dual_tangents(self, k12, k11, k22, d12, d11, d22, ntk: bool):
        """(F, Fdot, [dF], [dFdot] or None) with the directional derivatives along each tangent (d12[p], d11[p],
        d22[p]), without autograd (the flat program's forward mode, algebra/flat.py); activations without one
        raise."""
        raise NotImplementedError(f"{self!r} has no forward-mode derivative")

    @property
    def has_tangents(self) -> bool:
        return type(self).dual_tangents is not Activation.dual_tangents

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def dual(self, k12: torch.Tensor, k11: torch.Tensor, k22: torch.Tensor, ntk: bool = False) -> Dual:
        raise NotImplementedError

    def dual_into(self, k12: torch.Tensor, k11: torch.Tensor, k22: torch.Tensor, ntk: bool,
                  workspace: Workspace) -> Dual:
        """dual() without autograd, with buffers from `workspace` where the activation can write into them (the
        caller gives back what it no longer needs). The default allocates, as dual() does."""
        return self.dual(k12, k11, k22, ntk)

    def layer(self, k12: torch.Tensor, k11: torch.Tensor, k22: torch.Tensor, ntk: bool = False,
              symmetric: bool = False, workspace: Optional[Workspace] = None) -> Layer:
        """One layer's maps: (F(k12), Fdot(k12) or None, F(k11) on the variances, F(k22) or None).

        F(k22) is None when k22 is k11 or, with symmetric=True, when k22 is k11 transposed (the caller reuses
        F(k11)). Activations whose dual has a per-point setup cost (Numerical) share it across the three maps.
        workspace: where buffers for the outputs may come from (functional/workspace.py), given only
        when no autograd is needed; activations may ignore it.
        """
        f, fdot = self.dual(k12, k11, k22, ntk)
        f11, _ = self.dual(k11, k11, k11, False)
        f22 = None if k22 is k11 or symmetric else self.dual(k22, k22, k22, False)[0]
        return f, fdot, f11, f22

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

    def dual(self, k12: torch.Tensor, k11: torch.Tensor, k22: torch.Tensor, ntk: bool = False) -> Dual:
        f, fdot = abrelu_dual(k12, k11, k22, self.a, self.b)
        return f, (fdot if ntk else None)

    def keops_dual(self, k12, v1, v2, ntk, rel_eps):  # Cho & Saul 2009 arc-cosine kernel, degree 1
        amp = (self.a - self.b) ** 2 / (2 * math.pi)
        s = keops_gap_sqrt(k12, v1, v2, rel_eps)
        fdot = (self.a * self.a + self.b * self.b) / 2 - amp * s.atan2(k12)
        return amp * s + fdot * k12, fdot

    def dual_tangents(self, k12, k11, k22, d12, d11, d22, ntk):
        return abrelu_dual_tangents(k12, k11, k22, d12, d11, d22, self.a, self.b, ntk)

    def dual_into(self, k12, k11, k22, ntk, workspace):
        f, fdot = abrelu_dual_into(k12, k11, k22, self.a, self.b, [workspace.take(k12), workspace.take(k12)])
        if not ntk:
            workspace.give(fdot)
            fdot = None
        return f, fdot

    def layer(self, k12: torch.Tensor, k11: torch.Tensor, k22: torch.Tensor, ntk: bool = False,
              symmetric: bool = False, workspace: Optional[Workspace] = None) -> Layer:
        if workspace is None:
            return super().layer(k12, k11, k22, ntk, symmetric)
        # Inference path: F and Fdot are written into recycled buffers (see recursion.fully_connected_recursion).
        f, fdot = self.dual_into(k12, k11, k22, ntk, workspace)
        f11, _ = self.dual(k11, k11, k11, False)
        f22 = None if k22 is k11 or symmetric else self.dual(k22, k22, k22, False)[0]
        return f, fdot, f11, f22

    def __repr__(self):
        return f"{type(self).__name__}(a={self.a}, b={self.b})"


class ReLU(ABReLU):
    """phi(x) = max(x, 0): the arc-cosine kernel of degree 1 (Cho and Saul 2009); ABReLU(0, 1)."""

    name = "relu"
    aliases = ("relu",)
    torch_modules = (torch.nn.ReLU,)

    def __init__(self):
        super().__init__(0.0, 1.0)

    def __call__(self, x):
        return torch.relu(x)

    def __repr__(self):
        return "ReLU()"


class LeakyReLU(ABReLU):
    """phi(x) = x for x >= 0, negative_slope * x for x < 0."""

    name = "leaky_relu"
    aliases = ("leaky_relu",)
    torch_modules = (torch.nn.LeakyReLU,)

    @classmethod
    def from_torch(cls, module):
        return cls(module.negative_slope)

    def __init__(self, negative_slope: float = 0.01):
        super().__init__(negative_slope, 1.0)

    def __repr__(self):
        return f"LeakyReLU(negative_slope={self.a})"


class Abs(ABReLU):
    """phi(x) = |x|: ABReLU(-1, 1)."""

    name = "abs"
    aliases = ("abs",)

    def __init__(self):
        super().__init__(-1.0, 1.0)

    def __call__(self, x):
        return x.abs()

    def __repr__(self):
        return "Abs()"


class Identity(Activation):
    """phi(x) = x: F = k12, Fdot = 1 (a deep linear network)."""

    name = "identity"
    aliases = ("identity", "linear")

    def __call__(self, x):
        return x

    def keops_dual(self, k12, v1, v2, ntk, rel_eps):
        return k12, 1.0

    def dual(self, k12: torch.Tensor, k11: torch.Tensor, k22: torch.Tensor, ntk: bool = False) -> Dual:
        return k12, (torch.ones_like(k12) if ntk else None)


class Erf(Activation):
    """phi(x) = erf(x) (Williams 1997):
    F = (2/pi) arcsin(2 k12 / sqrt((1 + 2 k11)(1 + 2 k22))),  Fdot = (4/pi) / sqrt((1 + 2 k11)(1 + 2 k22) - 4 k12^2).
    The root in Fdot is >= 1, so the gradients are finite everywhere.
    """

    name = "erf"
    aliases = ("erf",)

    def __call__(self, x):
        return torch.erf(x)

    def keops_dual(self, k12, v1, v2, ntk, rel_eps):  # Williams 1997
        prod = (1 + 2 * v1) * (1 + 2 * v2)
        f = (2 / math.pi) * (2 * k12 * prod.rsqrt()).asin()
        fdot = (4 / math.pi) * (prod - 4 * k12 * k12).rsqrt() if ntk else None
        return f, fdot

    def dual(self, k12: torch.Tensor, k11: torch.Tensor, k22: torch.Tensor, ntk: bool = False) -> Dual:
        # With R = sqrt((1 + 2 k11)(1 + 2 k22) - 4 k12^2), arcsin(2 k12 / sqrt(...)) = atan2(2 k12, R). R is formed
        # without the products, whose difference cancels to a few digits in float32 at variances of 1e6.
        root = shifted_root_determinant(k12, k11, k22, 2.0)
        f = (2 / math.pi) * torch.atan2(2 * k12, root)
        return f, ((4 / math.pi) / root if ntk else None)


class GELU(Activation):
    """Exact GELU, phi(x) = x Phi(x) (Tsuchida et al. 2020, "Avoiding kernel fixed points"; as in neural-tangents).

    With P = k11 k22, P1 = (1 + k11)(1 + k22), D = sqrt(P1 - k12^2) > 0 and alpha = atan2(k12, D):
        F    = k12 / 4 + ((k12^2 + P D^2) / (P1 D) + k12 alpha) / (2 pi)
        Fdot = 1/4 + alpha / (2 pi) + k12 / (2 pi D) (1 / D^2 + (1 - P) / P1 + 1)
    """

    name = "gelu"
    aliases = ("gelu",)
    torch_modules = (torch.nn.GELU,)

    @classmethod
    def from_torch(cls, module):
        return cls() if module.approximate == "none" else Numerical(module, name="gelu_tanh")

    def __call__(self, x):
        return torch.nn.functional.gelu(x)

    def dual(self, k12: torch.Tensor, k11: torch.Tensor, k22: torch.Tensor, ntk: bool = False) -> Dual:
        # The products P, P1 and k12^2 are never formed: D^2 = 1 + k11 + k22 + (k11 k22 - k12^2) and the ratios
        # k12^2 / P1, P / P1 by factors, so that large variances neither cancel nor overflow in float32.
        r1, r2 = 1 / (1 + k11), 1 / (1 + k22)
        ratio = (k11 * r1) * (k22 * r2)  # P / P1
        d = shifted_root_determinant(k12, k11, k22, 1.0)
        d2 = d * d
        alpha = torch.atan2(k12, d)
        f = 0.25 * k12 + ((k12 * r1) * (k12 * r2) / d + ratio * d + k12 * alpha) / (2 * math.pi)
        fdot = None
        if ntk:
            fdot = 0.25 + alpha / (2 * math.pi) + k12 / (2 * math.pi * d) * (1 / d2 + r1 * r2 - ratio + 1)
        return f, fdot


class Sign(Activation):
    """phi(x) = sign(x): F = (2/pi) arcsin(c) = 1 - 2 theta / pi.

    The derivative is zero almost everywhere, so the NTK term Fdot is 0 (what autograd gives for a finite network).
    """

    name = "sign"
    aliases = ("sign",)

    def __call__(self, x):
        return torch.sign(x)

    def keops_dual(self, k12, v1, v2, ntk, rel_eps):
        s = keops_gap_sqrt(k12, v1, v2, rel_eps)
        return 1 - (2 / math.pi) * s.atan2(k12), 0.0

    def dual(self, k12: torch.Tensor, k11: torch.Tensor, k22: torch.Tensor, ntk: bool = False) -> Dual:
        f = 1 - (2 / math.pi) * safe_angle(k12, k11, k22)
        return f, (torch.zeros_like(f) if ntk else None)


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
            out = alpha * alpha * _SIGN.dual(k12, k11, k22)[0]
        if beta != 0.0:
            term = beta * beta * _ABS.dual(k12, k11, k22)[0]
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

    def dual(self, k12: torch.Tensor, k11: torch.Tensor, k22: torch.Tensor, ntk: bool = False) -> Dual:
        side1 = self._side(k11, ntk)
        side2 = side1 if k22 is k11 else self._side(k22, ntk)
        f = self._pair(k12, k11, k22, side1, side2, deriv=False)
        fdot = self._pair(k12, k11, k22, side1, side2, deriv=True) if ntk else None
        return f, fdot

    def layer(self, k12: torch.Tensor, k11: torch.Tensor, k22: torch.Tensor, ntk: bool = False,
              symmetric: bool = False, workspace: Optional[Workspace] = None) -> Layer:
        # One set of samples and coefficients per point serves the matrix, its NTK term and the variances.
        # Variances go through the same series at c = 1 as the matrix diagonal, so that identical inputs keep
        # k12 == k11 == k22 bitwise in the next layer (|c| = 1 exactly, safe gradients).
        side1 = self._side(k11, ntk)
        if k22 is k11:
            side2 = side1
        elif symmetric:
            side2 = side1.transposed()
        else:
            side2 = self._side(k22, ntk)
        f = self._pair(k12, k11, k22, side1, side2, deriv=False)
        fdot = self._pair(k12, k11, k22, side1, side2, deriv=True) if ntk else None
        f11 = self._pair(k11, k11, k11, side1, side1, deriv=False)
        f22 = None if k22 is k11 or symmetric else self._pair(k22, k22, k22, side2, side2, deriv=False)
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


_SIGN = Sign()
_ABS = Abs()
# Above these the Numerical kernel may be off by more than about 1e-3 (benchmarks/numerical_activations.py).
QUADRATURE_WARN = 1e-4
SERIES_WARN = 1e-2
_DEGREE_STAGES = (128, 512)


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
NAMES = tuple(sorted(set(_CLOSED_FORM) | set(_NUMERICAL)))
# Other elementwise, stateless torch activation modules: the numerical dual of the module itself.
NUMERICAL_MODULES = (torch.nn.Hardtanh, torch.nn.Mish, torch.nn.SELU, torch.nn.CELU, torch.nn.Softsign,
                     torch.nn.Hardswish, torch.nn.Hardsigmoid, torch.nn.LogSigmoid, torch.nn.Tanhshrink,
                     torch.nn.Softshrink, torch.nn.Hardshrink)


def _named_numerical(key: str, module_class: type):
    def factory(module):
        # the named function where the module has its default arguments, else the module itself
        default = module_class().extra_repr() == module.extra_repr()
        return get_activation(key) if default else Numerical(module, name=key)
    return factory


for _key, (_, _module) in _NUMERICAL.items():
    _TORCH_MODULES[_module] = _named_numerical(_key, _module)
for _module in NUMERICAL_MODULES:
    _TORCH_MODULES.setdefault(_module, lambda module: Numerical(module, name=type(module).__name__))
TORCH_MODULES = tuple(_TORCH_MODULES)


def from_torch_module(module: torch.nn.Module) -> Optional[Activation]:
    """The Activation a torch activation module computes (its class registered, or a subclass), or None."""
    factory = _TORCH_MODULES.get(type(module))
    if factory is None:
        factory = next((f for cls, f in _TORCH_MODULES.items() if isinstance(module, cls)), None)
    return None if factory is None else factory(module)


def keops_gap_sqrt(k12, v1, v2, rel_eps: float):
    """sqrt(k11 k22 - k12^2) on KeOps LazyTensors, with gaps below rel_eps k11 k22 taken as 0 (KeOps sums <x, x'>
    in its own order, so identical points can leave a gap of a few ulps); rsqrt(0) = 0 in KeOps keeps its gradient
    at 0 there."""
    gap = (v1 * v2 * (1.0 - rel_eps) - k12 * k12).relu()
    return gap * gap.rsqrt()


class Composed:
    """x -> outer(inner(x)) as a picklable callable (two Activations), for Numerical."""

    def __init__(self, outer: Activation, inner: Activation):
        self.outer, self.inner = outer, inner
        self.__name__ = f"{getattr(outer, 'name', 'phi')}({getattr(inner, 'name', 'phi')})"

    def __call__(self, x):
        return self.outer(self.inner(x))

    def __eq__(self, other):
        return type(self) is type(other) and (self.outer, self.inner) == (other.outer, other.inner)

    def __hash__(self):
        return hash((self.outer, self.inner))


def compose(outer: Activation, inner: Activation) -> Activation:
    """The activation x -> outer(inner(x)).

    An activation applied to another activation's output is one elementwise function of the Gaussian below both,
    so its dual is that of the composition: closed form for the identity and for piecewise linear functions
    (ABReLU of ABReLU is an ABReLU: ReLU of ReLU is ReLU), numerical (Hermite series) otherwise.
    """
    if isinstance(inner, Identity):
        return outer
    if isinstance(outer, Identity):
        return inner
    if isinstance(outer, ABReLU) and isinstance(inner, ABReLU):
        # x >= 0: inner gives b1 x, of the sign of b1; x < 0: a1 x, of the sign of -a1.
        b = (outer.b if inner.b >= 0 else outer.a) * inner.b
        a = (outer.b if inner.a <= 0 else outer.a) * inner.a
        for cls in (ReLU, Abs):
            if (a, b) == (cls().a, cls().b):
                return cls()
        return LeakyReLU(a) if b == 1.0 and a >= 0 else ABReLU(a, b)
    return Numerical(Composed(outer, inner))


def get_activation(activation) -> Activation:
    """The Activation for a name (NAMES), an Activation, or an elementwise torch callable (e.g. torch.nn.Tanh()).

    Raises:
        ValueError: an unknown name (the message lists the known ones).
        TypeError: anything else, including a torch.nn.Module class instead of an instance.
    """
    if isinstance(activation, Activation):
        return activation
    if isinstance(activation, str):
        key = activation.lower().replace("-", "_")
        if key in _CLOSED_FORM:
            return _CLOSED_FORM[key]()
        if key in _NUMERICAL:
            return Numerical(_NUMERICAL[key][0], name=key)
        raise ValueError(f"unknown activation {activation!r}; known names: {', '.join(NAMES)}, "
                         "or pass an Activation from gpytorch_nngp.activations or any elementwise torch callable")
    if isinstance(activation, type):
        if issubclass(activation, torch.nn.Module):
            raise TypeError(f"activation is the module class {activation.__module__}.{activation.__name__}, not a "
                            f"module: instantiate it ({activation.__name__}()) or pass a name such as 'relu'")
        raise TypeError(f"activation must be a name, an Activation or an elementwise torch callable, got the class "
                        f"{activation.__name__}")
    if callable(activation):
        return Numerical(activation)
    raise TypeError(f"activation must be a name, an Activation or an elementwise torch callable, got "
                    f"{type(activation).__name__}")
