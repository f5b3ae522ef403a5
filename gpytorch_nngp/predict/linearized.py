"""One linearized network trained by gradient descent on the MSE loss (closed form), and the largest stable
step."""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch

from .checks import _check_matrix, _check_outputs, _check_training
from .common import _regularized, _times
from .spectral import _Spectral


def gradient_descent_mse(k_train_train: torch.Tensor, y_train: torch.Tensor, learning_rate: float = 1.0,
                         diag_reg: float = 0.0, diag_reg_absolute_scale: bool = False) -> Callable:
    r"""The outputs of one linearized network trained by gradient descent on the MSE loss, for any kernel.

    Args:
        k_train_train: (n, n) tangent kernel on the training inputs (an infinite-width NTK, or a network's own
            finite NTK, e.g. `FiniteNTKKernel(model)(x).to_dense()`): finite, symmetric, in y_train's dtype.
        y_train: (n, k) targets.
        learning_rate, diag_reg, diag_reg_absolute_scale: as in the module docstring.

    Returns:
        `predict_fn(t=None, fx_train_0=0.0, fx_test_0=None, k_test_train=None)`: fx_train_t (*t_shape, n, k), or
        (fx_train_t, fx_test_t) when fx_test_0 (m, k) and k_test_train (m, n) are given; fx_train_0=None leaves the
        training outputs out. t=None is infinite time, the same as math.inf (it needs a non-singular regularized
        kernel).

    .. math::

        f_t(X) = y + e^{-K t / N} (f_0(X) - y), \qquad
        f_t(x_*) = f_0(x_*) + K_{*X} K^{-1} (I - e^{-K t / N}) (y - f_0(X)).

    Example:
        >>> import torch
        >>> from gpytorch_nngp.predict import gradient_descent_mse
        >>> k = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
        >>> y = torch.tensor([[1.0], [-1.0]], dtype=torch.float64)
        >>> predict_fn = gradient_descent_mse(k, y, learning_rate=1.0)
        >>> predict_fn(0.0, fx_train_0=0.0).tolist()
        [[0.0], [0.0]]
        >>> torch.allclose(predict_fn(None, fx_train_0=0.0), y)  # trained to the end: the targets
        True
    """
    _check_training(None, y_train, learning_rate, diag_reg)
    n = y_train.shape[0]
    k = _check_matrix("k_train_train", k_train_train, (n, n), y_train, symmetric=True)
    spectral = _Spectral(_regularized(k, diag_reg, diag_reg_absolute_scale), y_train.numel())

    def predict_fn(t=None, fx_train_0=0.0, fx_test_0=None, k_test_train=None):
        if fx_test_0 is not None and k_test_train is None:
            raise ValueError("fx_test_0 is given but k_test_train is None: pass the (m, n) test-train kernel")
        k_td = None
        if fx_test_0 is not None:
            k_td = _check_matrix("k_test_train", k_test_train, (None, n), y_train)
            fx_test_0 = _check_outputs("fx_test_0", fx_test_0, (k_td.shape[0], y_train.shape[1]), y_train)
        f0 = None if fx_train_0 is None else _check_outputs("fx_train_0", fx_train_0, y_train.shape, y_train)
        residual = y_train if f0 is None else y_train - f0
        times, shape = _times(math.inf if t is None else t, learning_rate, y_train)
        fx_train = fx_test = None
        if f0 is not None:  # f0 + (I - exp(-k t / N))(y - f0)
            fx_train = (f0 + spectral.grown(times, residual)).reshape(*shape, *y_train.shape)
        if fx_test_0 is not None:
            moved = spectral.phi(times, residual)  # (T, n, k)
            fx_test = fx_test_0 + torch.einsum("mn,tnk->tmk", k_td, moved)
            fx_test = fx_test.reshape(*shape, *fx_test.shape[-2:])
        if fx_test_0 is None:
            return fx_train
        return fx_test if fx_train is None else (fx_train, fx_test)

    return predict_fn


def max_learning_rate(ntk_train_train: torch.Tensor, y_train_size: Optional[int] = None, momentum: float = 0.0,
                      eps: float = 1e-12) -> float:
    """The largest stable gradient-descent step for the MSE loss: 2 (1 + momentum) N / (lambda_max + eps), with N the
    number of training outputs (y_train_size; default the kernel's size, one output) and lambda_max the NTK's largest
    eigenvalue (neural-tangents' `max_learning_rate`).

    Example:
        >>> import torch
        >>> from gpytorch_nngp.predict import max_learning_rate
        >>> round(max_learning_rate(torch.eye(4, dtype=torch.float64) * 2.0), 6)  # 2 N / lambda_max = 2 * 4 / 2
        4.0
    """
    k = torch.as_tensor(ntk_train_train)
    if k.dim() != 2 or k.shape[0] != k.shape[1]:
        raise ValueError(f"ntk_train_train must be a square (n, n) matrix, got {tuple(k.shape)}")
    factor = k.shape[0] if y_train_size is None else y_train_size
    top = torch.linalg.eigvalsh(k.double())[-1].item()
    return 2 * (1 + momentum) * factor / (top + eps)
