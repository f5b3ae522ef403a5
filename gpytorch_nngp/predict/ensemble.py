"""The infinite ensemble of infinitely wide networks trained by gradient descent (neural-tangents'
`gradient_descent_mse_ensemble`), through either solver."""
from __future__ import annotations

import math
from typing import Callable

import torch

from .checks import _check_dtypes, _check_training
from .common import Gaussian, _ensemble_request, _kinds_of, _matrix, _of_kind, _operator, _pack, _regularized, _times
from .krylov import _Krylov
from .spectral import _Spectral

SOLVERS = ("auto", "eigh", "krylov")
EIGH_MAX_POINTS = 4096  # "auto" eigendecomposes up to this many training points with a dense kernel


def gradient_descent_mse_ensemble(kernel, x_train: torch.Tensor, y_train: torch.Tensor, learning_rate: float = 1.0,
                                  diag_reg: float = 0.0, diag_reg_absolute_scale: bool = False, *,
                                  solver: str = "auto", krylov_tol: float = 1e-10, test_block: int = 4096,
                                  krylov_dense_bytes: int = 2 ** 32) -> Callable:
    """Mean and covariance of the infinite ensemble of infinitely wide networks trained by gradient descent on the MSE
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
        return _krylov_ensemble(kernel, available, x_train, y_train, learning_rate, diag_reg, diag_reg_absolute_scale,
                                krylov_tol, test_block, krylov_dense_bytes)
    train = {}  # kind -> (n, n) training kernel, unregularized
    spaces = {}

    def k_dd(g):
        if g not in train:
            train[g] = _matrix(kernel, g, x_train)
        return train[g]

    def space(g) -> _Spectral:
        if g not in spaces:
            spaces[g] = _Spectral(_regularized(k_dd(g), diag_reg, diag_reg_absolute_scale), y_train.numel())
        return spaces[g]

    def predict_fn(t=None, x_test=None, get=None, compute_cov=False):
        kinds, single, x_test = _ensemble_request(get, available, x_test, x_train, y_train)
        times, shape = _times(math.inf if t is None else t, learning_rate, y_train)
        if times.shape[0] == 0:
            return _empty(kinds, single, shape, x_train if x_test is None else x_test, y_train, compute_cov)
        need = set(kinds) | ({"nngp"} if compute_cov else set())
        k_td = None if x_test is None else {g: _matrix(kernel, g, x_test, x_train) for g in need}
        k_tt = _matrix(kernel, "nngp", x_test) if compute_cov and x_test is not None else None
        out = {}
        for g in kinds:
            e = space(g)
            if x_test is None:
                mean = e.grown(times, y_train)
            else:
                mean = torch.einsum("mn,tnk->tmk", k_td[g], e.phi(times, y_train))
            mean = mean.reshape(*shape, *mean.shape[-2:])
            if not compute_cov:
                out[g] = mean
                continue
            if x_test is None:
                eye = torch.eye(x_train.shape[0], dtype=y_train.dtype, device=y_train.device)
                if g == "nngp":  # K exp(-2 K t / N), in the regularized eigenbasis (as neural-tangents)
                    cov = e.spread(times, eye)
                else:
                    decay = e.decayed(times, eye)  # (T, n, n)
                    cov = decay @ k_dd("nngp") @ decay.mT
            else:
                k_g = k_td[g]
                if g == "nngp":
                    cov = k_tt - k_g @ e.phi(2 * times, k_g.mT)
                else:
                    term_1 = e.phi(times, k_g.mT)  # (T, n, m): phi_t(Theta) Theta_X*
                    term_2 = term_1.mT @ k_td["nngp"].mT  # (T, m, m): Theta_*X phi_t(Theta) K_X*, phi symmetric
                    cov = term_1.mT @ k_dd("nngp") @ term_1 - term_2 - term_2.mT + k_tt
            out[g] = Gaussian(mean, cov.reshape(*shape, *cov.shape[-2:]))
        return _pack(out, kinds, single)

    return predict_fn


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


def _krylov_ensemble(kernel, available, x_train, y_train, learning_rate, diag_reg, absolute, tol, test_block,
                     dense_bytes):
    """gradient_descent_mse_ensemble's predict_fn through operator products and Lanczos (see _Krylov)."""
    from ..backends.budget import cache_bytes

    n = x_train.shape[0]
    operators, solvers = {}, {}
    # A training kernel small enough is evaluated once into a dense matrix (both kinds if they fit dense_bytes
    # together, else one at a time): each Lanczos step is then a matrix product, not a re-evaluation of the kernel,
    # and a later call that extends a kept run finds its matrix still there. A sharded kernel stays sharded.
    sharded = not isinstance(getattr(kernel, "backend", "dense"), str)
    materialize = not sharded and n * n * y_train.element_size() <= dense_bytes
    both = 2 * n * n * y_train.element_size() <= dense_bytes  # the NNGP's and the NTK's matrices held together
    dense = {}
    keep = min(KRYLOV_KEEP_BYTES, cache_bytes(x_train.device))
    tests = {}  # the last x_test's cross kernels (kind -> (n, m)) and prior covariance, for repeated calls

    def train_operator(g):
        if materialize:
            if g not in dense:
                if not both:
                    dense.clear()  # one n x n matrix at a time
                dense[g] = _materialized(kernel, g, x_train)
            return dense[g]
        if g not in operators:
            operators[g] = _operator(kernel, g, x_train)
        return operators[g]

    def phi(g, times, v, forms=False, key=None, run_tol=None):
        if g not in solvers:
            with torch.no_grad():
                scale = diag_reg if absolute else diag_reg * _of_kind(kernel, g)(x_train, diag=True).mean().item()
            solvers[g] = _Krylov(lambda u, g=g, scale=scale: train_operator(g) @ u + scale * u, n, y_train.numel(),
                                 tol=tol, keep_bytes=keep)
        with torch.no_grad():
            return solvers[g].phi(times, v, forms, key, run_tol)

    def cross(g, x_test):
        """(m, n) test-train kernel as a dense matrix, block by block."""
        blocks = [_operator(kernel, g, x_test[s:s + test_block], x_train) for s in range(0, len(x_test), test_block)]
        return torch.cat([b.to_dense() if hasattr(b, "to_dense") else b for b in blocks])

    def test_kernels(x_test, kinds):
        """The cross kernels (n, m) of `kinds` and the NNGP prior (m, m) at x_test, kept for the same x_test."""
        if "x" not in tests or tests["x"].shape != x_test.shape or not torch.equal(tests["x"], x_test):
            tests.clear()
            tests.update(x=x_test.clone(), crosses={}, prior=None)
        for g in kinds:
            if g not in tests["crosses"]:
                tests["crosses"][g] = cross(g, x_test).mT
        if tests["prior"] is None:
            tests["prior"] = _matrix(kernel, "nngp", x_test)
        return tests["crosses"], tests["prior"]

    def predict_fn(t=None, x_test=None, get=None, compute_cov=False):
        kinds, single, x_test = _ensemble_request(get, available, x_test, x_train, y_train)
        times, shape = _times(math.inf if t is None else t, learning_rate, y_train)
        count, k = times.shape[0], y_train.shape[-1]
        if count == 0:
            return _empty(kinds, single, shape, x_train if x_test is None else x_test, y_train, compute_cov)
        if x_test is None and compute_cov and not bool(torch.isinf(times).all()):
            raise ValueError("the covariance on the training inputs at a finite time is an n x n matrix that "
                             "solver='krylov' does not form: pass x_test (x_train itself for the regularized one), "
                             "or use solver='eigh'")
        # With the covariance, the cross kernels join y_train as columns of ONE Lanczos run per kind (every time,
        # and 2t for the NNGP, from the same tridiagonals): one pass over the training kernel per step.
        with_test_cov = compute_cov and x_test is not None
        crosses, k_tt = test_kernels(x_test, set(kinds) | {"nngp"}) if with_test_cov else ({}, None)
        out = {}
        # The NTK first: its covariance needs one product with K_XX, which then evaluates the NNGP's matrix that the
        # NNGP's own run reuses (one n x n matrix held at a time, each evaluated once).
        for g in sorted(kinds, key=lambda kind: kind != "ntk") if with_test_cov else kinds:
            if with_test_cov:
                run_times = torch.cat([times, 2 * times]) if g == "nngp" else times
                # The NNGP's covariance is a quadratic form of phi(K), judged as one (Gauss quadrature converges
                # about twice as fast); the NTK's multiplies phi(Theta) Theta_X* by the NNGP's matrix, which forms of
                # Theta do not control (a single finite time was 2e-6 off with them), so its run watches the
                # vectors, to sqrt(tol): the covariance's error is about the square of theirs (see docs/design.md).
                columns = torch.cat([y_train, crosses[g]], dim=-1)
                result = phi(g, run_times, columns, forms=g == "nngp", key="cov",
                             run_tol=None if g == "nngp" else math.sqrt(tol))
                moved, spread_by = result[:count, :, :k], result[-count:, :, k:]  # (T, n, k), (T, n, m)
            else:
                moved = phi(g, times, y_train, key="mean")  # (T, n, k)
            if x_test is None:  # (I - exp(-K t / N)) y = K phi_t(K) y, K regularized (as neural-tangents)
                mean = torch.stack([solvers[g].matmul(m) for m in moved])
            elif with_test_cov:
                mean = crosses[g].mT @ moved
            elif "x" in tests and tests["x"].shape == x_test.shape and g in tests["crosses"] and \
                    torch.equal(tests["x"], x_test):
                mean = tests["crosses"][g].mT @ moved
            else:  # test points in blocks: any number of them fits in memory
                flat = moved.permute(1, 0, 2).reshape(n, -1)  # (n, T k)
                rows = [_operator(kernel, g, x_test[s:s + test_block], x_train) @ flat
                        for s in range(0, len(x_test), test_block)]
                mean = torch.cat(rows).reshape(len(x_test), count, -1).permute(1, 0, 2)
            mean = mean.reshape(*shape, *mean.shape[-2:])
            if not compute_cov:
                out[g] = mean
                continue
            if x_test is None:  # infinite time on the training inputs: the targets, without variance
                out[g] = Gaussian(mean, y_train.new_zeros(*shape, n, n))
                continue
            nngp_xt = crosses["nngp"]
            if g == "nngp":  # K_** - K_*X phi_2t(K) K_X*
                cov = k_tt - nngp_xt.mT @ spread_by
            else:
                term_1 = spread_by  # (T, n, m): phi_t(Theta) Theta_X*
                nngp_op = train_operator("nngp")  # the NNGP's matrix, which its own run reuses next
                spread = (nngp_op @ term_1.permute(1, 0, 2).reshape(n, -1)).reshape(n, count, -1).permute(1, 0, 2)
                term_2 = term_1.mT @ nngp_xt  # Theta_*X phi_t(Theta) K_X*
                cov = term_1.mT @ spread - term_2 - term_2.mT + k_tt
            out[g] = Gaussian(mean, cov.reshape(*shape, *cov.shape[-2:]))
        return _pack(out, kinds, single)

    predict_fn.solvers = solvers  # the Lanczos runs (steps_used), for reports and benchmarks
    return predict_fn
