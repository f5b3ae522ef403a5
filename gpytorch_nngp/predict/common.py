"""The pieces every predict function shares: the outputs' types, the two kernels of one architecture, the times
and phi_t, the regularization, and the singular-kernel rule."""
from __future__ import annotations

from collections import namedtuple
from typing import Tuple

import torch

from ..kernels.base import NetworkKernel

Gaussian = namedtuple("Gaussian", "mean covariance")
GETS = ("nngp", "ntk")


# -- the two kernels of one architecture ------------------------------------------------------------------------------
def _kinds_of(kernel) -> Tuple[str, ...]:
    """The kernels a network kernel gives: an NTK kernel gives both the NNGP and the NTK (the same architecture and
    variances, through `with_kind`), an NNGP kernel the NNGP only."""
    if isinstance(kernel, NetworkKernel):
        return GETS if kernel.kind == "ntk" else ("nngp",)
    raise TypeError(f"kernel must be a network kernel (NNGPKernel or NTKKernel, fully connected or from from_module, "
                    f"or GraphNodeKernel), got {type(kernel).__name__}; for any other kernel matrix use "
                    "gradient_descent_mse or gp_inference")


def _matrix(kernel, kind: str, x1, x2=None) -> torch.Tensor:
    """The dense `kind` matrix of a network kernel, (n, m) (kernel.with_kind: the user's kernel is never changed)."""
    with torch.no_grad():
        return kernel.with_kind(kind)(x1, x2).to_dense()


def _operator(kernel, kind: str, x1, x2=None):
    """The `kind` kernel of x1 and x2 as whatever the kernel's backend makes (a tensor or a linear operator), for
    products."""
    with torch.no_grad():
        out = kernel.with_kind(kind)(x1, x2)
        return out.evaluate_kernel() if hasattr(out, "evaluate_kernel") else out


def _canonical_get(get) -> Tuple[Tuple[str, ...], bool]:
    """(the kinds asked for, whether a single one was asked by name)."""
    if get is None:
        return GETS, False
    single = isinstance(get, str)
    kinds = (get,) if single else tuple(get)
    bad = [g for g in kinds if g not in GETS + ("ntkgp",)]
    if bad or not kinds:
        raise ValueError(f"get must be 'nngp', 'ntk', a tuple of them or None, got {get!r}")
    return kinds, single


def _pack(out: dict, kinds, single: bool):
    if single:
        return out[kinds[0]]
    return namedtuple("Predictions", kinds)(*(out[g] for g in kinds))


def _ensemble_request(get, available, x_test, x_train, y_train):
    """(kinds, single, x_test on y_train's device) for an ensemble's predict_fn; ValueError for an unknown or
    unavailable get, or test inputs of the wrong shape or dtype."""
    kinds, single = _canonical_get(get)
    if "ntkgp" in kinds:
        raise ValueError("get='ntkgp' is a gp_inference mode, not a gradient-descent one")
    if "ntk" in kinds and "ntk" not in available:
        raise ValueError("the NTK ensemble needs an NTKKernel (or GraphNodeKernel(ntk=True): it gives both the NNGP "
                         "and the NTK); this kernel is an NNGP kernel: use get='nngp', or kernel.with_kind('ntk')")
    if x_test is not None:
        if not isinstance(x_test, torch.Tensor) or x_test.dim() != 2 or x_test.shape[-1] != x_train.shape[-1]:
            raise ValueError(f"x_test must have shape (m, {x_train.shape[-1]}), got "
                             f"{tuple(x_test.shape) if isinstance(x_test, torch.Tensor) else x_test!r}")
        if x_test.dtype != y_train.dtype:
            raise ValueError(f"x_test is {x_test.dtype} but x_train and y_train are {y_train.dtype}: pass x_test in "
                             f"their dtype (x_test.to({y_train.dtype}))")
        x_test = x_test.to(y_train.device)
    return kinds, single, x_test


def _regularized(k: torch.Tensor, diag_reg: float, absolute: bool) -> torch.Tensor:
    """k + diag_reg * I, diag_reg relative to the mean diagonal unless absolute (neural-tangents' convention)."""
    scale = diag_reg if absolute else diag_reg * k.diagonal().mean()
    return k + scale * torch.eye(k.shape[-1], dtype=k.dtype, device=k.device)


SINGULAR = ("the training kernel is not positive definite to working precision (duplicated training points, or a "
            "condition number near 1 / eps of its dtype), so infinite time (t=None or math.inf) has no unique "
            "solution: pass diag_reg > 0 (relative to the mean diagonal, e.g. 1e-4), or compute in float64")


def _cholesky(k: torch.Tensor) -> torch.Tensor:
    """The Cholesky factor of a training kernel; ValueError when it is singular to working precision (a squared
    pivot ratio below n eps: the solve would be rounding noise, where neural-tangents returns NaN or noise)."""
    factor, info = torch.linalg.cholesky_ex(k)
    pivots = factor.diagonal()
    ratio = (pivots.min() / pivots.max()) ** 2 if int(info) == 0 else 0.0
    # n eps: a duplicated point leaves a pivot of rounding size; an ill-conditioned float32 kernel (condition 1e5 at
    # diag_reg 1e-3) is solvable and passes.
    if int(info) != 0 or ratio < k.shape[-1] * torch.finfo(k.dtype).eps:
        raise ValueError(SINGULAR)
    return factor


def _times(t, learning_rate: float, like: torch.Tensor, infinite: bool = True) -> Tuple[torch.Tensor, torch.Size]:
    """Absolute times learning_rate * t as a column (T, 1), and t's shape. math.inf is infinite time where allowed."""
    t = torch.as_tensor(t, dtype=like.dtype, device=like.device)
    bad = torch.isnan(t) | (t < 0) | (torch.zeros_like(t, dtype=torch.bool) if infinite else torch.isinf(t))
    if bad.any():
        allowed = "not NaN (training steps; math.inf or t=None is infinite time)" if infinite else "finite"
        raise ValueError(f"t must be >= 0 and {allowed}, got {t.tolist()}")
    return (t * learning_rate).reshape(-1, 1), t.shape


def _phi(evals: torch.Tensor, times: torch.Tensor, normalization: int) -> torch.Tensor:
    """(T, ...): phi_t(l) = (1 - exp(-l t / N)) / l per eigenvalue or Ritz value l (evals (...,)), for times (T, 1).
    Its limit t / N where l = 0 (rounding may make a zero value slightly negative), and 0 there at t = inf (the
    spectral paths refuse infinite time on a singular kernel before they get here)."""
    positive = evals.clamp_min(0)
    t = times.reshape(times.shape[0], *([1] * evals.dim()))
    grown = -torch.expm1(-positive * t / normalization)
    nonzero = positive > 0
    safe = torch.where(nonzero, positive, torch.ones_like(positive))
    limit = (t / normalization).expand_as(grown)
    return torch.where(nonzero, grown / safe, torch.where(torch.isinf(limit), torch.zeros_like(limit), limit))
