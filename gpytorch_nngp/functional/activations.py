"""The public face of the activations: get_activation, the names and torch modules the kernels know, compose, and
every activation class. What an activation is (its dual maps F and Fdot) is in activation_base.py; the closed forms
are in closed_forms.py, the numerical (Hermite series) one in numerical.py."""
from __future__ import annotations

from typing import Optional

import torch

from .activation_base import _CLOSED_FORM, _TORCH_MODULES, Activation, DualPair, LayerValues  # noqa: F401
from .closed_forms import GELU, ABReLU, Abs, Erf, Identity, LeakyReLU, ReLU, Sign  # noqa: F401
from .numerical import _NUMERICAL, NUMERICAL_MODULES, Numerical, check_elementwise  # noqa: F401

NAMES = tuple(sorted(set(_CLOSED_FORM) | set(_NUMERICAL)))


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


