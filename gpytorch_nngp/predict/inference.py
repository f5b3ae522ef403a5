"""Gaussian process inference at infinite time: the NNGP posterior, the infinite-time NTK ensemble, the NTK-GP."""
from __future__ import annotations

from typing import Callable

import torch

from .checks import _check_matrix, _check_training
from .common import Gaussian, _canonical_get, _cholesky, _pack, _regularized


def gp_inference(k_train_train, y_train: torch.Tensor, diag_reg: float = 0.0,
                 diag_reg_absolute_scale: bool = False) -> Callable:
    r"""The NNGP posterior, the infinite-time NTK ensemble, or the NTK-GP (He et al. 2020), by Cholesky solves.

    Args:
        k_train_train: (n, n) tensor, or a namedtuple / dict with `nngp` and `ntk` (n, n) tensors (finite,
            symmetric, in y_train's dtype; each is checked when first used).
        y_train: (n, k) targets.

    Returns:
        `predict_fn(get=None, k_test_train=None, k_test_test=None)` with get in "nngp", "ntk", "ntkgp", a tuple or
        None (both "nngp" and "ntk"); k_test_train (m, n) (tensor or namedtuple/dict like k_train_train), k_test_test
        (m, m) NNGP (the NTK for "ntkgp") to get Gaussian(mean, covariance). k_test_train=None gives the training
        targets (with zero covariance), as neural-tangents does -- once the training kernel is known to be
        non-singular, since that is the infinite-time limit only then.

    .. math::

        \mu = K_{*X} (K_{XX} + \epsilon I)^{-1} y, \qquad \Sigma = K_{**} - K_{*X} (K_{XX} + \epsilon I)^{-1} K_{X*}
        \quad \text{(get="nngp")}.

    Example:
        >>> import torch
        >>> from gpytorch_nngp.predict import gp_inference
        >>> k = torch.tensor([[2.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
        >>> y = torch.tensor([[1.0], [0.0]], dtype=torch.float64)
        >>> out = gp_inference(k, y)(get="nngp", k_test_train=k[:1], k_test_test=k[:1, :1])
        >>> out.mean.round(decimals=12).tolist(), out.covariance.tolist()  # a training point: its target, no variance
        ([[1.0]], [[0.0]])
    """
    _check_training(None, y_train, 1.0, diag_reg)
    n = y_train.shape[0]
    factors, checked = {}, {}

    def part(k, g, name, shape=None):
        value = k if isinstance(k, torch.Tensor) else k.get(g) if isinstance(k, dict) else getattr(k, g, None)
        if value is None:
            raise ValueError(f"the {g!r} kernel of {name} is needed here but not given")
        label = name if isinstance(k, torch.Tensor) else f"{name}.{g}"
        if shape is None:
            return _check_matrix(label, value, (None, n), y_train)
        return _check_matrix(label, value, shape, y_train, symmetric=shape == (n, n) and name == "k_train_train")

    def train(kind):
        if kind not in checked:
            checked[kind] = part(k_train_train, kind, "k_train_train", (n, n))
        return checked[kind]

    def solve(g, rhs):
        kind = "ntk" if g == "ntkgp" else g
        if kind not in factors:
            factors[kind] = _cholesky(_regularized(train(kind), diag_reg, diag_reg_absolute_scale))
        return torch.cholesky_solve(rhs, factors[kind])

    def predict_fn(get=None, k_test_train=None, k_test_test=None):
        kinds, single = _canonical_get(get)
        out = {}
        for g in kinds:
            kind = "ntk" if g == "ntkgp" else g
            if k_test_train is None:
                solve(g, y_train[:1].mT)  # the targets are the limit only for a non-singular kernel
                mean = y_train.clone()
                out[g] = mean if k_test_test is None else Gaussian(mean, torch.zeros(
                    y_train.shape[0], y_train.shape[0], dtype=y_train.dtype, device=y_train.device))
                continue
            k_td = part(k_test_train, kind, "k_test_train")
            mean = k_td @ solve(g, y_train)
            if k_test_test is None:
                out[g] = mean
                continue
            start = "ntk" if g == "ntkgp" else "nngp"
            k_tt = part(k_test_test, start, "k_test_test", (k_td.shape[0],) * 2)
            k_td_start = part(k_test_train, start, "k_test_train")
            if g in ("nngp", "ntkgp"):
                cov = k_tt - k_td @ solve(g, k_td_start.mT)
            else:
                term_1 = solve(g, k_td.mT)  # Theta^-1 Theta_X*
                term_2 = k_td @ solve(g, k_td_start.mT)  # Theta_*X Theta^-1 K_X*
                cov = k_tt + term_1.mT @ train("nngp") @ term_1 - term_2 - term_2.mT
            out[g] = Gaussian(mean, cov)
        return _pack(out, kinds, single)

    return predict_fn
