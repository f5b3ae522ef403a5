"""Matrix-free solvers for symmetric positive (semi)definite operators given only by their products.

Used by DNN2GP's operator form, where the N x N matrix is never formed:
- randomized Nystrom approximation and the preconditioner built from it (Tropp et al. 2017; Frangella, Tropp and
  Udell 2023);
- preconditioned conjugate gradients to a relative residual;
- stochastic Lanczos quadrature for tr log(I + M / scale) at any scale from one set of Lanczos runs (Ubaru,
  Chen and Saad 2017).
"""
from __future__ import annotations

import warnings
from typing import Callable, Optional, Tuple

import torch
from linear_operator.utils.lanczos import lanczos_tridiag, lanczos_tridiag_to_diag

Matmul = Callable[[torch.Tensor], torch.Tensor]


def nystrom_approximation(matmul: Matmul, size: int, rank: int, dtype: torch.dtype, device,
                          generator: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor]:
    """Randomized Nystrom approximation M ~ U diag(lam) U^T of a PSD operator from one product with `rank` columns.

    Args:
        matmul: v (size, rank) -> M v.
        size: N, the operator's side.
        rank: number of random columns (the approximation's rank).
        dtype, device: of the test matrix.
        generator: CPU generator for the Gaussian test matrix.

    Returns:
        U (N, rank) with orthonormal columns, lam (rank,) descending and >= 0. Stabilized with a small shift
        (Tropp et al. 2017, Algorithm 3).
    """
    omega, _ = torch.linalg.qr(torch.randn(size, rank, generator=generator, dtype=dtype).to(device))
    y = matmul(omega)
    shift = torch.finfo(dtype).eps * size * y.norm()
    y = y + shift * omega
    chol = torch.linalg.cholesky(omega.mT @ y)
    b = torch.linalg.solve_triangular(chol, y.mT, upper=False).mT  # y chol^-T
    u, sigma, _ = torch.linalg.svd(b, full_matrices=False)
    return u, (sigma.pow(2) - shift).clamp_min(0)


def nystrom_preconditioner(u: torch.Tensor, lam: torch.Tensor, scale: float) -> Matmul:
    """An approximate inverse of I + M / scale from M ~ U diag(lam) U^T (Frangella, Tropp and Udell 2023).

    Args:
        u, lam: a Nystrom approximation (nystrom_approximation).
        scale: the positive scale dividing M.

    Returns:
        v (N, t) -> P^-1 v = (lam_r / scale + 1) U diag(1 / (lam / scale + 1)) U^T v + (I - U U^T) v.
    """
    top = lam / scale + 1.0
    weights = top[-1] / top - 1.0

    def apply(v: torch.Tensor) -> torch.Tensor:
        return v + u @ (weights.unsqueeze(-1) * (u.mT @ v))

    return apply


def conjugate_gradients(matmul: Matmul, rhs: torch.Tensor, tolerance: float, max_iter: int,
                        preconditioner: Optional[Matmul] = None) -> Tuple[torch.Tensor, dict]:
    """Solve A x = rhs for a symmetric positive definite A given by its products, column by column.

    linear_operator's linear_cg stalls near 1e-6 relative error on DNN2GP's systems even in float64, which is too
    coarse for predictive covariances; this plain (optionally preconditioned) CG reaches 1e-12.

    Args:
        matmul: v (N, t) -> A v.
        rhs: (N, t) right-hand sides.
        tolerance: stop when every column's residual norm is below tolerance x its right-hand side's norm.
        max_iter: at most this many iterations (a warning says so if the tolerance was not reached).
        preconditioner: v -> an approximation of A^-1 v, or None.

    Returns:
        x (N, t), and {"iterations": int, "relative_residual": float (the worst column)}.
    """
    precondition = preconditioner or (lambda v: v)
    tiny = torch.finfo(rhs.dtype).tiny
    x = torch.zeros_like(rhs)
    residual = rhs.clone()
    z = precondition(residual)
    direction = z.clone()
    rz = (residual * z).sum(0)
    target = tolerance * rhs.norm(dim=0)
    iterations = 0
    for iterations in range(max_iter + 1):
        if (residual.norm(dim=0) <= target).all() or iterations == max_iter:
            break
        a_dir = matmul(direction)
        step = rz / (direction * a_dir).sum(0).clamp_min(tiny)
        x += step * direction
        residual -= step * a_dir
        z = precondition(residual)
        rz_new = (residual * z).sum(0)
        direction = z + (rz_new / rz.clamp_min(tiny)) * direction
        rz = rz_new
    relative = (residual.norm(dim=0) / rhs.norm(dim=0).clamp_min(tiny)).max().item()
    if relative > tolerance:
        warnings.warn(f"conjugate gradients stopped after {max_iter} iterations at relative residual "
                      f"{relative:.2e} (tolerance {tolerance}); raise max_cg_iterations", stacklevel=3)
    return x, {"iterations": iterations, "relative_residual": relative}


def lanczos_quadrature(matmul: Matmul, size: int, num_probes: int, iterations: int, dtype: torch.dtype, device,
                       generator: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor]:
    """Stochastic Lanczos quadrature nodes and weights for spectral sums of a PSD operator M.

    tr f(M) ~ size x mean over probes of sum_k weights[p, k] f(nodes[p, k]) for any f: with f(t) = log(1 + t / s)
    one set of Lanczos runs serves every scale s.

    Args:
        matmul: v (size, t) -> M v.
        size: N, the operator's side.
        num_probes: Rademacher probe vectors (the estimate's variance falls like 1 / num_probes).
        iterations: Lanczos steps per probe.
        dtype, device: of the probes.
        generator: CPU generator for the probes.

    Returns:
        nodes (num_probes, k) >= 0 (Ritz values) and weights (num_probes, k) (squared first components).
    """
    probes = (torch.randint(0, 2, (size, num_probes), generator=generator) * 2 - 1).to(dtype)
    _, tridiag = lanczos_tridiag(matmul, iterations, dtype=dtype, device=device, matrix_shape=(size, size),
                                 init_vecs=probes.to(device), num_init_vecs=num_probes)
    if tridiag.dim() == 2:
        tridiag = tridiag.unsqueeze(0)
    nodes, vectors = lanczos_tridiag_to_diag(tridiag)
    return nodes.clamp_min(0), vectors[..., 0, :].pow(2)
