"""The Krylov solver's matrix functions: block Lanczos through a kernel's products, runs kept between calls."""
from __future__ import annotations

from typing import Callable, Optional

import torch

from .common import SINGULAR, _phi
from .spectral import _Eigen


def _resolved_or_raise(evals: torch.Tensor) -> None:
    """ValueError (SINGULAR) when the smallest of a symmetric PSD matrix's (Ritz) values is within rounding of zero:
    below 10 eps of the largest. Ritz values of a Krylov space lie at or above the smallest eigenvalue, so a small
    one proves the kernel singular to working precision; 1 / lambda there would amplify rounding (float32 Lanczos
    once returned means 3x too large and different outputs for duplicated training points)."""
    top = evals.abs().max()
    if not bool(evals.min() > 10 * torch.finfo(evals.dtype).eps * top):
        raise ValueError(SINGULAR)


def _orthonormal(w, floor):
    """(q (n, p), r (p, c)) with w = q r, q orthonormal, dropping directions whose singular value is below floor (the
    SVD keeps this exact for rank-deficient blocks)."""
    u, sv, vt = torch.linalg.svd(w, full_matrices=False)
    keep = sv > floor
    return u[:, keep], sv[keep, None] * vt[keep]


def _reorthogonalize(w, blocks):
    """w minus its components in every block of the basis, block after block (block modified Gram-Schmidt)."""
    for block in blocks:
        w = w - block @ (block.mT @ w)
    return w


class _KrylovRun:
    """One block Lanczos run from the columns V (n, c), kept between requests: its orthonormal basis Q (a list of
    blocks), the block tridiagonal T = Q^T A Q and V's coordinates in Q. A request for other times reuses the space
    and extends it only where the result has not converged for them (see _Krylov)."""

    def __init__(self, matmul, v: torch.Tensor, normalization: int):
        self.matmul, self.v, self.normalization = matmul, v, normalization
        n = v.shape[0]
        self.eps = torch.finfo(v.dtype).eps
        self.scale = v.norm().clamp_min(torch.finfo(v.dtype).tiny)
        # Deflation floors at rounding level (10 eps of the block's, or A's, scale): an n eps floor dropped real
        # directions in float32 and gave answers 150 % off.
        q, self.r = _orthonormal(v / self.scale, 10 * self.eps)  # r (p, c): V = scale Q_1 r
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
        w = _reorthogonalize(w, self.blocks)
        if bool((w.norm(dim=0) < 0.7 * before).any()):
            w = _reorthogonalize(w, self.blocks)
        self.steps += 1
        q_next, b = _orthonormal(w, 10 * self.eps * max(self.norm_a, 1e-300))
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

    def solve(self, times, tol: float, forms: bool = False, max_steps: Optional[int] = None) -> torch.Tensor:
        """(T, n, c): phi_t(A) V for times (T, 1), extending the space until the result changes by less than tol
        between checks, for every time and column, or the space is exhausted."""
        tol = max(tol, 100 * self.eps)  # float32 cannot resolve changes of 1e-10: stop at its rounding level
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
            kept = [_KrylovRun(self.matmul, v[:, s:s + group], self.normalization) for s in starts]
        tol = self.tol if tol is None else tol
        out = torch.cat([run.solve(times, tol, forms, self.max_steps) for run in kept], dim=-1) if kept else \
            v.new_zeros(times.shape[0], self.n, 0)
        self.steps_used = max([self.steps_used] + [run.steps for run in kept])
        if key is not None:
            self.runs.pop((key, forms), None)
            if sum(run.nbytes for runs in self.runs.values() for run in runs) + sum(r.nbytes for r in kept) <= \
                    self.keep_bytes:
                self.runs[(key, forms)] = kept
        return out

