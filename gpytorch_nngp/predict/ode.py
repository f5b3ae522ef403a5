"""One linearized network under any loss: gradient flow in function space, an ODE."""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch

from .checks import _check_matrix, _check_outputs, _check_training
from .common import _times


def gradient_descent(loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], k_train_train: torch.Tensor,
                     y_train: torch.Tensor, learning_rate: float = 1.0, momentum: Optional[float] = None, *,
                     rtol: float = 1.4e-8, atol: float = 1.4e-8) -> Callable:
    """One linearized network trained by (momentum) gradient descent on any differentiable loss, in function space:
    an ODE integrated by torchdiffeq's adaptive Dormand-Prince solver (neural-tangents' `gradient_descent`).

    Gradient flow (Lee et al. 2019, eq. 9): d f(X)/dt = -Theta(X, X) dL/df(X), d f(x*)/dt = -Theta(x*, X) dL/df(X),
    absolute time learning_rate * t. With momentum m, neural-tangents' continuous momentum: f' = q,
    q' = -Theta dL/df + (m - 1) / sqrt(lr) q, in units of sqrt(lr), so absolute time is sqrt(learning_rate) * t.

    Args:
        loss: `loss(fx_train, y_train)` -> scalar, differentiable in fx_train (n, k); e.g. cross-entropy
            `lambda f, y: -(torch.log_softmax(f, -1) * y).mean()` (neural-tangents' example).
        k_train_train: (n, n) tangent kernel, shared by the k outputs.
        y_train: (n, k) targets.
        learning_rate: > 0. momentum: None (plain gradient descent) or a number in [0, 1).
        rtol, atol: tolerances of the adaptive solver (keyword only; neural-tangents' defaults, those of
            jax.experimental.ode.odeint).

    Returns:
        `predict_fn(t, fx_train_0=0.0, fx_test_0=None, k_test_train=None)`: fx_train_t (*t_shape, n, k), or
        (fx_train_t, fx_test_t) when fx_test_0 (m, k) and k_test_train (m, n) are given. t: steps >= 0, any shape
        and order; t=None (infinite time) is refused, since an ODE solver cannot reach it (for the MSE loss
        `gradient_descent_mse` has it in closed form).

    Example:
        >>> import torch
        >>> from gpytorch_nngp.predict import gradient_descent
        >>> k = torch.eye(3, dtype=torch.float64)
        >>> y = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
        >>> cross_entropy = lambda f, y: -(torch.log_softmax(f, -1) * y).mean()
        >>> predict_fn = gradient_descent(cross_entropy, k, y, learning_rate=1.0)
        >>> f = predict_fn([0.0, 50.0], fx_train_0=0.0)
        >>> f.shape, bool((f[1].argmax(-1) == y.argmax(-1)).all())
        (torch.Size([2, 3, 2]), True)
    """
    from torchdiffeq import odeint

    _check_training(None, y_train, learning_rate, 0.0)
    if not callable(loss):
        raise TypeError(f"loss must be a function loss(fx_train, y_train) -> scalar, got {type(loss).__name__}")
    if momentum is not None and (not isinstance(momentum, (int, float)) or isinstance(momentum, bool)
                                 or not 0 <= momentum < 1):
        raise ValueError(f"momentum must be None or a number in [0, 1), got {momentum!r}")
    k = _check_matrix("k_train_train", k_train_train, (y_train.shape[0],) * 2, y_train, symmetric=True)
    rate = math.sqrt(learning_rate) if momentum is not None else learning_rate
    friction = None if momentum is None else (momentum - 1.0) / rate

    def loss_gradient(fx_train):
        with torch.enable_grad():
            f = fx_train.detach().requires_grad_(True)
            value = loss(f, y_train)
            if not isinstance(value, torch.Tensor) or value.numel() != 1:
                raise ValueError("loss(fx_train, y_train) must return a scalar tensor")
            (gradient,) = torch.autograd.grad(value, f)
        return gradient

    def predict_fn(t, fx_train_0=0.0, fx_test_0=None, k_test_train=None):
        if t is None:
            raise ValueError("t=None (infinite time) cannot be reached by an ODE solver: pass finite steps (for the "
                             "MSE loss, gradient_descent_mse gives t=None in closed form)")
        if fx_test_0 is not None and k_test_train is None:
            raise ValueError("fx_test_0 is given but k_test_train is None: pass the (m, n) test-train kernel")
        if fx_train_0 is None and fx_test_0 is None:
            raise ValueError("fx_train_0 and fx_test_0 are both None: nothing to predict")
        times, shape = _times(t, rate, y_train, infinite=False)
        times = times.reshape(-1)
        f_train = torch.zeros_like(y_train) if fx_train_0 is None else \
            _check_outputs("fx_train_0", fx_train_0, y_train.shape, y_train).clone()
        k_td = None
        state = [f_train]
        if fx_test_0 is not None:
            k_td = _check_matrix("k_test_train", k_test_train, (None, y_train.shape[0]), y_train)
            state.append(_check_outputs("fx_test_0", fx_test_0, (k_td.shape[0], y_train.shape[1]), y_train).clone())
        if times.numel() == 0:  # no time asked: empty outputs, as the closed forms give
            empty = [s.new_zeros(*shape, *s.shape) for s in state]
            return empty[0] if fx_test_0 is None else empty[1] if fx_train_0 is None else tuple(empty)
        order, inverse = torch.unique(times, sorted=True, return_inverse=True)
        # The solver starts where the initial outputs are given: time 0, prepended unless asked for.
        start = order if order[0] == 0 else torch.cat([torch.zeros_like(order[:1]), order])
        if friction is not None:
            state += [torch.zeros_like(s) for s in state]

        def flow(_, current):
            half = len(current) // 2 if friction is not None else len(current)
            gradient = loss_gradient(current[0])
            forces = [-(k @ gradient)] + ([-(k_td @ gradient)] if k_td is not None else [])
            if friction is None:
                return tuple(forces)
            velocities = current[half:]
            return tuple(velocities) + tuple(f + friction * v for f, v in zip(forces, velocities))

        if len(start) == 1:  # t = 0 only: the initial outputs
            path = [s.unsqueeze(0) for s in state]
        else:
            with torch.no_grad():
                path = odeint(flow, tuple(state), start, rtol=rtol, atol=atol, method="dopri5")
        picked = [p[len(start) - len(order):][inverse] for p in path]
        f_train_t = picked[0].reshape(*shape, *y_train.shape)
        if fx_test_0 is None:
            return f_train_t
        f_test_t = picked[1].reshape(*shape, *picked[1].shape[-2:])
        return f_test_t if fx_train_0 is None else (f_train_t, f_test_t)

    return predict_fn
