"""Three ways to compute the same linearized Laplace-GGN posterior, chosen by DNN2GP from the problem's shape.

Notation (Khan et al. 2019; see docs/design.md, "DNN2GP"): n training points, C outputs, N = n C, P parameters,
J (N, P) the training Jacobian, Lambda = L0 L0^T / s^2 the per-point GGN curvature (regression: L0 = I, s = sigma;
softmax: L0_i = diag(sqrt p_i) - p_i sqrt(p_i)^T, s = 1), delta the prior precision, scale = delta s^2 and
JL = L0^T J (N, P). The posterior precision is A = J^T Lambda J + delta I = delta (I + JL^T JL / scale).

Every form gives the two quantities DNN2GP needs, for any (delta, scale) after one decomposition:
- logdet(scale): log det(I_N + JL JL^T / scale) = log det(I_P + JL^T JL / scale) (Sylvester);
- covariance(jac, delta, scale): J* A^-1 J*^T, the predictive covariance of the outputs at test points.

- FunctionSpaceForm: eigendecomposition of the N x N matrix M0 = JL JL^T. O(N^2 P + N^3).
- WeightSpaceForm: eigendecomposition of the P x P matrix G = JL^T JL. O(N P^2 + P^3), and no stored Jacobian.
- OperatorForm: no Jacobian at all; products with M0 through Jacobian-vector products, log det by stochastic
  Lanczos quadrature, covariances by preconditioned conjugate gradients.
"""
from __future__ import annotations

from typing import Optional

import torch

from .linearize import LinearizedNetwork
from .solvers import conjugate_gradients, lanczos_quadrature, nystrom_approximation, nystrom_preconditioner


def apply_root(root: Optional[torch.Tensor], rows: torch.Tensor, transpose: bool = True) -> torch.Tensor:
    """L0_i^T R_i (or L0_i R_i) per training point.

    Args:
        root: (n, C, C) per-point roots L0_i, or None for the identity (regression).
        rows: (n, C, k) per-point blocks.
        transpose: apply L0^T (True) or L0.

    Returns:
        (n, C, k).
    """
    if root is None:
        return rows
    return (root.mT if transpose else root) @ rows


def apply_root_to_stack(root: Optional[torch.Tensor], stacked: torch.Tensor, transpose: bool = True) -> torch.Tensor:
    """apply_root for t stacked training-set vectors (t, n, C): (t, n, C)."""
    return apply_root(root, stacked.permute(1, 2, 0), transpose).permute(2, 0, 1)


class FunctionSpaceForm:
    """The N x N form: M0 = JL JL^T = U diag(mu) U^T.

    Args:
        jl: (n, C, P) rooted training Jacobian L0^T J.
    """

    name = "function_space"

    def __init__(self, jl: torch.Tensor):
        self.jl = jl.flatten(0, 1)  # (N, P)
        mu, self.basis = torch.linalg.eigh(self.jl @ self.jl.mT)
        self.spectrum = mu.clamp_min(0)

    def logdet(self, scale: torch.Tensor) -> torch.Tensor:
        return torch.log1p(self.spectrum / scale).sum()

    def covariance(self, jac: torch.Tensor, delta: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """jac (b, C, P) -> (b, C, C): K** - K*X L0 (I + M0 / scale)^-1 L0^T KX* / scale."""
        b, c = jac.shape[:2]
        projected = (jac.flatten(0, 1) @ self.jl.mT @ self.basis).reshape(b, c, -1)
        shrink = 1.0 / (1.0 + self.spectrum / scale)
        reduction = torch.einsum("acn,n,adn->acd", projected, shrink, projected)
        return jac @ jac.mT / delta - reduction / (delta * scale)


class WeightSpaceForm:
    """The P x P form: G = JL^T JL = V diag(g) V^T, so that A = delta V diag(1 + g / scale) V^T.

    Args:
        jl: (n, C, P) rooted training Jacobian L0^T J; not kept.
    """

    name = "weight_space"

    def __init__(self, jl: torch.Tensor):
        flat = jl.flatten(0, 1)
        g, self.basis = torch.linalg.eigh(flat.mT @ flat)
        self.spectrum = g.clamp_min(0)

    def logdet(self, scale: torch.Tensor) -> torch.Tensor:
        return torch.log1p(self.spectrum / scale).sum()

    def covariance(self, jac: torch.Tensor, delta: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """jac (b, C, P) -> (b, C, C): J* A^-1 J*^T = (J* V) diag(1 / (1 + g / scale)) (J* V)^T / delta."""
        projected = jac @ self.basis  # (b, C, P)
        shrink = 1.0 / (1.0 + self.spectrum / scale)
        return torch.einsum("acp,p,adp->acd", projected, shrink, projected) / delta


class OperatorForm:
    """The matrix-free form: products with M0 = L0^T J J^T L0 through one vector-Jacobian and one Jacobian-vector
    product, never a Jacobian of the training set.

    Args:
        network: the linearized network.
        x: (n, ...) training inputs.
        root: (n, C, C) per-point roots L0_i, or None (regression).
        num_outputs: C.
        num_probes, lanczos_iterations: the stochastic Lanczos quadrature of log det.
        cg_tolerance, max_cg_iterations: the predictive solves.
        preconditioner_rank: columns of the randomized Nystrom preconditioner (0: none).
        seed: for the probes and the Nystrom test matrix.
    """

    name = "operator"

    def __init__(self, network: LinearizedNetwork, x: torch.Tensor, root: Optional[torch.Tensor], num_outputs: int,
                 num_probes: int, lanczos_iterations: int, cg_tolerance: float, max_cg_iterations: int,
                 preconditioner_rank: int, seed: int):
        self.network, self.x, self.root, self.num_outputs = network, x, root, num_outputs
        self.cg_tolerance, self.max_cg_iterations = cg_tolerance, max_cg_iterations
        self.size = x.shape[0] * num_outputs
        dtype, device = network.dtype, x.device
        self.nodes, self.weights = lanczos_quadrature(self.m0_matmul, self.size, num_probes, lanczos_iterations,
                                                      dtype, device, torch.Generator().manual_seed(seed))
        rank = min(preconditioner_rank, self.size)
        self.nystrom = (nystrom_approximation(self.m0_matmul, self.size, rank, dtype, device,
                                              torch.Generator().manual_seed(seed + 1)) if rank > 0 else None)
        self.cg_info: Optional[dict] = None  # iterations and residual of the last predictive solve

    def m0_matmul(self, v: torch.Tensor) -> torch.Tensor:
        """M0 v for v (N, t): (N, t)."""
        n, c, t = self.x.shape[0], self.num_outputs, v.shape[-1]
        u = apply_root_to_stack(self.root, v.mT.reshape(t, n, c), transpose=False)  # L0_i u_i
        products = self.network.jvp(self.x, self.network.vjp(self.x, u))  # J J^T L0 u, (t, n, C)
        return apply_root_to_stack(self.root, products).reshape(t, n * c).mT

    def logdet(self, scale: torch.Tensor) -> torch.Tensor:
        return self.size * (self.weights * torch.log1p(self.nodes / scale)).sum(-1).mean()

    def covariance(self, jac: torch.Tensor, delta: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """jac (b, C, P) -> (b, C, C), with one CG right-hand side per test output."""
        b, c = jac.shape[:2]
        net = self.network
        # R = L0^T J X* (N, b C): one JVP per test output, then (I + M0 / scale)^-1 R by conjugate gradients.
        cross = apply_root_to_stack(self.root, net.jvp(self.x, net.unflatten(jac.flatten(0, 1))))  # (b C, n, C)
        rhs = cross.reshape(cross.shape[0], -1).mT
        preconditioner = None if self.nystrom is None else nystrom_preconditioner(*self.nystrom, scale)
        solve, self.cg_info = conjugate_gradients(lambda v: v + self.m0_matmul(v) / scale, rhs, self.cg_tolerance,
                                                  self.max_cg_iterations, preconditioner)
        reduction = torch.einsum("nac,nad->acd", rhs.reshape(-1, b, c), solve.reshape(-1, b, c))
        return jac @ jac.mT / delta - reduction / (delta * scale)
