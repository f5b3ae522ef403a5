"""DNN2GP (Khan et al. 2019): the Laplace-GGN posterior of a trained network as a Gaussian process.

The network f(x; theta*) is linearized at its trained weights, with prior theta ~ N(0, I / delta) and the
generalized Gauss-Newton approximation of the likelihood's curvature: per training point the C x C block
Lambda_i = I / sigma^2 (Gaussian regression) or diag(p_i) - p_i p_i^T (softmax classification, the full block).
In weight space the posterior precision is A = sum_i J_i^T Lambda_i J_i + delta I; in function space the same
posterior is a GP with the finite NTK kernel K = J J^T / delta (DESIGN.md section 2.6). With Lambda = L L^T
(L_i = diag(sqrt p_i) - p_i sqrt(p_i)^T for the softmax, I / sigma for regression) everything below goes
through the well-conditioned N x N matrix B = I + L^T K L, N = n C, even where Lambda is singular:

    predictive covariance   J* A^-1 J*^T = K** - K*X L B^-1 L^T KX*
    log evidence            log p(y | theta*) - delta / 2 |theta*|^2 - 1/2 log det B

(the Laplace-GGN evidence; Woodbury and Sylvester turn P x P into N x N). At a maximum a posteriori theta*
the evidence equals the GP marginal likelihood of the pseudo-targets J theta* - Lambda^-1 r (regression).

B depends on delta and sigma only through one scale, B = I + M0 / (delta s^2) with M0 = L0^T J J^T L0
(s = sigma, L0 = I for regression; s = 1, L0 = L for classification), so M0 is decomposed once per fit and
marginal-likelihood tuning costs nothing per step:
- explicit mode: J (n, C, P) in memory and an eigendecomposition of M0 (small models, N up to a few thousand);
- operator mode: products with M0 through Jacobian-vector products (FiniteNTKOperator), log det B by stochastic
  Lanczos quadrature whose nodes and weights serve every (delta, sigma), and predictive covariances by
  conjugate gradients preconditioned with a randomized Nystrom approximation of M0 (also scale-free).
"""
from __future__ import annotations

import math
import warnings
from typing import Optional

import torch
from linear_operator.utils.lanczos import lanczos_tridiag, lanczos_tridiag_to_diag

from .._validation import check_positive_variance
from .kernel import EXPLICIT_BYTES, MODES
from .linearize import LinearizedNetwork

LIKELIHOODS = ("regression", "classification")
EXPLICIT_MAX_SIZE = 6000  # "auto" eigendecomposes the N x N matrix (N = n C) only up to this N


def softmax_ggn_root(probs: torch.Tensor) -> torch.Tensor:
    """L (n, C, C) with L L^T = diag(p) - p p^T for probabilities p (n, C): L = diag(sqrt p) - p sqrt(p)^T.

    (diag(s) - p s^T)(diag(s) - s p^T) = diag(p) - p p^T - p p^T + p (s^T s) p^T and s^T s = sum p = 1.
    """
    root = probs.sqrt()
    return torch.diag_embed(root) - probs.unsqueeze(-1) * root.unsqueeze(-2)


def nystrom_approximation(matmul, size: int, rank: int, dtype, device, generator):
    """Randomized Nystrom approximation M ~ U diag(lam) U^T of a PSD operator from one product with `rank`
    columns (Tropp et al. 2017, stabilized with a small shift): U (N, rank), lam (rank,) descending."""
    omega, _ = torch.linalg.qr(torch.randn(size, rank, generator=generator, dtype=dtype).to(device))
    y = matmul(omega)
    shift = torch.finfo(dtype).eps * size * y.norm()
    y = y + shift * omega
    chol = torch.linalg.cholesky(omega.mT @ y)
    b = torch.linalg.solve_triangular(chol, y.mT, upper=False).mT  # y chol^-T
    u, sigma, _ = torch.linalg.svd(b, full_matrices=False)
    return u, (sigma.pow(2) - shift).clamp_min(0)


def nystrom_preconditioner(u: torch.Tensor, lam: torch.Tensor, scale: float):
    """P^-1 for I + M / scale with M ~ U diag(lam) U^T (Frangella, Tropp and Udell 2023, randomized Nystrom
    preconditioning): (lam_r / scale + 1) U diag(1 / (lam / scale + 1)) U^T + (I - U U^T)."""
    top = lam / scale + 1.0
    weights = top[-1] / top - 1.0

    def apply(v):
        return v + u @ (weights.unsqueeze(-1) * (u.mT @ v))

    return apply


def conjugate_gradients(matmul, rhs: torch.Tensor, tolerance: float, max_iter: int, preconditioner=None):
    """Solve A x = rhs (N, t) for symmetric positive definite A given by matmul, column by column to a relative
    residual of tolerance, optionally preconditioned (preconditioner applies an approximation of A^-1);
    returns x and {"iterations", "relative_residual"} (the worst column).

    linear_operator's linear_cg stalls near 1e-6 relative error on these systems even in float64, which is too
    coarse for the predictive covariances; plain CG reaches 1e-12.
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
                      f"{relative:.2e} (tolerance {tolerance}); raise max_cg_iterations")
    return x, {"iterations": iterations, "relative_residual": relative}


def _collect(X, y):
    """Tensors, or a DataLoader / iterable of (x, y) batches -> (X, y)."""
    if isinstance(X, torch.Tensor):
        if y is None:
            raise ValueError("y is required when X is a tensor (pass fit(X, y), or a DataLoader of (x, y) batches)")
        return X, y
    if y is not None:
        raise ValueError("pass either fit(X, y) with tensors, or fit(loader) with a DataLoader of (x, y) batches")
    xs, ys = [], []
    for batch in X:
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise ValueError("the DataLoader must yield (x, y) batches")
        xs.append(batch[0])
        ys.append(batch[1])
    if not xs:
        raise ValueError("the DataLoader yielded no batches")
    return torch.cat(xs), torch.cat(ys)


class DNN2GP:
    """model: a trained torch.nn.Module, inputs (n, ...) -> outputs (n, C) (logits for classification);
    likelihood: "regression" (Gaussian, noise standard deviation sigma_noise) or "classification" (softmax);
    prior_precision: delta of the prior N(0, I / delta) on all parameters with requires_grad (weight decay);
    mode: "explicit", "operator" or "auto" (explicit while the n x C x P Jacobian fits in 1 GiB and n C <= 6000).
    Operator mode: num_probes and lanczos_iterations set the log-determinant estimate; cg_tolerance,
    max_cg_iterations and preconditioner_rank (a randomized Nystrom preconditioner built from one product with
    that many columns at fit time; 0 for none) the predictive solves.
    """

    def __init__(self, model: torch.nn.Module, likelihood: str = "regression", prior_precision: float = 1.0,
                 sigma_noise: float = 1.0, mode: str = "auto", chunk_size: int = 1024, num_probes: int = 16,
                 lanczos_iterations: int = 64, cg_tolerance: float = 1e-10, max_cg_iterations: int = 1000,
                 preconditioner_rank: int = 64, seed: int = 0):
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.model = model
        self.likelihood = likelihood
        self.prior_precision = float(check_positive_variance("prior_precision", prior_precision))
        self.sigma_noise = float(check_positive_variance("sigma_noise", sigma_noise))
        self.mode = mode
        self.chunk_size = chunk_size
        self.num_probes, self.lanczos_iterations = num_probes, lanczos_iterations
        self.cg_tolerance, self.max_cg_iterations = cg_tolerance, max_cg_iterations
        self.preconditioner_rank = preconditioner_rank
        self.seed = seed
        self.network: Optional[LinearizedNetwork] = None
        self.cg_info: Optional[dict] = None  # operator mode: iterations and residual of the last predictive solve

    # -- fitting -----------------------------------------------------------------------------------------------
    def fit(self, X, y=None) -> "DNN2GP":
        """X (n, ...) and y, or a DataLoader of (x, y) batches. y: (n,) or (n, C) real targets for regression,
        (n,) integer class labels for classification."""
        X, y = _collect(X, y)
        self.network = net = LinearizedNetwork(self.model, chunk_size=self.chunk_size)
        net.check_inputs(X, "X")
        outputs = net.outputs(X)
        n, c = outputs.shape
        self.X, self.num_outputs = X, c
        self._theta_sq = sum(p.pow(2).sum() for p in net.params.values()).item()
        if self.likelihood == "classification":
            if not isinstance(y, torch.Tensor) or y.shape != (n,) or y.dtype.is_floating_point or y.dtype == torch.bool:
                raise ValueError(f"y must be integer class labels of shape ({n},) for classification, got "
                                 f"{getattr(y, 'dtype', type(y).__name__)} of shape {tuple(getattr(y, 'shape', ()))}")
            if y.min() < 0 or y.max() >= c:
                raise ValueError(f"y must hold class labels in [0, {c - 1}] (the model has {c} outputs)")
            log_probs = torch.log_softmax(outputs, dim=-1)
            self._log_likelihood = log_probs.gather(-1, y.unsqueeze(-1)).sum().item()
            self._root = softmax_ggn_root(log_probs.exp())  # (n, C, C)
        else:
            if not isinstance(y, torch.Tensor) or not y.dtype.is_floating_point:
                raise ValueError("y must be a floating point tensor of regression targets")
            if y.dim() == 1 and c == 1:
                y = y.unsqueeze(-1)
            if y.shape != outputs.shape:
                raise ValueError(f"y must have shape {tuple(outputs.shape)} (or ({n},) for one output), the model's "
                                 f"output shape, got {tuple(y.shape)}")
            if not torch.isfinite(y).all():
                raise ValueError("y contains NaN or infinite values")
            y = y.to(outputs.dtype)
            self._squared_residual = (y - outputs).pow(2).sum().item()
            self._root = None
        self.y = y
        explicit = self.mode == "explicit" or (
            self.mode == "auto" and n * c * net.num_params * net.dtype.itemsize <= EXPLICIT_BYTES
            and n * c <= EXPLICIT_MAX_SIZE)
        self.explicit = explicit
        if explicit:
            self._JL = self._apply_root_to_rows(net.jacobian(X))  # L0^T J per point, (n, C, P)
            flat = self._JL.flatten(0, 1)
            mu, self._U = torch.linalg.eigh(flat @ flat.mT)
            self._mu = mu.clamp_min(0)
        else:
            self._slq_nodes, self._slq_weights = self._lanczos_quadrature()
            size = n * c
            rank = min(self.preconditioner_rank, size)
            generator = torch.Generator().manual_seed(self.seed + 1)
            self._nystrom = (nystrom_approximation(self._m0_matmul, size, rank, net.dtype, X.device, generator)
                             if rank > 0 else None)
        return self

    def _apply_root_to_rows(self, rows: torch.Tensor, transpose: bool = True) -> torch.Tensor:
        """L_i^T R_i (or L_i R_i) per training point for R (n, C, k): (n, C, k); identity for regression."""
        if self._root is None:
            return rows
        return (self._root.mT if transpose else self._root) @ rows

    def _apply_root_to_stack(self, stacked: torch.Tensor, transpose: bool = True) -> torch.Tensor:
        """The same for t stacked training-set vectors (t, n, C)."""
        return self._apply_root_to_rows(stacked.permute(1, 2, 0), transpose).permute(2, 0, 1)

    def _m0_matmul(self, v: torch.Tensor) -> torch.Tensor:
        """M0 v = L0^T J J^T L0 v for v (N, t), through one VJP and one JVP."""
        n, c, t = self.X.shape[0], self.num_outputs, v.shape[-1]
        u = v.mT.reshape(t, n, c)
        u = self._apply_root_to_stack(u, transpose=False)  # L_i u_i
        ku = self._apply_root_to_stack(self.network.jvp(self.X, self.network.vjp(self.X, u)))  # (t, n, C)
        return ku.reshape(t, n * c).mT

    def _lanczos_quadrature(self):
        """Stochastic Lanczos quadrature for tr log(I + M0 / scale) (Ubaru et al. 2017): Rademacher probes,
        one Lanczos run each; the Ritz values and squared first components work for any scale."""
        size = self.X.shape[0] * self.num_outputs
        generator = torch.Generator().manual_seed(self.seed)
        probes = (torch.randint(0, 2, (size, self.num_probes), generator=generator) * 2 - 1).to(self.network.dtype)
        _, tridiag = lanczos_tridiag(self._m0_matmul, self.lanczos_iterations, dtype=self.network.dtype,
                                     device=self.X.device, matrix_shape=(size, size),
                                     init_vecs=probes.to(self.X.device), num_init_vecs=self.num_probes)
        if tridiag.dim() == 2:
            tridiag = tridiag.unsqueeze(0)
        nodes, vectors = lanczos_tridiag_to_diag(tridiag)
        return nodes.clamp_min(0), vectors[..., 0, :].pow(2)

    # -- evidence ----------------------------------------------------------------------------------------------
    def _scale(self, delta, sigma):
        return delta * sigma.pow(2) if self.likelihood == "regression" else delta

    def _logdet(self, scale: torch.Tensor) -> torch.Tensor:
        if self.explicit:
            return torch.log1p(self._mu / scale).sum()
        size = self.X.shape[0] * self.num_outputs
        return size * (self._slq_weights * torch.log1p(self._slq_nodes / scale)).sum(-1).mean()

    def log_marginal_likelihood(self, prior_precision=None, sigma_noise=None) -> torch.Tensor:
        """The Laplace-GGN log evidence log p(y | theta*) - delta/2 |theta*|^2 - 1/2 log det(I + L^T K L) at the
        fitted weights; differentiable in prior_precision / sigma_noise when those are tensors."""
        self._check_fitted()
        dtype = self.network.dtype
        delta = torch.as_tensor(self.prior_precision if prior_precision is None else prior_precision, dtype=dtype)
        sigma = torch.as_tensor(self.sigma_noise if sigma_noise is None else sigma_noise, dtype=dtype)
        if self.likelihood == "regression":
            size = self.y.numel()
            log_lik = -0.5 * self._squared_residual / sigma.pow(2) - 0.5 * size * torch.log(2 * math.pi * sigma.pow(2))
        else:
            log_lik = torch.tensor(self._log_likelihood, dtype=dtype)
        return log_lik - 0.5 * delta * self._theta_sq - 0.5 * self._logdet(self._scale(delta, sigma))

    def optimize_marginal_likelihood(self, optimize_sigma: bool = True, max_iter: int = 100) -> dict:
        """Maximize the evidence over log delta (and log sigma for regression) with L-BFGS, the weights fixed
        at theta* (each step reuses the fitted decomposition). Sets prior_precision / sigma_noise and returns
        them with the evidence before and after."""
        self._check_fitted()
        dtype = self.network.dtype
        log_delta = torch.tensor(math.log(self.prior_precision), dtype=dtype, requires_grad=True)
        log_sigma = torch.tensor(math.log(self.sigma_noise), dtype=dtype,
                                 requires_grad=optimize_sigma and self.likelihood == "regression")
        variables = [v for v in (log_delta, log_sigma) if v.requires_grad]
        before = self.log_marginal_likelihood().item()
        optimizer = torch.optim.LBFGS(variables, max_iter=max_iter, line_search_fn="strong_wolfe",
                                      tolerance_grad=1e-10, tolerance_change=1e-14)

        def closure():
            optimizer.zero_grad()
            loss = -self.log_marginal_likelihood(log_delta.exp(), log_sigma.exp())
            loss.backward()
            return loss

        optimizer.step(closure)
        self.prior_precision = log_delta.exp().item()
        self.sigma_noise = log_sigma.exp().item()
        return {"prior_precision": self.prior_precision, "sigma_noise": self.sigma_noise,
                "log_marginal_likelihood": [before, self.log_marginal_likelihood().item()]}

    # -- prediction --------------------------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, X: torch.Tensor):
        """mean (m, C): the network's outputs f(X; theta*); cov (m, C, C): the linearized Laplace predictive
        covariance of the outputs (logits for classification) at each test point."""
        self._check_fitted()
        net = self.network
        net.check_inputs(X, "X")
        mean = net.outputs(X)
        dtype = net.dtype
        delta = torch.tensor(self.prior_precision, dtype=dtype)
        sigma = torch.tensor(self.sigma_noise if self.likelihood == "regression" else 1.0, dtype=dtype)
        scale = self._scale(delta, sigma)
        c, rows = self.num_outputs, net.jacobian_rows(X)
        if not self.explicit:
            rows = max(1, min(rows, 64 // c))  # each test output is one CG right-hand side
        covs = []
        for a in range(0, X.shape[0], rows):
            jac = net.jacobian(X[a:a + rows])  # (b, C, P)
            prior = jac @ jac.mT / delta
            if self.explicit:
                g = (jac.flatten(0, 1) @ self._JL.flatten(0, 1).mT @ self._U).reshape(jac.shape[0], c, -1)
                shrink = 1.0 / (1.0 + self._mu / scale)
                reduction = torch.einsum("acn,n,adn->acd", g, shrink, g)
            else:
                # R = L0^T J X* (N, b C): one JVP per test output, then B^-1 R by conjugate gradients.
                cross = self._apply_root_to_stack(net.jvp(self.X, net.unflatten(jac.flatten(0, 1))))  # (b C, n, C)
                rhs = cross.reshape(cross.shape[0], -1).mT
                preconditioner = None if self._nystrom is None else nystrom_preconditioner(*self._nystrom, scale)
                solve, self.cg_info = conjugate_gradients(lambda v: v + self._m0_matmul(v) / scale, rhs,
                                                          self.cg_tolerance, self.max_cg_iterations, preconditioner)
                reduction = torch.einsum("nac,nad->acd", rhs.reshape(-1, jac.shape[0], c),
                                         solve.reshape(-1, jac.shape[0], c))
            covs.append(prior - reduction / (delta * scale))
        return mean, torch.cat(covs)

    @torch.no_grad()
    def predict_proba(self, X: torch.Tensor, samples: int = 256, seed: int = 0) -> torch.Tensor:
        """Classification: softmax of the logits averaged over `samples` draws from the predictive (m, C)."""
        if self.likelihood != "classification":
            raise ValueError("predict_proba is for likelihood='classification'")
        mean, cov = self.predict(X)
        values, vectors = torch.linalg.eigh(cov)  # a square root that tolerates rounding-level negative values
        root = vectors * values.clamp_min(0).sqrt().unsqueeze(-2)
        generator = torch.Generator().manual_seed(seed)
        noise = torch.randn(samples, *mean.shape, generator=generator, dtype=mean.dtype).to(mean.device)
        logits = mean + (root @ noise.unsqueeze(-1)).squeeze(-1)
        return torch.softmax(logits, dim=-1).mean(0)

    # -- function-space view -----------------------------------------------------------------------------------
    @torch.no_grad()
    def pseudo_targets(self) -> torch.Tensor:
        """Regression: y~ = J theta* - Lambda^-1 r = J theta* + y - f (n, C), the targets of the GP with kernel
        J J^T / delta and noise sigma^2 whose posterior is the DNN2GP posterior."""
        self._check_fitted()
        if self.likelihood != "regression":
            raise ValueError("pseudo-targets need an invertible Lambda: likelihood='regression' only")
        net = self.network
        j_theta = net.jvp(self.X, {k: v.unsqueeze(0) for k, v in net.params.items()})[0]
        return j_theta + self.y - net.outputs(self.X)

    def _check_fitted(self):
        if self.network is None:
            raise RuntimeError("call fit(X, y) first")
