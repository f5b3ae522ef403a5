"""What gradient descent does to wide networks: neural-tangents' `predict`, in torch and GPyTorch kernels.

Conventions (neural-tangents 0.6.5, so that code ports line by line): the loss is the mean squared error averaged
over all N = y_train.numel() entries, L = 1/(2N) sum ||f(x_i) - y_i||^2; gradient descent with step
`learning_rate` runs for `t` steps, absolute time learning_rate * t; `diag_reg` is added to the training kernel's
diagonal, relative to its mean diagonal unless `diag_reg_absolute_scale=True`. Outputs share one kernel: y_train is
(n, k), means are (*t_shape, m, k), covariances (*t_shape, m, m).

Formulas (Jacot et al. 2018; Lee et al. 2019, "Wide neural networks of any depth evolve as linear models"), with
Theta the NTK and K the NNGP on the training set and phi_t(l) = (1 - exp(-l t / N)) / l:
- one linearized network from its own initial outputs:
      f_t(x*) = f_0(x*) + k(x*, X) phi_t(k(X, X)) (y - f_0(X)),   f_t(X) = y + exp(-k t / N) (f_0(X) - y);
- the infinite ensemble trained on all layers ("ntk"): mean Theta_*X phi_t(Theta) y, covariance
  K_** + T K_XX T^T - (T K_X* + K_*X T^T) with T = Theta_*X phi_t(Theta) (the prior of the outputs is the NNGP);
- trained readout only ("nngp"): mean K_*X phi_t(K) y, covariance K_** - K_*X phi_{2t}(K) K_X*.
t = None is infinite time: kernel regression by a Cholesky solve (`gp_inference`). This first version
eigendecomposes the n x n training kernel once per kernel (as neural-tangents does); the Krylov path for large n
is still to come (issue 20).
"""
from __future__ import annotations

import math
from collections import namedtuple
from typing import Callable, Optional, Tuple

import torch

from ._validation import check_finite_kernel

Gaussian = namedtuple("Gaussian", "mean covariance")
GETS = ("nngp", "ntk")


# -- the two kernels of one architecture ------------------------------------------------------------------------------
def _kinds_of(kernel) -> Tuple[str, ...]:
    """The kernels an NNGPKernel / NTKKernel / ArchitectureKernel gives: an NTK kernel gives both the NNGP and the NTK
    (the same architecture and variances), an NNGP kernel the NNGP only."""
    from .kernels.architecture import ArchitectureKernel
    from .kernels.fully_connected import _FullyConnectedKernel

    if isinstance(kernel, _FullyConnectedKernel):
        return GETS if kernel._ntk else ("nngp",)
    if isinstance(kernel, ArchitectureKernel):
        return GETS if kernel.ntk else ("nngp",)
    raise TypeError(f"kernel must be an NNGPKernel or NTKKernel (fully connected, or from from_module), got "
                    f"{type(kernel).__name__}; for any other kernel matrix use gradient_descent_mse or gp_inference")


def _matrix(kernel, kind: str, x1, x2=None) -> torch.Tensor:
    """The dense `kind` ("nngp" or "ntk") matrix of a network kernel. The NNGP of an NTK kernel is evaluated by
    switching its NTK flag off for the call (a copy of a GPyTorch module would share its attribute dictionary)."""
    from .kernels.architecture import ArchitectureKernel

    attribute = "ntk" if isinstance(kernel, ArchitectureKernel) else "_ntk"
    had = attribute in vars(kernel)
    saved = getattr(kernel, attribute)
    try:
        setattr(kernel, attribute, kind == "ntk")
        with torch.no_grad():
            return kernel(x1, x2).to_dense()
    finally:
        if had:
            setattr(kernel, attribute, saved)
        else:
            delattr(kernel, attribute)


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


def _regularized(k: torch.Tensor, diag_reg: float, absolute: bool) -> torch.Tensor:
    """k + diag_reg * I, diag_reg relative to the mean diagonal unless absolute (neural-tangents' convention)."""
    scale = diag_reg if absolute else diag_reg * k.diagonal().mean()
    return k + scale * torch.eye(k.shape[-1], dtype=k.dtype, device=k.device)


def _check_training(x_train, y_train, learning_rate, diag_reg):
    if not isinstance(y_train, torch.Tensor) or y_train.dim() != 2 or not torch.is_floating_point(y_train):
        raise ValueError("y_train must be a floating point tensor of shape (n, k) (k outputs share the kernel), got "
                         f"{tuple(y_train.shape) if isinstance(y_train, torch.Tensor) else type(y_train).__name__}")
    if not torch.isfinite(y_train).all():
        raise ValueError("y_train contains NaN or inf")
    if x_train is not None and (not isinstance(x_train, torch.Tensor) or x_train.dim() != 2
                                or x_train.shape[0] != y_train.shape[0]):
        raise ValueError(f"x_train must have shape (n, d) with n = {y_train.shape[0]} rows like y_train, got "
                         f"{tuple(x_train.shape) if isinstance(x_train, torch.Tensor) else type(x_train).__name__}")
    if not isinstance(learning_rate, (int, float)) or isinstance(learning_rate, bool) or not \
            0 < learning_rate < math.inf:
        raise ValueError(f"learning_rate must be a finite number > 0, got {learning_rate!r}")
    if not isinstance(diag_reg, (int, float)) or isinstance(diag_reg, bool) or not 0 <= diag_reg < math.inf:
        raise ValueError(f"diag_reg must be a finite number >= 0, got {diag_reg!r}")


def _cholesky(k: torch.Tensor) -> torch.Tensor:
    """The Cholesky factor of a training kernel; ValueError when it is singular to working precision (a pivot ratio
    below 100 n eps: the solve would be rounding noise, where neural-tangents returns NaN or noise)."""
    factor, info = torch.linalg.cholesky_ex(k)
    pivots = factor.diagonal()
    ratio = (pivots.min() / pivots.max()) ** 2 if int(info) == 0 else 0.0
    if int(info) != 0 or ratio < 100 * k.shape[-1] * torch.finfo(k.dtype).eps:
        raise ValueError("the training kernel is not positive definite, so infinite time (t=None) has no unique "
                         "solution (duplicated training points make it singular): pass diag_reg > 0")
    return factor


def _times(t, learning_rate: float, like: torch.Tensor) -> Tuple[torch.Tensor, torch.Size]:
    """Absolute times learning_rate * t as a column (T, 1), and t's shape."""
    t = torch.as_tensor(t, dtype=like.dtype, device=like.device)
    if not torch.isfinite(t).all() or (t < 0).any():
        raise ValueError(f"t must be finite and >= 0 (training steps; t=None is infinite time), got {t.tolist()}")
    return (t * learning_rate).reshape(-1, 1), t.shape


class _Eigen:
    """One eigendecomposition of a (regularized) training kernel, and the matrix functions built on it."""

    def __init__(self, k: torch.Tensor, normalization: int):
        self.evals, self.evecs = torch.linalg.eigh(k)
        self.positive = self.evals.clamp_min(0)  # a PSD matrix: negative eigenvalues are rounding
        self.n = normalization

    def decay(self, t):
        """(T, n): exp(-l t / N) per eigenvalue."""
        return torch.exp(-self.positive * t / self.n)

    def phi(self, t):
        """(T, n): (1 - exp(-l t / N)) / l, t / N where l = 0 (its limit)."""
        grown = -torch.expm1(-self.positive * t / self.n)
        safe = torch.where(self.evals.abs() > 0, self.evals.abs(), torch.ones_like(self.evals))
        return torch.where(self.evals.abs() > 0, grown / safe, (t / self.n).expand_as(grown))

    def apply(self, weights, v):
        """(T, n, ...): V diag(w_t) V^T v for each row w_t of weights (T, n); v (n, ...)."""
        return torch.einsum("ji,ti,ki,k...->tj...", self.evecs, weights, self.evecs, v)


# -- one linearized network ----------------------------------------------------------------------------------------
def gradient_descent_mse(k_train_train: torch.Tensor, y_train: torch.Tensor, learning_rate: float = 1.0,
                         diag_reg: float = 0.0, diag_reg_absolute_scale: bool = False) -> Callable:
    """The outputs of one linearized network trained by gradient descent on the MSE loss, for any kernel.

    Args:
        k_train_train: (n, n) tangent kernel on the training inputs (an infinite-width NTK, or a network's own
            finite NTK, e.g. `FiniteNTKKernel(model)(x).to_dense()`).
        y_train: (n, k) targets.
        learning_rate, diag_reg, diag_reg_absolute_scale: as in the module docstring.

    Returns:
        `predict_fn(t=None, fx_train_0=0.0, fx_test_0=None, k_test_train=None)`: fx_train_t (*t_shape, n, k), or
        (fx_train_t, fx_test_t) when fx_test_0 (m, k) and k_test_train (m, n) are given; fx_train_0=None leaves the
        training outputs out. t=None is infinite time.
    """
    _check_training(None, y_train, learning_rate, diag_reg)
    k = check_finite_kernel(torch.as_tensor(k_train_train).to(y_train), y_train)
    if k.shape != (y_train.shape[0],) * 2:
        raise ValueError(f"k_train_train must be ({y_train.shape[0]}, {y_train.shape[0]}) for y_train of shape "
                         f"{tuple(y_train.shape)}, got {tuple(k.shape)}")
    k_reg = _regularized(k, diag_reg, diag_reg_absolute_scale)
    cache = {}

    def predict_fn(t=None, fx_train_0=0.0, fx_test_0=None, k_test_train=None):
        if fx_test_0 is not None and k_test_train is None:
            raise ValueError("fx_test_0 is given but k_test_train is None: pass the (m, n) test-train kernel")
        f0 = None if fx_train_0 is None else torch.as_tensor(fx_train_0).to(y_train).expand_as(y_train)
        residual = y_train if f0 is None else y_train - f0
        if t is None:
            fx_train = None if f0 is None else y_train.clone()
            fx_test = None
            if fx_test_0 is not None:
                if "cholesky" not in cache:
                    cache["cholesky"] = _cholesky(k_reg)
                fx_test = fx_test_0 + k_test_train.to(y_train) @ torch.cholesky_solve(residual, cache["cholesky"])
        else:
            times, shape = _times(t, learning_rate, y_train)
            if "eigen" not in cache:
                cache["eigen"] = _Eigen(k_reg, y_train.numel())
            eigen = cache["eigen"]
            fx_train = fx_test = None
            if f0 is not None:  # f0 + (exp(-k t / N) - 1)(f0 - y)
                fx_train = f0 + eigen.apply(-torch.expm1(-eigen.positive * times / eigen.n), residual)
                fx_train = fx_train.reshape(*shape, *y_train.shape)
            if fx_test_0 is not None:
                moved = eigen.apply(eigen.phi(times), residual)  # (T, n, k)
                fx_test = fx_test_0 + torch.einsum("mn,tnk->tmk", k_test_train.to(y_train), moved)
                fx_test = fx_test.reshape(*shape, *fx_test.shape[-2:])
        if fx_test_0 is None:
            return fx_train
        return fx_test if fx_train is None else (fx_train, fx_test)

    return predict_fn


# -- Gaussian process inference (infinite time) ----------------------------------------------------------------------
def gp_inference(k_train_train, y_train: torch.Tensor, diag_reg: float = 0.0,
                 diag_reg_absolute_scale: bool = False) -> Callable:
    """The NNGP posterior, the infinite-time NTK ensemble, or the NTK-GP (He et al. 2020), by Cholesky solves.

    Args:
        k_train_train: (n, n) tensor, or a namedtuple / dict with `nngp` and `ntk` (n, n) tensors.
        y_train: (n, k) targets.

    Returns:
        `predict_fn(get=None, k_test_train=None, k_test_test=None)` with get in "nngp", "ntk", "ntkgp", a tuple or
        None (both "nngp" and "ntk"); k_test_train (m, n) (tensor or namedtuple/dict like k_train_train), k_test_test
        (m, m) NNGP (the NTK for "ntkgp") to get Gaussian(mean, covariance). k_test_train=None gives the training
        targets (with zero covariance), as neural-tangents does.
    """
    _check_training(None, y_train, 1.0, diag_reg)
    factors = {}

    def part(k, g):
        if isinstance(k, torch.Tensor):
            return k.to(y_train)
        value = k.get(g) if isinstance(k, dict) else getattr(k, g, None)
        if value is None:
            raise ValueError(f"the {g!r} kernel is needed here but not given")
        return torch.as_tensor(value).to(y_train)

    def solve(g, rhs):
        kind = "ntk" if g == "ntkgp" else g
        if kind not in factors:
            factors[kind] = _cholesky(_regularized(part(k_train_train, kind), diag_reg, diag_reg_absolute_scale))
        return torch.cholesky_solve(rhs, factors[kind])

    def predict_fn(get=None, k_test_train=None, k_test_test=None):
        kinds, single = _canonical_get(get)
        out = {}
        for g in kinds:
            kind = "ntk" if g == "ntkgp" else g
            if k_test_train is None:
                mean = y_train.clone()
                out[g] = mean if k_test_test is None else Gaussian(mean, torch.zeros(
                    y_train.shape[0], y_train.shape[0], dtype=y_train.dtype, device=y_train.device))
                continue
            k_td = part(k_test_train, kind)
            mean = k_td @ solve(g, y_train)
            if k_test_test is None:
                out[g] = mean
                continue
            start = "ntk" if g == "ntkgp" else "nngp"
            k_tt = part(k_test_test, start)
            k_td_start = part(k_test_train, start)
            if g in ("nngp", "ntkgp"):
                cov = k_tt - k_td @ solve(g, k_td_start.mT)
            else:
                term_1 = solve(g, k_td.mT)  # Theta^-1 Theta_X*
                term_2 = k_td @ solve(g, k_td_start.mT)  # Theta_*X Theta^-1 K_X*
                cov = k_tt + term_1.mT @ part(k_train_train, "nngp") @ term_1 - term_2 - term_2.mT
            out[g] = Gaussian(mean, cov)
        return _pack(out, kinds, single)

    return predict_fn


# -- the infinite ensemble of infinitely wide networks ---------------------------------------------------------------
def gradient_descent_mse_ensemble(kernel, x_train: torch.Tensor, y_train: torch.Tensor, learning_rate: float = 1.0,
                                  diag_reg: float = 0.0, diag_reg_absolute_scale: bool = False) -> Callable:
    """Mean and covariance of the infinite ensemble of infinitely wide networks trained by gradient descent on the MSE
    loss for time t, the initialization marginalized (neural-tangents' `gradient_descent_mse_ensemble`).

    Args:
        kernel: an NTKKernel (fully connected or from `from_module`), which gives the NNGP and the NTK of one
            architecture; an NNGPKernel serves get="nngp" only.
        x_train: (n, d) training inputs; y_train: (n, k) targets (the k outputs share the kernel).
        learning_rate, diag_reg, diag_reg_absolute_scale: as in the module docstring.

    Returns:
        `predict_fn(t=None, x_test=None, get=None, compute_cov=False)`: for get "nngp" (readout trained) or "ntk" (all
        layers), the mean (*t_shape, m, k), or Gaussian(mean, covariance (*t_shape, m, m)) with compute_cov=True;
        get=None or a tuple gives a namedtuple with one field per kind. t: None (infinite time), a number or a 1-D
        sequence of steps. x_test=None predicts on the training inputs (without diag_reg).

    Raises:
        TypeError: a kernel that is not a network kernel. ValueError: shapes, t < 0, learning_rate <= 0, an unknown
            get, or the NTK asked of an NNGP kernel.
    """
    _check_training(x_train, y_train, learning_rate, diag_reg)
    available = _kinds_of(kernel)
    x_train = x_train.to(y_train)
    train = {}  # kind -> (n, n) training kernel, unregularized
    eigen = {}

    def k_dd(g):
        if g not in train:
            train[g] = _matrix(kernel, g, x_train)
        return train[g]

    def eigenspace(g):
        if g not in eigen:
            eigen[g] = _Eigen(_regularized(k_dd(g), diag_reg, diag_reg_absolute_scale), y_train.numel())
        return eigen[g]

    inference = {}

    def predict_fn(t=None, x_test=None, get=None, compute_cov=False):
        kinds, single = _canonical_get(get)
        if "ntkgp" in kinds:
            raise ValueError("get='ntkgp' is a gp_inference mode, not a gradient-descent one")
        if "ntk" in kinds and "ntk" not in available:
            raise ValueError("the NTK ensemble needs an NTKKernel (it gives both the NNGP and the NTK); this kernel is "
                             "an NNGP kernel: use get='nngp', or build NTKKernel with the same arguments")
        if x_test is not None:
            if not isinstance(x_test, torch.Tensor) or x_test.dim() != 2 or x_test.shape[-1] != x_train.shape[-1]:
                raise ValueError(f"x_test must have shape (m, {x_train.shape[-1]}), got "
                                 f"{tuple(x_test.shape) if isinstance(x_test, torch.Tensor) else x_test!r}")
            x_test = x_test.to(y_train)
        need = set(kinds) | ({"nngp"} if compute_cov else set())
        k_td = None if x_test is None else {g: _matrix(kernel, g, x_test, x_train) for g in need}
        k_tt = _matrix(kernel, "nngp", x_test) if compute_cov and x_test is not None else None
        if t is None:
            key = frozenset(need)  # the kernels this call needs (a later call may need the NNGP too)
            if key not in inference:
                inference[key] = gp_inference({g: k_dd(g) for g in need}, y_train, diag_reg, diag_reg_absolute_scale)
            asked = kinds[0] if single else kinds
            if x_test is None:
                return inference[key](asked, None, True if compute_cov else None)
            return inference[key](asked, k_td, k_tt)
        times, shape = _times(t, learning_rate, y_train)
        out = {}
        for g in kinds:
            e = eigenspace(g)
            if x_test is None:
                mean = e.apply(-torch.expm1(-e.positive * times / e.n), y_train)
            else:
                mean = torch.einsum("mn,tnk->tmk", k_td[g], e.apply(e.phi(times), y_train))
            mean = mean.reshape(*shape, *mean.shape[-2:])
            if not compute_cov:
                out[g] = mean
                continue
            nngp_dd = k_dd("nngp")
            if x_test is None:
                if g == "nngp":  # K exp(-2 K t / N), in the regularized eigenbasis (as neural-tangents)
                    cov = e.apply(e.positive * torch.exp(-2 * e.positive * times / e.n), torch.eye(
                        e.evals.shape[0], dtype=y_train.dtype, device=y_train.device))
                else:
                    decay = e.apply(e.decay(times), torch.eye(e.evals.shape[0], dtype=y_train.dtype,
                                                               device=y_train.device))  # (T, n, n)
                    cov = decay @ nngp_dd @ decay.mT
            else:
                k_g = k_td[g]
                if g == "nngp":
                    cov = k_tt - k_g @ e.apply(e.phi(2 * times), k_g.mT)
                else:
                    term_1 = e.apply(e.phi(times), k_g.mT)  # (T, n, m): phi_t(Theta) Theta_X*
                    term_2 = k_g @ e.apply(e.phi(times), k_td["nngp"].mT)  # (T, m, m)
                    cov = term_1.mT @ nngp_dd @ term_1 - term_2 - term_2.mT + k_tt
            out[g] = Gaussian(mean, cov.reshape(*shape, *cov.shape[-2:]))
        return _pack(out, kinds, single)

    return predict_fn


def max_learning_rate(ntk_train_train: torch.Tensor, y_train_size: Optional[int] = None, momentum: float = 0.0,
                      eps: float = 1e-12) -> float:
    """The largest stable gradient-descent step for the MSE loss: 2 (1 + momentum) N / (lambda_max + eps), with N the
    number of training outputs (y_train_size; default the kernel's size, one output) and lambda_max the NTK's largest
    eigenvalue (neural-tangents' `max_learning_rate`)."""
    k = torch.as_tensor(ntk_train_train)
    if k.dim() != 2 or k.shape[0] != k.shape[1]:
        raise ValueError(f"ntk_train_train must be a square (n, n) matrix, got {tuple(k.shape)}")
    factor = k.shape[0] if y_train_size is None else y_train_size
    top = torch.linalg.eigvalsh(k.double())[-1].item()
    return 2 * (1 + momentum) * factor / (top + eps)


__all__ = ["Gaussian", "gp_inference", "gradient_descent_mse", "gradient_descent_mse_ensemble", "max_learning_rate"]
