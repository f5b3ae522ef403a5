"""The activations whose Gaussian duals have closed forms (Cho and Saul 2009 for the arc-cosine family; Williams
1997 for erf; the rest as their docstrings say), each registering itself with its names and torch modules."""
from __future__ import annotations

import math
from typing import Optional

import torch

from .activation_base import Activation, DualPair, LayerValues, keops_gap_sqrt
from .forward_mode import abrelu_dual_tangents
from .numerical import Numerical
from .safe_math import abrelu_dual, abrelu_dual_into, safe_angle, shifted_root_determinant
from .workspace import Workspace


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

    def dual(self, k12: torch.Tensor, k11: torch.Tensor, k22: torch.Tensor, ntk: bool = False) -> DualPair:
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
              x1_eq_x2: bool = False, workspace: Optional[Workspace] = None) -> LayerValues:
        if workspace is None:
            return super().layer(k12, k11, k22, ntk, x1_eq_x2)
        # Inference path: F and Fdot are written into recycled buffers (see recursion.fully_connected_recursion).
        f, fdot = self.dual_into(k12, k11, k22, ntk, workspace)
        f11, _ = self.dual(k11, k11, k11, False)
        f22 = None if k22 is k11 or x1_eq_x2 else self.dual(k22, k22, k22, False)[0]
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

    def dual(self, k12: torch.Tensor, k11: torch.Tensor, k22: torch.Tensor, ntk: bool = False) -> DualPair:
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

    def dual(self, k12: torch.Tensor, k11: torch.Tensor, k22: torch.Tensor, ntk: bool = False) -> DualPair:
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

    def dual(self, k12: torch.Tensor, k11: torch.Tensor, k22: torch.Tensor, ntk: bool = False) -> DualPair:
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

    def dual(self, k12: torch.Tensor, k11: torch.Tensor, k22: torch.Tensor, ntk: bool = False) -> DualPair:
        f = 1 - (2 / math.pi) * safe_angle(k12, k11, k22)
        return f, (torch.zeros_like(f) if ntk else None)


