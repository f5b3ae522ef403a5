"""Activations and their dual functions F and Fdot.

For (u, v) ~ N(0, [[k11, k12], [k12, k22]]):

    F(k12, k11, k22)    = E[phi(u) phi(v)]      (NNGP layer map, Lee et al. 2018, Eq. 3)
    Fdot(k12, k11, k22) = E[phi'(u) phi'(v)]    (NTK layer map, Jacot et al. 2018)

Every activation implements `dual(k12, k11, k22, ntk)` on broadcastable tensors: k12 (..., n, m),
k11 (..., n, 1), k22 (..., 1, m) for a kernel matrix, or all (..., n) for a diagonal. It returns
(F, Fdot) with Fdot None when ntk is False. Closed forms where they exist; any other elementwise torch
function goes through `Numerical` (Hermite/Mehler series, see hermite.py).

This module holds the base class and the registries every activation fills; closed_forms.py the activations with
closed-form duals, numerical.py the numerical one; activations.py is their public face (get_activation).
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

import torch

from .workspace import Workspace

DualPair = Tuple[torch.Tensor, Optional[torch.Tensor]]  # (F, Fdot or None)
LayerValues = Tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor, Optional[torch.Tensor]]  # (F, Fdot, F11, F22)


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

    def dual(self, k12: torch.Tensor, k11: torch.Tensor, k22: torch.Tensor, ntk: bool = False) -> DualPair:
        raise NotImplementedError

    def dual_into(self, k12: torch.Tensor, k11: torch.Tensor, k22: torch.Tensor, ntk: bool,
                  workspace: Workspace) -> DualPair:
        """dual() without autograd, with buffers from `workspace` where the activation can write into them (the
        caller gives back what it no longer needs). The default allocates, as dual() does."""
        return self.dual(k12, k11, k22, ntk)

    def layer(self, k12: torch.Tensor, k11: torch.Tensor, k22: torch.Tensor, ntk: bool = False,
              x1_eq_x2: bool = False, workspace: Optional[Workspace] = None) -> LayerValues:
        """One layer's maps: (F(k12), Fdot(k12) or None, F(k11) on the variances, F(k22) or None).

        F(k22) is None when k22 is k11 or, with x1_eq_x2=True, when k22 is k11 transposed (the caller reuses
        F(k11)). Activations whose dual has a per-point setup cost (Numerical) share it across the three maps.
        workspace: where buffers for the outputs may come from (functional/workspace.py), given only
        when no autograd is needed; activations may ignore it.
        """
        f, fdot = self.dual(k12, k11, k22, ntk)
        f11, _ = self.dual(k11, k11, k11, False)
        f22 = None if k22 is k11 or x1_eq_x2 else self.dual(k22, k22, k22, False)[0]
        return f, fdot, f11, f22

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and self.__dict__ == other.__dict__

    def __hash__(self) -> int:
        return hash((type(self), tuple(sorted(map(str, self.__dict__.items())))))


def keops_gap_sqrt(k12, v1, v2, rel_eps: float):
    """sqrt(k11 k22 - k12^2) on KeOps LazyTensors, with gaps below rel_eps k11 k22 taken as 0 (KeOps sums <x, x'>
    in its own order, so identical points can leave a gap of a few ulps); rsqrt(0) = 0 in KeOps keeps its gradient
    at 0 there."""
    gap = (v1 * v2 * (1.0 - rel_eps) - k12 * k12).relu()
    return gap * gap.rsqrt()


