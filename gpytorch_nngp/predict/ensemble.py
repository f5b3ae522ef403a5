"""The infinite ensemble of infinitely wide networks trained by gradient descent (neural-tangents'
`gradient_descent_mse_ensemble`), through either solver."""
from __future__ import annotations

import math
from typing import Callable

import torch

from .checks import _check_dtypes, _check_training
from .common import Gaussian, _ensemble_request, _kinds_of, _matrix, _operator, _pack, _regularized, _times
from .krylov import _Krylov
from .spectral import _Spectral

SOLVERS = ("auto", "eigh", "krylov")
EIGH_MAX_POINTS = 4096  # "auto" eigendecomposes up to this many training points with a dense kernel


def gradient_descent_mse_ensemble(kernel, x_train: torch.Tensor, y_train: torch.Tensor, learning_rate: float = 1.0,
                                  diag_reg: float = 0.0, diag_reg_absolute_scale: bool = False, *,
                                  solver: str = "auto", krylov_tol: float = 1e-10, test_block: int = 4096,
                                  krylov_dense_bytes: int = 2 ** 32) -> Callable:
    r"""Mean and covariance of the infinite ensemble of infinitely wide networks trained by gradient descent on the MSE
    loss for time t, the initialization marginalized (neural-tangents' `gradient_descent_mse_ensemble`).

    Args:
        kernel: an NTKKernel (fully connected or from `from_module`) or a GraphNodeKernel with ntk=True, which gives
            the NNGP and the NTK of one architecture (`with_kind`; the kernel itself is not changed); an NNGP kernel
            serves get="nngp" only. A GraphNodeKernel's inputs are node indices: the nodes of one graph as training
            and test points (node-level dynamics).
        x_train: (n, d) training inputs; y_train: (n, k) targets (the k outputs share the kernel). Both in the
            kernel's dtype (a mismatch raises, naming them: nothing is cast silently).
        learning_rate, diag_reg, diag_reg_absolute_scale: as in the module docstring.
        solver: "eigh" (one eigendecomposition of each n x n training kernel, as neural-tangents; infinite time by a
            Cholesky solve), "krylov" (Lanczos through the kernel's products: lazy, KeOps and distributed backends,
            no n x n matrix of its own; every time of a call from one run; infinite time is phi = 1 / lambda, the
            same run), or "auto" (eigh for a dense kernel of at most EIGH_MAX_POINTS points, else krylov). Keyword
            only, as the three below.
        krylov_tol: Lanczos stops when the result changes by less than this (relative) between checks.
        test_block: test points per block for the mean (the covariance needs all test points at once).
        krylov_dense_bytes: the Krylov path evaluates a training kernel of at most this many bytes into one dense
            matrix (one kind at a time), so that a Lanczos step is a matrix product instead of a re-evaluation of the
            lazy or KeOps kernel; 0 keeps every product on the backend. Distributed kernels always stay sharded.

    Returns:
        `predict_fn(t=None, x_test=None, get=None, compute_cov=False)`: for get "nngp" (readout trained) or "ntk" (all
        layers), the mean (*t_shape, m, k), or Gaussian(mean, covariance (*t_shape, m, m)) with compute_cov=True;
        get=None or a tuple gives a namedtuple with one field per kind. t: None (infinite time), a number or a
        sequence of steps (any shape, empty included), math.inf among them for infinite time. x_test=None predicts
        on the training inputs (without diag_reg). Calls are cached as neural-tangents' are: the training kernels
        and their decompositions (eigh), or the Lanczos runs (krylov: the run from y_train serves the mean at every
        later time, the run from the test points' cross kernels the same x_test; see _Krylov), so a loop of calls
        one time each costs about one call with all the times.

    Infinite time. t=None and math.inf are one request: the limit of training, kernel regression with the
    regularized training kernel, on the training inputs the targets with zero covariance. It exists when that
    kernel is non-singular to working precision; otherwise (duplicated points without diag_reg, or a condition
    number near 1 / eps, as float32 reaches at diag_reg 1e-5) both solvers raise a ValueError that says to pass
    diag_reg > 0, rather than return rounding noise.

    Raises:
        TypeError: a kernel that is not a network kernel. ValueError: shapes, dtypes, t < 0, learning_rate <= 0, an
            unknown get, the NTK asked of an NNGP kernel, or infinite time on a singular kernel.

    The formulas (Lee et al. 2019), with :math:`\Theta` the NTK and :math:`K` the NNGP on the training set,
    :math:`\phi_t(\lambda) = (1 - e^{-\lambda t / N}) / \lambda` and :math:`T = \Theta_{*X} \phi_t(\Theta)`:

    .. math::

        \mu_t = T y, \qquad
        \Sigma_t = K_{**} + T K_{XX} T^T - (T K_{X*} + K_{*X} T^T)  \quad \text{(all layers trained)}.

    Example:
        >>> import math, torch
        >>> from gpytorch_nngp import NTKKernel
        >>> from gpytorch_nngp.predict import gradient_descent_mse_ensemble
        >>> x, y, x_test = torch.randn(20, 3).double(), torch.randn(20, 1).double(), torch.randn(4, 3).double()
        >>> predict_fn = gradient_descent_mse_ensemble(NTKKernel(2, "relu").double(), x, y, diag_reg=1e-4)
        >>> out = predict_fn(t=[0.0, 100.0, math.inf], x_test=x_test, compute_cov=True)
        >>> out.ntk.mean.shape, out.nngp.covariance.shape
        (torch.Size([3, 4, 1]), torch.Size([3, 4, 4]))
        >>> bool(out.ntk.mean[0].abs().max() == 0)  # t = 0: the prior mean
        True
    """
    _check_training(x_train, y_train, learning_rate, diag_reg)
    available = _kinds_of(kernel)
    _check_dtypes(kernel, x_train=x_train, y_train=y_train)
    x_train = x_train.to(y_train.device)
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {', '.join(map(repr, SOLVERS))}, got {solver!r}")
    if not isinstance(krylov_tol, (int, float)) or isinstance(krylov_tol, bool) or not 0 < krylov_tol < math.inf:
        raise ValueError(f"krylov_tol must be a number > 0, got {krylov_tol!r}")
    for name, value, low in (("test_block", test_block, 1), ("krylov_dense_bytes", krylov_dense_bytes, 0)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if solver == "auto":
        backend = getattr(kernel, "backend", "dense")
        dense = isinstance(backend, str) and backend in ("dense", "auto")
        solver = "eigh" if dense and x_train.shape[0] <= EIGH_MAX_POINTS else "krylov"
    if solver == "krylov":
        matrix_functions = _LanczosFunctions(kernel, x_train, y_train, diag_reg, diag_reg_absolute_scale, krylov_tol,
                                             test_block, krylov_dense_bytes)
    else:
        matrix_functions = _ExactFunctions(kernel, x_train, y_train, diag_reg, diag_reg_absolute_scale)

    def predict_fn(t=None, x_test=None, get=None, compute_cov=False):
        kinds, single, x_test = _ensemble_request(get, available, x_test, x_train, y_train)
        times, shape = _times(math.inf if t is None else t, learning_rate, y_train)
        if times.shape[0] == 0:
            return _empty(kinds, single, shape, x_train if x_test is None else x_test, y_train, compute_cov)
        if x_test is None:
            out = {g: matrix_functions.on_training(g, times, compute_cov) for g in kinds}
        else:
            out = _on_test(matrix_functions, kinds, times, x_test, compute_cov)
        for g, value in out.items():
            reshape = lambda v: v.reshape(*shape, *v.shape[-2:])  # noqa: E731
            out[g] = Gaussian(*map(reshape, value)) if compute_cov else reshape(value)
        return _pack(out, kinds, single)

    if solver == "krylov":
        predict_fn.solvers = matrix_functions.solvers  # the Lanczos runs (steps_used), for reports and benchmarks
    return predict_fn


def _on_test(functions, kinds, times, x_test, compute_cov) -> dict:
    """The ensemble at test points, for either solver: the formulas of the package docstring, written once.

    Means K_*X phi_t(A) y; the readout-trained covariance K_** - K_*X phi_2t(K) K_X*; the all-layers one
    K_** + T K_XX T^T - (T K_X* + K_*X T^T) with T = Theta_*X phi_t(Theta). `functions` applies phi_s(A_g) to
    columns (A_g the regularized training kernel of kind g), multiplies by the NNGP's training matrix, and gives the
    test points' kernels."""
    if not compute_cov:
        return {g: functions.cross_times(g, x_test, functions.phi(g, times, functions.y)) for g in kinds}
    crosses, prior = functions.test_kernels(x_test, set(kinds) | {"nngp"})  # (n, m) per kind, (m, m)
    out = {}
    for g in functions.order(kinds):
        # The NNGP's covariance needs phi at 2t, the NTK's at t; both from one application with the means' columns.
        moved, spread_by = functions.phi_with(g, times, crosses[g], 2 * times if g == "nngp" else times)
        mean = crosses[g].mT @ moved  # (T, m, k)
        if g == "nngp":
            cov = prior - crosses["nngp"].mT @ spread_by
        else:
            term_2 = spread_by.mT @ crosses["nngp"]  # Theta_*X phi_t(Theta) K_X*
            cov = spread_by.mT @ functions.nngp_times(spread_by) - term_2 - term_2.mT + prior
        out[g] = (mean, cov)
    return out


class _ExactFunctions:
    """The exact solver's side of the assembly: the dense training kernels, their spectral decompositions
    (spectral._Spectral: finite times) and Cholesky factors (infinite time), kept between calls."""

    def __init__(self, kernel, x_train, y_train, diag_reg, absolute):
        self.kernel, self.x_train, self.y = kernel, x_train, y_train
        self.diag_reg, self.absolute = diag_reg, absolute
        self.train, self.spaces = {}, {}

    def k_dd(self, g):
        if g not in self.train:
            self.train[g] = _matrix(self.kernel, g, self.x_train)
        return self.train[g]

    def space(self, g) -> _Spectral:
        if g not in self.spaces:
            self.spaces[g] = _Spectral(_regularized(self.k_dd(g), self.diag_reg, self.absolute), self.y.numel())
        return self.spaces[g]

    def order(self, kinds):
        return kinds

    def phi(self, g, times, v):
        return self.space(g).phi(times, v)

    def phi_with(self, g, times, columns, column_times):
        return self.phi(g, times, self.y), self.phi(g, column_times, columns)

    def nngp_times(self, v):
        return self.k_dd("nngp") @ v

    def test_kernels(self, x_test, kinds):
        crosses = {g: _matrix(self.kernel, g, x_test, self.x_train).mT for g in kinds}
        return crosses, _matrix(self.kernel, "nngp", x_test)

    def cross_times(self, g, x_test, moved):
        return _matrix(self.kernel, g, x_test, self.x_train) @ moved

    def on_training(self, g, times, compute_cov):
        e = self.space(g)
        mean = e.grown(times, self.y)  # (I - exp(-A t / N)) y, A regularized (as neural-tangents)
        if not compute_cov:
            return mean
        eye = torch.eye(self.x_train.shape[0], dtype=self.y.dtype, device=self.y.device)
        if g == "nngp":  # K exp(-2 K t / N), in the regularized eigenbasis (as neural-tangents)
            return mean, e.spread(times, eye)
        decay = e.decayed(times, eye)  # (T, n, n)
        return mean, decay @ self.k_dd("nngp") @ decay.mT


def _empty(kinds, single, shape, points, y_train, compute_cov):
    """The outputs of a call with no time (t=[]): means (*shape, m, k) and covariances (*shape, m, m) with a zero
    in shape, whichever the solver."""
    m = points.shape[0]
    mean = y_train.new_zeros(*shape, m, y_train.shape[1])
    out = {g: Gaussian(mean.clone(), y_train.new_zeros(*shape, m, m)) if compute_cov else mean.clone() for g in kinds}
    return _pack(out, kinds, single)


def _materialized(kernel, kind: str, x: torch.Tensor, block_bytes: int = 2 ** 26) -> torch.Tensor:
    """The (n, n) `kind` kernel of x as one dense matrix, evaluated in row blocks (the backend's temporaries stay
    within a few block_bytes)."""
    n = x.shape[0]
    out = torch.empty(n, n, dtype=x.dtype, device=x.device)
    rows = max(1, block_bytes // (8 * n * x.element_size()))
    for s in range(0, n, rows):
        out[s:s + rows] = _matrix(kernel, kind, x[s:s + rows], x)
    return out


KRYLOV_KEEP_BYTES = 2 ** 31  # the most memory the kept Lanczos runs of one predict_fn hold (also capped by the budget)


class _LanczosFunctions:
    """The Krylov solver's side of the assembly: one block Lanczos run per kind and request through the training
    kernel's products (krylov._Krylov), runs and the last test points' kernels kept between calls."""

    def __init__(self, kernel, x_train, y_train, diag_reg, absolute, tol, test_block, dense_bytes):
        from ..backends.budget import cache_bytes

        self.kernel, self.x_train, self.y = kernel, x_train, y_train
        self.diag_reg, self.absolute, self.tol, self.test_block = diag_reg, absolute, tol, test_block
        n = x_train.shape[0]
        self.operators, self.solvers, self.dense, self.tests = {}, {}, {}, {}
        # A training kernel small enough is evaluated once into a dense matrix (both kinds if they fit dense_bytes
        # together, else one at a time): each Lanczos step is then a matrix product, not a re-evaluation of the
        # kernel, and a later call that extends a kept run finds its matrix still there. A sharded kernel stays
        # sharded.
        sharded = not isinstance(getattr(kernel, "backend", "dense"), str)
        self.materialize = not sharded and n * n * y_train.element_size() <= dense_bytes
        self.both = 2 * n * n * y_train.element_size() <= dense_bytes
        self.keep = min(KRYLOV_KEEP_BYTES, cache_bytes(x_train.device))

    def train_operator(self, g):
        if self.materialize:
            if g not in self.dense:
                if not self.both:
                    self.dense.clear()  # one n x n matrix at a time
                self.dense[g] = _materialized(self.kernel, g, self.x_train)
            return self.dense[g]
        if g not in self.operators:
            self.operators[g] = _operator(self.kernel, g, self.x_train)
        return self.operators[g]

    def solver(self, g) -> _Krylov:
        if g not in self.solvers:
            with torch.no_grad():
                mean_diag = self.kernel.with_kind(g)(self.x_train, diag=True).mean().item()
            scale = self.diag_reg if self.absolute else self.diag_reg * mean_diag
            self.solvers[g] = _Krylov(lambda u, g=g, scale=scale: self.train_operator(g) @ u + scale * u,
                                      self.x_train.shape[0], self.y.numel(), tol=self.tol, keep_bytes=self.keep)
        return self.solvers[g]

    def order(self, kinds):
        # The NTK first: its covariance needs one product with K_XX, which then evaluates the NNGP's matrix that the
        # NNGP's own run reuses (one n x n matrix held at a time, each evaluated once).
        return sorted(kinds, key=lambda kind: kind != "ntk")

    def phi(self, g, times, v):
        with torch.no_grad():
            return self.solver(g).phi(times, v, key="mean")

    def phi_with(self, g, times, columns, column_times):
        """y_train and the cross kernels as columns of ONE run per kind (every time, and 2t for the NNGP, from the
        same tridiagonals): one pass over the training kernel per step. The NNGP's covariance is a quadratic form
        of phi(K), judged as one (Gauss quadrature converges about twice as fast); the NTK's multiplies
        phi(Theta) Theta_X* by the NNGP's matrix, which forms of Theta do not control (a single finite time was 2e-6
        off with them), so its run watches the vectors, to sqrt(tol): the covariance's error is about the square of
        theirs (docs/design.md)."""
        k, count = self.y.shape[-1], times.shape[0]
        same = column_times is times or torch.equal(column_times, times)
        run_times = times if same else torch.cat([times, column_times])
        with torch.no_grad():
            result = self.solver(g).phi(run_times, torch.cat([self.y, columns], dim=-1), forms=g == "nngp",
                                        key="cov", tol=None if g == "nngp" else math.sqrt(self.tol))
        return result[:count, :, :k], result[-count:, :, k:]

    def nngp_times(self, v):
        t, n, m = v.shape
        product = self.train_operator("nngp") @ v.permute(1, 0, 2).reshape(n, -1)
        return product.reshape(n, t, m).permute(1, 0, 2)

    def cross(self, g, x_test):
        """(m, n) test-train kernel as a dense matrix, block by block."""
        blocks = [_operator(self.kernel, g, x_test[s:s + self.test_block], self.x_train)
                  for s in range(0, len(x_test), self.test_block)]
        return torch.cat([b.to_dense() if hasattr(b, "to_dense") else b for b in blocks])

    def _kept(self, x_test) -> bool:
        return "x" in self.tests and self.tests["x"].shape == x_test.shape and torch.equal(self.tests["x"], x_test)

    def test_kernels(self, x_test, kinds):
        """The cross kernels (n, m) of `kinds` and the NNGP prior (m, m) at x_test, kept for the same x_test."""
        if not self._kept(x_test):
            self.tests.clear()
            self.tests.update(x=x_test.clone(), crosses={}, prior=None)
        for g in kinds:
            if g not in self.tests["crosses"]:
                self.tests["crosses"][g] = self.cross(g, x_test).mT
        if self.tests["prior"] is None:
            self.tests["prior"] = _matrix(self.kernel, "nngp", x_test)
        return self.tests["crosses"], self.tests["prior"]

    def cross_times(self, g, x_test, moved):
        """K_*X moved (T, m, k): through kept cross kernels, or test points in blocks (any number of them fits)."""
        if self._kept(x_test) and g in self.tests["crosses"]:
            return self.tests["crosses"][g].mT @ moved
        n, count = self.x_train.shape[0], moved.shape[0]
        flat = moved.permute(1, 0, 2).reshape(n, -1)  # (n, T k)
        rows = [_operator(self.kernel, g, x_test[s:s + self.test_block], self.x_train) @ flat
                for s in range(0, len(x_test), self.test_block)]
        return torch.cat(rows).reshape(len(x_test), count, -1).permute(1, 0, 2)

    def on_training(self, g, times, compute_cov):
        n = self.x_train.shape[0]
        if compute_cov and not bool(torch.isinf(times).all()):
            raise ValueError("the covariance on the training inputs at a finite time is an n x n matrix that "
                             "solver='krylov' does not form: pass x_test (x_train itself for the regularized one), "
                             "or use solver='eigh'")
        moved = self.phi(g, times, self.y)
        mean = torch.stack([self.solver(g).matmul(m) for m in moved])  # (I - exp(-A t / N)) y = A phi_t(A) y
        if not compute_cov:
            return mean
        return mean, self.y.new_zeros(times.shape[0], n, n)  # infinite time: the targets, without variance
