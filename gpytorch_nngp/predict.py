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

import math
from collections import namedtuple
from typing import Callable, Optional, Tuple

import torch

Gaussian = namedtuple("Gaussian", "mean covariance")
GETS = ("nngp", "ntk")


# -- the two kernels of one architecture ------------------------------------------------------------------------------
def _kinds_of(kernel) -> Tuple[str, ...]:
    """The kernels a network kernel gives: an NTK kernel gives both the NNGP and the NTK (the same architecture and
    variances, through `with_kind`), an NNGP kernel the NNGP only."""
    from .kernels.base import NetworkKernel

    if isinstance(kernel, NetworkKernel):
        return GETS if kernel.kind == "ntk" else ("nngp",)
    raise TypeError(f"kernel must be a network kernel (NNGPKernel or NTKKernel, fully connected or from from_module, "
                    f"or GraphNodeKernel), got {type(kernel).__name__}; for any other kernel matrix use "
                    "gradient_descent_mse or gp_inference")


def _of_kind(kernel, kind: str):
    """The `kind` ("nngp" or "ntk") kernel of the same architecture, sharing the parameters (the user's kernel is
    never changed)."""
    return kernel.with_kind(kind)


def _matrix(kernel, kind: str, x1, x2=None) -> torch.Tensor:
    """The dense `kind` matrix of a network kernel, (n, m)."""
    with torch.no_grad():
        return _of_kind(kernel, kind)(x1, x2).to_dense()


def _operator(kernel, kind: str, x1, x2=None):
    """The `kind` kernel of x1 and x2 as whatever the kernel's backend makes (a tensor or a linear operator), for
    products."""
    with torch.no_grad():
        out = _of_kind(kernel, kind)(x1, x2)
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


def _check_matrix(name: str, value, shape: Tuple[int, ...], like: torch.Tensor, symmetric: bool = False):
    """A kernel matrix argument, checked: a floating point tensor (or array) of `like`'s dtype, of `shape`, with
    finite entries, and symmetric to sqrt(eps) of its largest entry where `symmetric` (then returned symmetrized,
    so that no solver depends on which triangle it reads). Moved to like's device. Raises ValueError naming `name`."""
    if not isinstance(value, torch.Tensor):
        try:
            value = torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(f"{name} must be a tensor of shape {shape}, got {type(value).__name__}") from None
    if not torch.is_floating_point(value):
        raise ValueError(f"{name} must be a floating point tensor, got dtype {value.dtype}")
    if value.dtype != like.dtype:
        raise ValueError(f"{name} is {value.dtype} but y_train is {like.dtype}: pass them in one dtype (e.g. "
                         f"{name}.to({like.dtype}) or y_train.to({value.dtype}))")
    if tuple(value.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(value.shape)}")
    value = value.to(like.device)
    finite = torch.isfinite(value)
    if not bool(finite.all()):
        bad = (~finite).nonzero()
        raise ValueError(f"{name} has {bad.shape[0]} NaN or infinite entries (the first at {tuple(bad[0].tolist())}): "
                         "a kernel matrix must be finite")
    if symmetric and value.numel():
        scale = value.abs().max()
        gap = (value - value.mT).abs().max()
        if bool(gap > math.sqrt(torch.finfo(value.dtype).eps) * scale):
            raise ValueError(f"{name} is not symmetric: entries (i, j) and (j, i) differ by up to {float(gap):.3g} "
                             f"(its largest entry is {float(scale):.3g}); a training kernel k(X, X) is symmetric")
        value = (value + value.mT) / 2
    return value


def _check_cross(name: str, value, n: int, like: torch.Tensor) -> torch.Tensor:
    """A test-train kernel (m, n) for n training points, checked as _check_matrix does."""
    if not isinstance(value, torch.Tensor):
        try:
            value = torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError):
            pass
    if not isinstance(value, torch.Tensor) or value.dim() != 2 or value.shape[1] != n:
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ValueError(f"{name} must have shape (m, {n}) for {n} training points, got {shape}")
    return _check_matrix(name, value, tuple(value.shape), like)


def _check_outputs(name: str, value, shape: Tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """Initial outputs (a number or a tensor broadcastable to `shape`) as a tensor of that shape in like's dtype;
    ValueError naming `name` for NaN/inf or a shape that does not broadcast."""
    if isinstance(value, torch.Tensor) and torch.is_floating_point(value) and value.dtype != like.dtype:
        raise ValueError(f"{name} is {value.dtype} but y_train is {like.dtype}: pass them in one dtype")
    tensor = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    try:
        tensor = tensor.expand(*shape)
    except RuntimeError:
        raise ValueError(f"{name} must broadcast to shape {tuple(shape)}, got shape {tuple(tensor.shape)}") from None
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"{name} contains NaN or inf")
    return tensor


def _kernel_dtype(kernel) -> Optional[torch.dtype]:
    """The floating dtype a network kernel computes in (its variances'), or None if it has no parameters."""
    for tensor in kernel.parameters():
        if torch.is_floating_point(tensor):
            return tensor.dtype
    return None


def _check_dtypes(kernel, **tensors) -> None:
    """ValueError naming the tensors (x_train, y_train, x_test) whose dtype differs from the kernel's."""
    dtype = _kernel_dtype(kernel)
    wrong = {name: t.dtype for name, t in tensors.items() if t is not None and dtype is not None and t.dtype != dtype}
    if wrong:
        listed = ", ".join(f"{name} is {d}" for name, d in wrong.items())
        cast = "double()" if dtype == torch.float64 else "float()" if dtype == torch.float32 else f"to({dtype})"
        raise ValueError(f"{listed}, but the kernel computes in {dtype}: convert them ({', '.join(wrong)}.{cast}) or "
                         f"the kernel (kernel.to({next(iter(wrong.values()))}))")


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
        if weights.shape[0] == 0:
            return v.new_zeros(0, *v.shape)
        if self.reflectors is None:
            return self.evecs @ (weights.unsqueeze(-1) * (self.evecs.mT @ v))
        projected = self.z.mT @ self._rotate(v, transpose=True)  # (n, c)
        out = self.z @ (weights.unsqueeze(-1) * projected)  # (T, n, c)
        flat = out.permute(1, 0, 2).reshape(out.shape[1], -1)  # (n, T c): one pass through the reflectors
        return self._rotate(flat, transpose=False).reshape(out.shape[1], out.shape[0], -1).permute(1, 0, 2)


def _resolved_or_raise(evals: torch.Tensor) -> None:
    """ValueError (SINGULAR) when the smallest of a symmetric PSD matrix's (Ritz) values is within rounding of zero:
    below 10 eps of the largest. Ritz values of a Krylov space lie at or above the smallest eigenvalue, so a small
    one proves the kernel singular to working precision; 1 / lambda there would amplify rounding (float32 Lanczos
    once returned means 3x too large and different outputs for duplicated training points)."""
    top = evals.abs().max()
    if not bool(evals.min() > 10 * torch.finfo(evals.dtype).eps * top):
        raise ValueError(SINGULAR)


class _Spectral:
    """The matrix functions of one regularized training kernel A (n, n) that the exact solver applies: finite times
    through one spectral decomposition (_Eigen, made when first needed), infinite time through a Cholesky factor
    (phi_inf(A) v = A^-1 v). t=None and math.inf are the same request, so they give the same numbers and refuse the
    same kernels (SINGULAR, from _cholesky) -- also on the training inputs, where the limit is y only for a
    non-singular A."""

    def __init__(self, k: torch.Tensor, normalization: int):
        self.k, self.n = k, normalization
        self._eigen, self._factor = None, None

    @property
    def eigen(self) -> _Eigen:
        if self._eigen is None:
            self._eigen = _Eigen(self.k, self.n)
        return self._eigen

    @property
    def factor(self) -> torch.Tensor:
        if self._factor is None:
            self._factor = _cholesky(self.k)
        return self._factor

    def _by_time(self, times, finite, infinite):
        """(T, ...): finite(the finite times (T', 1)) at those rows, infinite() (one value) at the rows of inf."""
        at_inf = torch.isinf(times[:, 0])
        if not bool(at_inf.any()):
            return finite(times)
        limit = infinite()
        if bool(at_inf.all()):
            return limit.expand(times.shape[0], *limit.shape).clone()
        rest = finite(times[~at_inf])
        out = rest.new_empty(times.shape[0], *rest.shape[1:])
        out[~at_inf], out[at_inf] = rest, limit
        return out

    def phi(self, times, v):
        """(T, n, c): phi_t(A) v; A^-1 v at infinite time."""
        return self._by_time(times, lambda t: self.eigen.apply(self.eigen.phi(t), v),
                             lambda: torch.cholesky_solve(v, self.factor))

    def grown(self, times, v):
        """(T, n, c): (I - exp(-A t / N)) v = A phi_t(A) v; v itself at infinite time (A non-singular)."""
        return self._by_time(times, lambda t: self.eigen.apply(self.eigen.grown(t), v), lambda: self._checked(v))

    def _checked(self, v):
        """v, once A is known to be non-singular (the limit of a flow that reaches every direction)."""
        self.factor  # noqa: B018 -- raises SINGULAR for a singular kernel
        return v

    def decayed(self, times, v):
        """(T, n, c): exp(-A t / N) v; 0 at infinite time (A non-singular)."""
        return self._by_time(times, lambda t: self.eigen.apply(self.eigen.decay(t), v),
                             lambda: self.factor.new_zeros(v.shape))

    def spread(self, times, v):
        """(T, n, c): A exp(-2 A t / N) v (the readout-trained covariance on the training inputs); 0 at infinity."""
        def finite(t):
            e = self.eigen
            return e.apply(e.positive * torch.exp(-2 * e.positive * t / e.n), v)
        return self._by_time(times, finite, lambda: self.factor.new_zeros(v.shape))


class _KrylovRun:
    """One block Lanczos run from the columns V (n, c), kept between requests: its orthonormal basis Q (a list of
    blocks), the block tridiagonal T = Q^T A Q and V's coordinates in Q. A request for other times reuses the space
    and extends it only where the result has not converged for them (see _Krylov)."""

    def __init__(self, matmul, v: torch.Tensor, tol: float, normalization: int):
        self.matmul, self.v, self.normalization = matmul, v, normalization
        n = v.shape[0]
        self.eps = torch.finfo(v.dtype).eps
        self.scale = v.norm().clamp_min(torch.finfo(v.dtype).tiny)
        # Deflation floors at rounding level (10 eps of the block's, or A's, scale): an n eps floor dropped real
        # directions in float32 and gave answers 150 % off.
        q, self.r = _Krylov._orthonormal(v / self.scale, 10 * self.eps)  # r (p, c): V = scale Q_1 r
        self.tol = max(tol, 100 * self.eps)  # float32 cannot resolve changes of 1e-10: stop at its rounding level
        self.blocks = [q] if q.shape[1] else []
        self.starts, self.diagonal, self.below = [0], [], []  # block offsets, Q_j^T A Q_j, Q_(j+1)^T A Q_j
        self.dim, self.norm_a, self.steps = q.shape[1], 0.0, 0
        self.pending = None  # the next block (q, b) found by the last step, not yet in the basis
        self.closed = n == 0 or q.shape[1] == 0  # the space is exhausted: results are exact
        self.checks = []  # block counts at which results were checked

    @property
    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self.blocks)

    def _step(self):
        """The diagonal block of the newest basis block and the next block (pending)."""
        n = self.v.shape[0]
        q = self.blocks[-1]
        w = self.matmul(q)  # (n, p)
        a = q.mT @ w
        self.diagonal.append((a + a.mT) / 2)
        self.norm_a = max(self.norm_a, float(torch.linalg.matrix_norm(a, 2)))
        w = w - q @ self.diagonal[-1]  # the block three-term recurrence takes the large components out cheaply
        if self.below:
            w = w - self.blocks[-2] @ self.below[-1].mT
        before = w.norm(dim=0)
        w = _Krylov._reorthogonalize(w, self.blocks)
        if bool((w.norm(dim=0) < 0.7 * before).any()):
            w = _Krylov._reorthogonalize(w, self.blocks)
        self.steps += 1
        q_next, b = _Krylov._orthonormal(w, 10 * self.eps * max(self.norm_a, 1e-300))
        q_next, b = q_next[:, : n - self.dim], b[: n - self.dim]
        self.pending = (q_next, b)
        self.closed = q_next.shape[1] == 0

    def _advance(self):
        q_next, b = self.pending
        self.pending = None
        self.blocks.append(q_next)
        self.below.append(b)
        self.starts.append(self.dim)
        self.dim += q_next.shape[1]

    def _coefficients(self, times, blocks: int):
        """(T, dim_j, c): phi_t(T_j) E_1 r for T_j the block tridiagonal of the first `blocks` blocks."""
        dim = self.starts[blocks] if blocks < len(self.starts) else self.dim
        r = self.r
        tri = r.new_zeros(dim, dim)
        for j in range(blocks):
            a, s0 = self.diagonal[j], self.starts[j]
            tri[s0:s0 + a.shape[0], s0:s0 + a.shape[0]] = a
            if j + 1 < blocks:
                b = self.below[j]
                tri[self.starts[j + 1]:self.starts[j + 1] + b.shape[0], s0:s0 + b.shape[1]] = b
                tri[s0:s0 + b.shape[1], self.starts[j + 1]:self.starts[j + 1] + b.shape[0]] = b.mT
        first = r.new_zeros(dim, r.shape[1])
        first[: r.shape[0]] = r
        eigen = _Eigen(tri, 1, overwrite=True)  # tri becomes the reflectors' storage
        del tri
        if bool(torch.isinf(times).any()):
            _resolved_or_raise(eigen.evals)
        return eigen.apply(_phi(eigen.evals, times, self.normalization), first)

    def _watched(self, coefficients, forms):
        """What convergence is judged on: the forms V^T phi(A) V ~ r^T (E_1^T phi(T) E_1 r), or the coefficients."""
        return self.r.mT @ coefficients[:, : self.r.shape[0]] if forms else coefficients

    def _change(self, watched, previous, forms):
        if forms:
            return (watched - previous).abs().amax((1, 2)) / watched.abs().amax((1, 2)).clamp_min(self.eps)
        padded = torch.nn.functional.pad(previous, (0, 0, 0, watched.shape[1] - previous.shape[1]))
        return (watched - padded).norm(dim=1) / watched.norm(dim=1).clamp_min(self.eps)

    def solve(self, times, forms: bool = False, max_steps: Optional[int] = None,
              tol: Optional[float] = None) -> torch.Tensor:
        """(T, n, c): phi_t(A) V for times (T, 1), extending the space until the result changes by less than tol
        (the run's own by default) between checks, for every time and column, or the space is exhausted."""
        tol = self.tol if tol is None else max(tol, 100 * self.eps)
        n, c = self.v.shape
        if not self.blocks:
            return self.v.new_zeros(times.shape[0], n, c)
        previous = None
        earlier = [j for j in self.checks if j < len(self.blocks)]
        if earlier and len(self.diagonal) == len(self.blocks):
            # A kept run: judge these times between its last two checks (two different spaces) before stepping on.
            previous = self._watched(self._coefficients(times, earlier[-1]), forms)
        first, steps_since, last_dim = True, 0, self.dim
        while True:
            if len(self.diagonal) < len(self.blocks):
                self._step()
                steps_since += 1
            last = self.closed or (max_steps is not None and self.steps >= max_steps)
            # A check diagonalizes T (measured on 2 CPU cores: about dim^3 / 8e9 s, against 2 n^2 p / 5e10 s for
            # a step's product), so checks come once the steps since the last one cost about as much as the next
            # check (with room to spare: overshooting costs steps, and basis memory), or once the space has grown
            # by a tenth. The rule counts work, not seconds, so the result does not depend on the machine's load.
            due = steps_since * n * n * self.blocks[-1].shape[1] >= self.dim ** 3 or self.dim >= 1.1 * last_dim
            if last or first or previous is None or due:
                coefficients = self._coefficients(times, len(self.blocks))  # (T, dim, c)
                if not self.checks or self.checks[-1] != len(self.blocks):
                    self.checks.append(len(self.blocks))
                steps_since, last_dim = 0, self.dim
                watched = self._watched(coefficients, forms)
                if previous is not None:
                    last = last or bool((self._change(watched, previous, forms) <= tol).all())
                previous, first = watched, False
            if last:
                break
            self._advance()
        coefficients = coefficients * self.scale
        out = self.v.new_zeros(coefficients.shape[0], n, c)
        for start, block in zip(self.starts, self.blocks):  # in place: no (T, n, c) temporaries
            for t in range(out.shape[0]):
                out[t].addmm_(block, coefficients[t, start:start + block.shape[1]])
        return out


class _Krylov:
    """Matrix functions of a symmetric positive semidefinite operator applied to a block of columns, by block Lanczos
    (Krylov) through its products alone: no n x n matrix of its own, no eigendecomposition of it.

    The columns V (n, c) start one block Krylov space K_s(A, V) = span(V, AV, ..., A^(s-1) V), shared by all of
    them: an orthonormal basis Q (n, dim) and the block tridiagonal T = Q^T A Q (dim, dim) give
    phi(A) V ~ Q phi(T) Q^T V for every phi at once (here every requested time). Sharing the space is what makes
    covariances affordable: the cross kernels of the test points share the training kernel's leading eigenvectors,
    which one block run finds once (tens of block steps, against hundreds of steps of a Lanczos run per column).
    Each step is one product of A with a block (p, at most c, columns) plus one reorthogonalization against the
    whole basis (matrix products; a second pass only where the first removed much of a column).
    Directions that vanish (rank-deficient columns, an exhausted space) are dropped from the block (SVD of the new
    block), so duplicated columns and small n are exact rather than unstable.

    Error control: the result's coefficients in the orthonormal basis, Q^T phi(A) V ~ phi(T) E_1 R_1, are compared
    between checks (their difference is the change of the result): the run stops when that change is below `tol`
    relative to the result, for every time and column, or when the space is exhausted (then it is exact). Checks
    diagonalize T, so they come when the products since the last one cost about as much as the next check will.
    Infinite time is phi = 1 / lambda on the Ritz values; a Ritz value within rounding of zero raises (SINGULAR),
    as the exact solver does.

    Reuse: a run started from the same columns (a later call for other times: `key` names it) is kept while the
    kept bases fit `keep_bytes`, and serves the new times from its space, stepping on only if they have not
    converged there (a check between the run's last two checks decides).
    """

    def __init__(self, matmul: Callable[[torch.Tensor], torch.Tensor], n: int, normalization: int, tol: float = 1e-10,
                 max_steps: Optional[int] = None, memory_bytes: int = 2 ** 31, keep_bytes: int = 0):
        self.matmul, self.n, self.normalization, self.tol = matmul, n, normalization, tol
        self.max_steps = max_steps
        self.memory_bytes = memory_bytes
        self.keep_bytes = keep_bytes
        self.steps_used = 0  # the most block steps a run needed, for reports
        self.runs = {}  # key -> list of kept _KrylovRun (one per column group)

    def phi(self, times, v, forms: bool = False, key=None, tol: Optional[float] = None):
        """(T, n, c): phi_t(A) v for times (T, 1) and v (n, c); columns in groups whose basis fits memory_bytes
        (assuming 32 block steps; the basis grows past that if a run needs it). forms=True stops on the forms
        v^T phi_t(A) v instead of the vectors (Gauss quadrature: they converge about twice as fast), for callers
        that use the result only through products with kernels that share A's leading eigenvectors. key: keep the
        runs under this name for a later call with the same columns. tol: this request's tolerance (default the
        solver's)."""
        group = max(1, self.memory_bytes // (8 * self.n * 32))
        kept = self.runs.get((key, forms)) if key is not None else None
        starts = range(0, v.shape[-1], group)
        if kept is None or len(kept) != len(starts) or not all(
                run.v.shape == v[:, s:s + group].shape and torch.equal(run.v, v[:, s:s + group])
                for run, s in zip(kept, starts)):
            kept = [self._new_run(v[:, s:s + group]) for s in starts]
        out = torch.cat([run.solve(times, forms, self.max_steps, tol) for run in kept], dim=-1) if kept else \
            v.new_zeros(times.shape[0], self.n, 0)
        self.steps_used = max([self.steps_used] + [run.steps for run in kept])
        if key is not None:
            self.runs.pop((key, forms), None)
            if sum(run.nbytes for runs in self.runs.values() for run in runs) + sum(r.nbytes for r in kept) <= \
                    self.keep_bytes:
                self.runs[(key, forms)] = kept
        return out

    def _new_run(self, v):
        return _KrylovRun(self.matmul, v, self.tol, self.normalization)

    @staticmethod
    def _orthonormal(w, floor):
        """(q (n, p), r (p, c)) with w = q r, q orthonormal, dropping directions whose singular value is below
        floor (the SVD keeps this exact for rank-deficient blocks)."""
        u, sv, vt = torch.linalg.svd(w, full_matrices=False)
        keep = sv > floor
        return u[:, keep], sv[keep, None] * vt[keep]

    @staticmethod
    def _reorthogonalize(w, blocks):
        """w minus its components in every block of the basis, block after block (block modified Gram-Schmidt)."""
        for block in blocks:
            w = w - block @ (block.mT @ w)
        return w


# -- one linearized network ----------------------------------------------------------------------------------------
def gradient_descent_mse(k_train_train: torch.Tensor, y_train: torch.Tensor, learning_rate: float = 1.0,
                         diag_reg: float = 0.0, diag_reg_absolute_scale: bool = False) -> Callable:
    """The outputs of one linearized network trained by gradient descent on the MSE loss, for any kernel.

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
            k_td = _check_cross("k_test_train", k_test_train, n, y_train)
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
            k_td = _check_cross("k_test_train", k_test_train, y_train.shape[0], y_train)
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


# -- Gaussian process inference (infinite time) ----------------------------------------------------------------------
def gp_inference(k_train_train, y_train: torch.Tensor, diag_reg: float = 0.0,
                 diag_reg_absolute_scale: bool = False) -> Callable:
    """The NNGP posterior, the infinite-time NTK ensemble, or the NTK-GP (He et al. 2020), by Cholesky solves.

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
            return _check_cross(label, value, n, y_train)
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
    from .backends.budget import cache_bytes

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
