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
t = None (or math.inf among the times) is infinite time: kernel regression (`gp_inference`, by Cholesky). Two ways
to apply the matrix functions: one exact spectral decomposition per training kernel (`_Eigen`: tridiagonal on the
CPU, eigh on a GPU) or Lanczos through the kernel's products (`_Krylov`). One network under any loss:
`gradient_descent`, an ODE (torchdiffeq).
"""
from __future__ import annotations

import contextlib
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


@contextlib.contextmanager
def _as_kind(kernel, kind: str):
    """The network kernel computing `kind` ("nngp" or "ntk") inside the block, without autograd. The NNGP of an NTK
    kernel is its NTK flag switched off (a copy of a GPyTorch module would share its attribute dictionary); operators
    made inside keep the flag they were made with."""
    from .kernels.architecture import ArchitectureKernel

    attribute = "ntk" if isinstance(kernel, ArchitectureKernel) else "_ntk"
    had = attribute in vars(kernel)
    saved = getattr(kernel, attribute)
    try:
        setattr(kernel, attribute, kind == "ntk")
        with torch.no_grad():
            yield kernel
    finally:
        if had:
            setattr(kernel, attribute, saved)
        else:
            delattr(kernel, attribute)


def _matrix(kernel, kind: str, x1, x2=None) -> torch.Tensor:
    """The dense `kind` matrix of a network kernel, (n, m)."""
    with _as_kind(kernel, kind) as k:
        return k(x1, x2).to_dense()


def _operator(kernel, kind: str, x1, x2=None):
    """The `kind` kernel of x1 and x2 as whatever the kernel's backend makes (a tensor or a linear operator), for
    products."""
    with _as_kind(kernel, kind) as k:
        out = k(x1, x2)
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
    """(kinds, single, x_test in y_train's dtype) for an ensemble's predict_fn; ValueError for an unknown or
    unavailable get, or test inputs of the wrong shape."""
    kinds, single = _canonical_get(get)
    if "ntkgp" in kinds:
        raise ValueError("get='ntkgp' is a gp_inference mode, not a gradient-descent one")
    if "ntk" in kinds and "ntk" not in available:
        raise ValueError("the NTK ensemble needs an NTKKernel (it gives both the NNGP and the NTK); this kernel is an "
                         "NNGP kernel: use get='nngp', or build NTKKernel with the same arguments")
    if x_test is not None:
        if not isinstance(x_test, torch.Tensor) or x_test.dim() != 2 or x_test.shape[-1] != x_train.shape[-1]:
            raise ValueError(f"x_test must have shape (m, {x_train.shape[-1]}), got "
                             f"{tuple(x_test.shape) if isinstance(x_test, torch.Tensor) else x_test!r}")
        x_test = x_test.to(y_train)
    return kinds, single, x_test


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
    """The Cholesky factor of a training kernel; ValueError when it is singular to working precision (a squared
    pivot ratio below n eps: the solve would be rounding noise, where neural-tangents returns NaN or noise)."""
    factor, info = torch.linalg.cholesky_ex(k)
    pivots = factor.diagonal()
    ratio = (pivots.min() / pivots.max()) ** 2 if int(info) == 0 else 0.0
    # n eps: a duplicated point leaves a pivot of rounding size; an ill-conditioned float32 kernel (condition 1e5 at
    # diag_reg 1e-3) is solvable and passes.
    if int(info) != 0 or ratio < k.shape[-1] * torch.finfo(k.dtype).eps:
        raise ValueError("the training kernel is not positive definite, so infinite time (t=None) has no unique "
                         "solution (duplicated training points make it singular): pass diag_reg > 0")
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


TRIDIAGONAL_MIN_POINTS = 512  # on the CPU, _Eigen tridiagonalizes from this size up (see _Eigen)


class _Eigen:
    """One exact spectral decomposition of a (regularized) training kernel A = V diag(l) V^T, and the matrix
    functions V diag(w) V^T v built on it.

    On the CPU from TRIDIAGONAL_MIN_POINTS up, V is never formed: A is reduced once to a tridiagonal matrix
    A = Q T Q^T by Householder reflections (LAPACK sytrd, in place), T = Z diag(l) Z^T is solved by divide and
    conquer (stevd), and V w = Q (Z w) is applied through the stored reflectors (ormqr), O(n^2) per column. This is
    syevd without its most expensive stages (the n x n back-transformation of the eigenvectors); at n = 5,000 it
    takes 9 s where torch.linalg.eigh takes 19 s on a 2-core CPU. Elsewhere (GPU, small n) torch.linalg.eigh.
    """

    def __init__(self, k: torch.Tensor, normalization: int, tridiagonal: Optional[bool] = None,
                 overwrite: bool = False):
        if tridiagonal is None:
            tridiagonal = k.device.type == "cpu" and k.shape[-1] >= TRIDIAGONAL_MIN_POINTS
        self.n = normalization
        self.reflectors = None
        if tridiagonal and k.shape[-1] > 2:
            self._tridiagonalize(k, overwrite)
        else:
            self.evals, self.evecs = torch.linalg.eigh(k)
        self.positive = self.evals.clamp_min(0)  # a PSD matrix: negative eigenvalues are rounding

    def _tridiagonalize(self, k: torch.Tensor, overwrite: bool):
        import numpy as np
        from scipy.linalg import lapack

        # Overwritten by the reflectors: k itself when allowed (its transpose is the same symmetric matrix, in
        # Fortran order), else a copy.
        a = k.detach().numpy().T if overwrite and k.is_contiguous() else np.array(k.detach().numpy(), order="F")
        sytrd, sytrd_lwork, stevd = lapack.get_lapack_funcs(("sytrd", "sytrd_lwork", "stevd"), (a,))
        lwork, info = sytrd_lwork(a.shape[0], lower=1)
        reduced, diagonal, off, tau, info = sytrd(a, lower=1, lwork=int(lwork), overwrite_a=1)
        if info != 0:
            raise RuntimeError(f"LAPACK sytrd failed (info={info}) on the training kernel")
        # Reflector i (i < n - 1) acts on rows i + 1 onwards; reduced[1:, :-1] holds them in geqrf's layout.
        self.reflectors = torch.from_numpy(np.asfortranarray(reduced[1:, :-1]))
        del a, reduced
        self.tau = torch.from_numpy(tau)
        evals, z, info = stevd(diagonal, off, compute_v=1)
        if info != 0:
            raise RuntimeError(f"LAPACK stevd failed (info={info}) on the tridiagonal training kernel")
        self.evals, self.z = torch.from_numpy(evals), torch.from_numpy(z)

    def _rotate(self, v: torch.Tensor, transpose: bool) -> torch.Tensor:
        """Q^T v (transpose) or Q v for v (n, c); Q = diag(1, Q') leaves the first row alone."""
        out = v.clone()
        out[1:] = torch.ormqr(self.reflectors, self.tau, v[1:].contiguous(), left=True, transpose=transpose)
        return out

    def check_times(self, times):
        """ValueError when infinite time is asked of a kernel singular to working precision (as _cholesky)."""
        if torch.isinf(times).any():
            top = self.evals.abs().max()
            # Singular when the smallest eigenvalue is within the eigensolver's rounding (about eps |A|) of zero.
            if not bool(self.evals.min() > 10 * torch.finfo(self.evals.dtype).eps * top):
                raise ValueError("the training kernel is not positive definite, so infinite time has no unique "
                                 "solution (duplicated training points make it singular): pass diag_reg > 0")

    def decay(self, t):
        """(T, n): exp(-l t / N) per eigenvalue."""
        return torch.exp(-self.positive * t / self.n)

    def grown(self, t):
        """(T, n): 1 - exp(-l t / N) per eigenvalue."""
        return -torch.expm1(-self.positive * t / self.n)

    def phi(self, t):
        """(T, n): (1 - exp(-l t / N)) / l per eigenvalue (see _phi)."""
        return _phi(self.evals, t, self.n)

    def apply(self, weights, v):
        """(T, n, c): V diag(w_t) V^T v for each row w_t of weights (T, n); v (n, c). Contracted right to left
        (O(T n^2 c)), never through a (T, n, n) intermediate."""
        if self.reflectors is None:
            return self.evecs @ (weights.unsqueeze(-1) * (self.evecs.mT @ v))
        projected = self.z.mT @ self._rotate(v, transpose=True)  # (n, c)
        out = self.z @ (weights.unsqueeze(-1) * projected)  # (T, n, c)
        flat = out.permute(1, 0, 2).reshape(out.shape[1], -1)  # (n, T c): one pass through the reflectors
        return self._rotate(flat, transpose=False).reshape(out.shape[1], out.shape[0], -1).permute(1, 0, 2)


class _Krylov:
    """Matrix functions of a symmetric positive semidefinite operator applied to a block of columns, by block Lanczos
    (Krylov) through its products alone: no n x n matrix of its own, no eigendecomposition of it.

    The columns V (n, c) start one block Krylov space K_s(A, V) = span(V, AV, ..., A^(s-1) V), shared by all of
    them: an orthonormal basis Q (n, dim) and the block tridiagonal T = Q^T A Q (dim, dim) give
    phi(A) V ~ Q phi(T) Q^T V for every phi at once (here every requested time). Sharing the space is what makes
    covariances affordable: the cross kernels of the test points share the training kernel's leading eigenvectors,
    which one block run finds once (with 202 columns: 17-19 block steps at n = 5,000 and 25 at n = 20,000, against
    140-200 steps of a Lanczos run per column). Each step is one product of A with a block (p, at most c, columns)
    plus one reorthogonalization against the whole basis (matrix products; a second pass only where the first
    removed much of a column).
    Directions that vanish (rank-deficient columns, an exhausted space) are dropped from the block (SVD of the new
    block), so duplicated columns and small n are exact rather than unstable.

    Error control: the result's coefficients in the orthonormal basis, Q^T phi(A) V ~ phi(T) E_1 R_1, are compared
    between checks (their difference is the change of the result): the run stops when that change is below `tol`
    relative to the result, for every time and column, or when the space is exhausted (then it is exact). Checks
    diagonalize T, so they come when the products since the last one cost about as much as the next check will.
    """

    def __init__(self, matmul: Callable[[torch.Tensor], torch.Tensor], n: int, normalization: int, tol: float = 1e-10,
                 max_steps: Optional[int] = None, memory_bytes: int = 2 ** 31):
        self.matmul, self.n, self.normalization, self.tol = matmul, n, normalization, tol
        self.max_steps = max_steps
        self.memory_bytes = memory_bytes
        self.steps_used = 0  # the most block steps a run needed, for reports

    def phi(self, times, v, forms: bool = False):
        """(T, n, c): phi_t(A) v for times (T, 1) and v (n, c); columns in groups whose basis fits memory_bytes
        (assuming 32 block steps; the basis grows past that if a run needs it). forms=True stops on the forms
        v^T phi_t(A) v instead of the vectors (Gauss quadrature: they converge about twice as fast), for callers
        that use the result only through products with kernels that share A's leading eigenvectors."""
        group = max(1, self.memory_bytes // (8 * self.n * 32))
        return torch.cat([self._run(times, v[:, s:s + group], forms) for s in range(0, v.shape[-1], group)], dim=-1)

    @staticmethod
    def _orthonormal(w, floor):
        """(q (n, p), r (p, c)) with w = q r, q orthonormal, dropping directions whose singular value is below
        floor (the SVD keeps this exact for rank-deficient blocks)."""
        u, sv, vt = torch.linalg.svd(w, full_matrices=False)
        keep = sv > floor
        return u[:, keep], sv[keep, None] * vt[keep]

    def _run(self, times, v, forms=False):
        n, c = v.shape
        eps = torch.finfo(v.dtype).eps
        scale = v.norm().clamp_min(torch.finfo(v.dtype).tiny)
        # Deflation floors at rounding level (10 eps of the block's, or A's, scale): an n eps floor dropped real
        # directions in float32 and gave answers 150 % off.
        q, r = self._orthonormal(v / scale, 10 * eps)  # r (p, c): V = scale Q_1 r
        tol = max(self.tol, 100 * eps)  # float32 cannot resolve changes of 1e-10: stop at its rounding level
        if q.shape[1] == 0:
            return v.new_zeros(times.shape[0], n, c)
        # The basis as a list of blocks (no n x dim buffer to grow and copy: the memory is the basis itself).
        blocks, dim = [q], q.shape[1]
        starts, diagonal, below = [0], [], []  # block offsets, Q_j^T A Q_j, Q_(j+1)^T A Q_j
        previous, coefficients, norm_a = None, None, 0.0
        step, steps_since, last_dim = 0, 0, 1
        while True:
            q = blocks[-1]
            w = self.matmul(q)  # (n, p)
            a = q.mT @ w
            diagonal.append((a + a.mT) / 2)
            norm_a = max(norm_a, float(torch.linalg.matrix_norm(a, 2)))
            w = w - q @ diagonal[-1]  # the block three-term recurrence takes the large components out cheaply
            if below:
                w = w - blocks[-2] @ below[-1].mT
            before = w.norm(dim=0)
            w = self._reorthogonalize(w, blocks)
            if bool((w.norm(dim=0) < 0.7 * before).any()):
                w = self._reorthogonalize(w, blocks)
            step += 1
            q_next, b = self._orthonormal(w, 10 * eps * max(norm_a, 1e-300))
            q_next, b = q_next[:, : n - dim], b[: n - dim]
            last = q_next.shape[1] == 0 or (self.max_steps is not None and step >= self.max_steps)
            # A check diagonalizes T (measured on 2 CPU cores: about dim^3 / 8e9 s, against 2 n^2 p / 5e10 s for
            # a step's product), so checks come once the steps since the last one cost about as much as the next
            # check (with room to spare: overshooting costs steps, and basis memory), or once the space has grown
            # by a tenth. The rule counts work, not seconds, so the result does not depend on the machine's load.
            steps_since += 1
            due = steps_since * n * n * q.shape[1] >= dim ** 3 or dim >= 1.1 * last_dim
            if last or previous is None or due:
                coefficients = self._coefficients(times, diagonal, below, starts, dim, r)  # (T, dim, c)
                steps_since, last_dim = 0, dim
                if forms:  # V^T phi(A) V ~ r^T (E_1^T phi(T) E_1 r), per time
                    watched = r.mT @ coefficients[:, : r.shape[0]]
                    if previous is not None:
                        change = (watched - previous).abs().amax((1, 2)) / watched.abs().amax((1, 2)).clamp_min(eps)
                        last = last or bool((change <= tol).all())
                else:  # the coefficients in the orthonormal basis: their change is the result's
                    watched = coefficients
                    if previous is not None:
                        padded = torch.nn.functional.pad(previous, (0, 0, 0, dim - previous.shape[1]))
                        change = (coefficients - padded).norm(dim=1) / coefficients.norm(dim=1).clamp_min(eps)
                        last = last or bool((change <= tol).all())
                previous = watched
            if last:
                break
            blocks.append(q_next)
            below.append(b)
            starts.append(dim)
            dim += q_next.shape[1]
        self.steps_used = max(self.steps_used, step)
        coefficients = coefficients * scale
        out = v.new_zeros(coefficients.shape[0], n, c)
        for start, block in zip(starts, blocks):  # in place: no (T, n, c) temporaries
            for t in range(out.shape[0]):
                out[t].addmm_(block, coefficients[t, start:start + block.shape[1]])
        return out

    @staticmethod
    def _reorthogonalize(w, blocks):
        """w minus its components in every block of the basis, block after block (block modified Gram-Schmidt)."""
        for block in blocks:
            w = w - block @ (block.mT @ w)
        return w

    def _coefficients(self, times, diagonal, below, starts, dim, r):
        """(T, dim, c): phi_t(T) E_1 r, T the block tridiagonal of the blocks so far."""
        tri = r.new_zeros(dim, dim)
        for j, a in enumerate(diagonal):
            s0 = starts[j]
            tri[s0:s0 + a.shape[0], s0:s0 + a.shape[0]] = a
            if j < len(below) and j + 1 < len(starts):
                b = below[j]
                tri[starts[j + 1]:starts[j + 1] + b.shape[0], s0:s0 + b.shape[1]] = b
                tri[s0:s0 + b.shape[1], starts[j + 1]:starts[j + 1] + b.shape[0]] = b.mT
        first = r.new_zeros(dim, r.shape[1])
        first[: r.shape[0]] = r
        eigen = _Eigen(tri, self.normalization, overwrite=True)  # tri becomes the reflectors' storage
        del tri
        return eigen.apply(_phi(eigen.evals, times, self.normalization), first)


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
            eigen.check_times(times)
            fx_train = fx_test = None
            if f0 is not None:  # f0 + (exp(-k t / N) - 1)(f0 - y)
                fx_train = f0 + eigen.apply(eigen.grown(times), residual)
                fx_train = fx_train.reshape(*shape, *y_train.shape)
            if fx_test_0 is not None:
                moved = eigen.apply(eigen.phi(times), residual)  # (T, n, k)
                fx_test = fx_test_0 + torch.einsum("mn,tnk->tmk", k_test_train.to(y_train), moved)
                fx_test = fx_test.reshape(*shape, *fx_test.shape[-2:])
        if fx_test_0 is None:
            return fx_train
        return fx_test if fx_train is None else (fx_train, fx_test)

    return predict_fn


# -- one linearized network, any loss: an ODE ---------------------------------------------------------------------
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
    """
    from torchdiffeq import odeint

    _check_training(None, y_train, learning_rate, 0.0)
    if not callable(loss):
        raise TypeError(f"loss must be a function loss(fx_train, y_train) -> scalar, got {type(loss).__name__}")
    if momentum is not None and (not isinstance(momentum, (int, float)) or isinstance(momentum, bool)
                                 or not 0 <= momentum < 1):
        raise ValueError(f"momentum must be None or a number in [0, 1), got {momentum!r}")
    k = check_finite_kernel(torch.as_tensor(k_train_train).to(y_train), y_train)
    if k.shape != (y_train.shape[0],) * 2:
        raise ValueError(f"k_train_train must be ({y_train.shape[0]}, {y_train.shape[0]}) for y_train of shape "
                         f"{tuple(y_train.shape)}, got {tuple(k.shape)}")
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
        order, inverse = torch.unique(times, sorted=True, return_inverse=True)
        # The solver starts where the initial outputs are given: time 0, prepended unless asked for.
        start = order if order[0] == 0 else torch.cat([torch.zeros_like(order[:1]), order])
        f_train = torch.zeros_like(y_train) if fx_train_0 is None else \
            torch.as_tensor(fx_train_0).to(y_train).expand_as(y_train).clone()
        k_td = None
        state = [f_train]
        if fx_test_0 is not None:
            k_td = torch.as_tensor(k_test_train).to(y_train)
            if k_td.dim() != 2 or k_td.shape[1] != y_train.shape[0]:
                raise ValueError(f"k_test_train must be (m, {y_train.shape[0]}), got {tuple(k_td.shape)}")
            state.append(torch.as_tensor(fx_test_0).to(y_train).expand(k_td.shape[0], y_train.shape[1]).clone())
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
SOLVERS = ("auto", "eigh", "krylov")
EIGH_MAX_POINTS = 4096  # "auto" eigendecomposes up to this many training points with a dense kernel


def gradient_descent_mse_ensemble(kernel, x_train: torch.Tensor, y_train: torch.Tensor, learning_rate: float = 1.0,
                                  diag_reg: float = 0.0, diag_reg_absolute_scale: bool = False, *,
                                  solver: str = "auto", krylov_tol: float = 1e-10, test_block: int = 4096,
                                  krylov_dense_bytes: int = 2 ** 32) -> Callable:
    """Mean and covariance of the infinite ensemble of infinitely wide networks trained by gradient descent on the MSE
    loss for time t, the initialization marginalized (neural-tangents' `gradient_descent_mse_ensemble`).

    Args:
        kernel: an NTKKernel (fully connected or from `from_module`), which gives the NNGP and the NTK of one
            architecture; an NNGPKernel serves get="nngp" only.
        x_train: (n, d) training inputs; y_train: (n, k) targets (the k outputs share the kernel).
        learning_rate, diag_reg, diag_reg_absolute_scale: as in the module docstring.
        solver: "eigh" (one eigendecomposition of each n x n training kernel, as neural-tangents), "krylov"
            (Lanczos through the kernel's products: lazy, KeOps and distributed backends, no n x n matrix of its
            own; every time of a call from one run; infinite time is phi = 1 / lambda, the same run), or "auto"
            (eigh for a dense kernel of at most EIGH_MAX_POINTS points, else krylov). Keyword only, as the two below.
        krylov_tol: Lanczos stops when the result changes by less than this (relative) over its last 10 steps.
        test_block: test points per block for the mean (the covariance needs all test points at once).
        krylov_dense_bytes: the Krylov path evaluates a training kernel of at most this many bytes into one dense
            matrix (one kind at a time), so that a Lanczos step is a matrix product instead of a re-evaluation of the
            lazy or KeOps kernel; 0 keeps every product on the backend. Distributed kernels always stay sharded.

    Returns:
        `predict_fn(t=None, x_test=None, get=None, compute_cov=False)`: for get "nngp" (readout trained) or "ntk" (all
        layers), the mean (*t_shape, m, k), or Gaussian(mean, covariance (*t_shape, m, m)) with compute_cov=True;
        get=None or a tuple gives a namedtuple with one field per kind. t: None (infinite time), a number or a 1-D
        sequence of steps, math.inf among them for infinite time (with solver="krylov", one call for every time
        runs one Lanczos per kind). x_test=None predicts on the training inputs (without diag_reg).

    Raises:
        TypeError: a kernel that is not a network kernel. ValueError: shapes, t < 0, learning_rate <= 0, an unknown
            get, or the NTK asked of an NNGP kernel.
    """
    _check_training(x_train, y_train, learning_rate, diag_reg)
    available = _kinds_of(kernel)
    x_train = x_train.to(y_train)
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
        kinds, single, x_test = _ensemble_request(get, available, x_test, x_train, y_train)
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
            e.check_times(times)
            if x_test is None:
                mean = e.apply(e.grown(times), y_train)
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
                    term_2 = term_1.mT @ k_td["nngp"].mT  # (T, m, m): Theta_*X phi_t(Theta) K_X*, phi symmetric
                    cov = term_1.mT @ nngp_dd @ term_1 - term_2 - term_2.mT + k_tt
            out[g] = Gaussian(mean, cov.reshape(*shape, *cov.shape[-2:]))
        return _pack(out, kinds, single)

    return predict_fn


def _materialized(kernel, kind: str, x: torch.Tensor, block_bytes: int = 2 ** 26) -> torch.Tensor:
    """The (n, n) `kind` kernel of x as one dense matrix, evaluated in row blocks (the backend's temporaries stay
    within a few block_bytes)."""
    n = x.shape[0]
    out = torch.empty(n, n, dtype=x.dtype, device=x.device)
    rows = max(1, block_bytes // (8 * n * x.element_size()))
    for s in range(0, n, rows):
        out[s:s + rows] = _matrix(kernel, kind, x[s:s + rows], x)
    return out


def _krylov_ensemble(kernel, available, x_train, y_train, learning_rate, diag_reg, absolute, tol, test_block,
                     dense_bytes):
    """gradient_descent_mse_ensemble's predict_fn through operator products and Lanczos (see _Krylov)."""
    n = x_train.shape[0]
    operators, solvers = {}, {}
    # A training kernel small enough is evaluated once into a dense matrix (one kind at a time): each Lanczos step is
    # then a matrix product, not a re-evaluation of the kernel. A sharded (distributed) kernel stays sharded.
    sharded = not isinstance(getattr(kernel, "backend", "dense"), str)
    materialize = not sharded and n * n * y_train.element_size() <= dense_bytes
    dense = {}

    def train_operator(g):
        if materialize:
            if g not in dense:
                dense.clear()  # one n x n matrix at a time
                dense[g] = _materialized(kernel, g, x_train)
            return dense[g]
        if g not in operators:
            operators[g] = _operator(kernel, g, x_train)
        return operators[g]

    def phi(g, times, v, forms=False):
        if g not in solvers:
            with _as_kind(kernel, g) as k:
                scale = diag_reg if absolute else diag_reg * k(x_train, diag=True).mean().item()
            solvers[g] = _Krylov(lambda u, g=g, scale=scale: train_operator(g) @ u + scale * u, n, y_train.numel(),
                                 tol=tol)
        with torch.no_grad():
            return solvers[g].phi(times, v, forms)

    def cross(g, x_test):
        """(m, n) test-train kernel as a dense matrix, block by block."""
        blocks = [_operator(kernel, g, x_test[s:s + test_block], x_train) for s in range(0, len(x_test), test_block)]
        return torch.cat([b.to_dense() if hasattr(b, "to_dense") else b for b in blocks])

    def predict_fn(t=None, x_test=None, get=None, compute_cov=False):
        kinds, single, x_test = _ensemble_request(get, available, x_test, x_train, y_train)
        times, shape = _times(math.inf if t is None else t, learning_rate, y_train)
        if x_test is None and compute_cov:
            if t is None:  # infinite time on the training inputs: the targets, without variance
                cov = torch.zeros(n, n, dtype=y_train.dtype, device=y_train.device)
                return _pack({g: Gaussian(y_train.clone(), cov) for g in kinds}, kinds, single)
            raise ValueError("the covariance on the training inputs is an n x n matrix that solver='krylov' does not "
                             "form: pass x_test (x_train itself for the regularized one), or use solver='eigh'")
        count, k = times.shape[0], y_train.shape[-1]
        # With the covariance, the cross kernels join y_train as columns of ONE Lanczos run per kind (every time,
        # and 2t for the NNGP, from the same tridiagonals): one pass over the training kernel per step.
        crosses = {g: cross(g, x_test).mT for g in (set(kinds) | {"nngp"})} if compute_cov else {}  # (n, m)
        k_tt = _matrix(kernel, "nngp", x_test) if compute_cov else None  # the prior at the test points, (m, m)
        out = {}
        # The NTK first: its covariance needs one product with K_XX, which then evaluates the NNGP's matrix that the
        # NNGP's own run reuses (one n x n matrix held at a time, each evaluated once).
        for g in sorted(kinds, key=lambda kind: kind != "ntk") if compute_cov else kinds:
            if compute_cov:
                run_times = torch.cat([times, 2 * times]) if g == "nngp" else times
                result = phi(g, run_times, torch.cat([y_train, crosses[g]], dim=-1), forms=True)  # (T', n, k + m)
                moved, spread_by = result[:count, :, :k], result[-count:, :, k:]
            else:
                moved = phi(g, times, y_train)  # (T, n, k)
            if x_test is None:  # (I - exp(-K t / N)) y = K phi_t(K) y, K regularized (as neural-tangents)
                mean = torch.stack([solvers[g].matmul(m) for m in moved])
            elif compute_cov:
                mean = crosses[g].mT @ moved
            else:  # test points in blocks: any number of them fits in memory
                flat = moved.permute(1, 0, 2).reshape(n, -1)  # (n, T k)
                rows = [_operator(kernel, g, x_test[s:s + test_block], x_train) @ flat
                        for s in range(0, len(x_test), test_block)]
                mean = torch.cat(rows).reshape(len(x_test), count, -1).permute(1, 0, 2)
            mean = mean.reshape(*shape, *mean.shape[-2:])
            if not compute_cov:
                out[g] = mean
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


__all__ = ["Gaussian", "gp_inference", "gradient_descent", "gradient_descent_mse", "gradient_descent_mse_ensemble",
           "max_learning_rate"]
