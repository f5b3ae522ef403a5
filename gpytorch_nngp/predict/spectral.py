"""The exact solver's matrix functions: one spectral decomposition of a training kernel for finite times, a
Cholesky factor for infinite time."""
from __future__ import annotations

from typing import Optional

import torch

from .common import _cholesky, _phi

TRIDIAGONAL_MIN_POINTS = 512  # on the CPU, _Eigen tridiagonalizes from this size up (see _Eigen)


class _Eigen:
    """One exact spectral decomposition of a (regularized) training kernel A = V diag(l) V^T, and the matrix
    functions V diag(w) V^T v built on it.

    On the CPU from TRIDIAGONAL_MIN_POINTS up, V is never formed: A is reduced once to a tridiagonal matrix
    A = Q T Q^T by Householder reflections (LAPACK sytrd, in place), T = Z diag(l) Z^T is solved by divide and
    conquer (stevd), and V w = Q (Z w) is applied through the stored reflectors (ormqr), O(n^2) per column. This is
    syevd without its most expensive stages (the n x n back-transformation of the eigenvectors), about half of
    torch.linalg.eigh's time on a CPU (docs/guide/benchmarks.md). Elsewhere (GPU, small n) torch.linalg.eigh.
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
