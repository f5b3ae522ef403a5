"""DNN2GP (Khan et al. 2019): the Laplace-GGN posterior of a trained network as a Gaussian process.

The network f(x; theta*) is linearized at its trained weights, with prior theta ~ N(0, I / delta) and the
generalized Gauss-Newton approximation of the likelihood's curvature: per training point the C x C block
Lambda_i = I / sigma^2 (Gaussian regression) or diag(p_i) - p_i p_i^T (softmax classification, the full block).
In weight space the posterior precision is A = sum_i J_i^T Lambda_i J_i + delta I; in function space the same
posterior is a GP with the finite NTK kernel K = J J^T / delta (docs/design.md, "DNN2GP"). Its quantities:

    predictive covariance   J* A^-1 J*^T
    log evidence            log p(y | theta*) - delta / 2 |theta*|^2 - 1/2 log det(I + L0^T J J^T L0 / scale)

with Lambda = L0 L0^T / s^2 and scale = delta s^2 (regression: L0 = I, s = sigma; softmax: L0 in closed form,
s = 1), so the singular softmax curvature needs no pseudo-inverse. At a maximum a posteriori theta* the evidence
equals the GP marginal likelihood of the pseudo-targets J theta* - Lambda^-1 r (regression).

Both depend on (delta, sigma) only through delta and scale, so one decomposition per fit serves every
marginal-likelihood step. forms.py has the three decompositions (function space N x N with N = n C, weight space
P x P, matrix-free operator); `mode="auto"` picks the cheapest that fits in memory.
"""
from __future__ import annotations

import math
from typing import Literal, Optional, Tuple, Union, get_args

import torch

from .._validation import PRECISION, STANDARD_DEVIATION, check_choice, check_positive
from .forms import FunctionSpaceForm, OperatorForm, WeightSpaceForm
from .linearize import EXPLICIT_BYTES, LinearizedNetwork

Likelihood = Literal["regression", "classification"]
Mode = Literal["auto", "explicit", "function_space", "weight_space", "operator"]
LIKELIHOODS: Tuple[str, ...] = get_args(Likelihood)
MODES: Tuple[str, ...] = get_args(Mode)
EXPLICIT_MAX_SIZE = 6000  # "auto" eigendecomposes an explicit N x N or P x P matrix only up to this side
Form = Union[FunctionSpaceForm, WeightSpaceForm, OperatorForm]


def softmax_ggn_root(probs: torch.Tensor) -> torch.Tensor:
    """L (n, C, C) with L L^T = diag(p) - p p^T for probabilities p (n, C): L = diag(sqrt p) - p sqrt(p)^T.

    (diag(s) - p s^T)(diag(s) - s p^T) = diag(p) - p p^T - p p^T + p (s^T s) p^T and s^T s = sum p = 1.
    """
    root = probs.sqrt()
    return torch.diag_embed(root) - probs.unsqueeze(-1) * root.unsqueeze(-2)


def _collect(X, y) -> Tuple[torch.Tensor, torch.Tensor]:
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


def _softmax_terms(outputs: torch.Tensor, y) -> Tuple[float, torch.Tensor]:
    """Classification: (log p(y | theta*), the GGN roots (n, C, C)) from logits (n, C) and labels y (n,)."""
    n, c = outputs.shape
    if c < 2:
        raise ValueError(f"classification needs one output per class (a softmax over C >= 2 logits), but the model "
                         f"has {c} output; for binary labels give the network 2 outputs")
    if not isinstance(y, torch.Tensor) or y.shape != (n,) or y.dtype.is_floating_point or y.dtype == torch.bool:
        raise ValueError(f"y must be integer class labels of shape ({n},) for classification, got "
                         f"{getattr(y, 'dtype', type(y).__name__)} of shape {tuple(getattr(y, 'shape', ()))}")
    if y.min() < 0 or y.max() >= c:
        raise ValueError(f"y must hold class labels in [0, {c - 1}] (the model has {c} outputs)")
    log_probs = torch.log_softmax(outputs, dim=-1)
    return log_probs.gather(-1, y.unsqueeze(-1)).sum().item(), softmax_ggn_root(log_probs.exp())


def _gaussian_terms(outputs: torch.Tensor, y) -> Tuple[torch.Tensor, float]:
    """Regression: (targets shaped like the outputs (n, C), the squared residual sum |y - f(X; theta*)|^2)."""
    n, c = outputs.shape
    if not isinstance(y, torch.Tensor) or not y.dtype.is_floating_point:
        raise ValueError("y must be a floating point tensor of regression targets")
    if y.dim() == 1 and c == 1:
        y = y.unsqueeze(-1)
    if y.shape != outputs.shape:
        raise ValueError(f"y must have shape {tuple(outputs.shape)} (or ({n},) for one output), the model's output "
                         f"shape, got {tuple(y.shape)}")
    if not torch.isfinite(y).all():
        raise ValueError("y contains NaN or infinite values")
    y = y.to(outputs.dtype)
    return y, (y - outputs).pow(2).sum().item()


def _positive_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


class DNN2GP:
    """A trained network's linearized Laplace-GGN posterior, as a GP with the finite NTK kernel.

    Args:
        model: a trained torch.nn.Module mapping inputs (n, ...) to outputs (n, C) (logits for classification).
        likelihood: "regression" (Gaussian, noise standard deviation sigma_noise) or "classification" (softmax,
            one output per class).
        prior_precision: delta of the prior N(0, I / delta) on every parameter with requires_grad (weight decay).
        sigma_noise: the regression noise's standard deviation sigma.
        mode: how the posterior is computed (forms.py), all giving the same numbers:
            "function_space" (N x N, N = n C) or "weight_space" (P x P, P parameters), both with the n x C x P
            Jacobian in memory; "explicit": the cheaper of these two; "operator": no Jacobian, products through
            Jacobian-vector products; "auto": explicit while the Jacobian fits in 1 GiB and min(N, P) <= 6000,
            else operator.
        chunk_size: rows per batched network evaluation.
        num_probes, lanczos_iterations: operator mode's stochastic Lanczos estimate of the log determinant.
        cg_tolerance, max_cg_iterations: operator mode's predictive solves.
        preconditioner_rank: operator mode's randomized Nystrom preconditioner (0: none).
        seed: operator mode's probes and preconditioner.

    Raises:
        ValueError: an unknown likelihood or mode, a non-positive prior_precision or sigma_noise, bad solver
            settings.
    """

    def __init__(self, model: torch.nn.Module, likelihood: Likelihood = "regression", prior_precision: float = 1.0,
                 sigma_noise: float = 1.0, mode: Mode = "auto", chunk_size: int = 1024, num_probes: int = 16,
                 lanczos_iterations: int = 64, cg_tolerance: float = 1e-10, max_cg_iterations: int = 1000,
                 preconditioner_rank: int = 64, seed: int = 0):
        self.model = model
        self.likelihood: str = check_choice("likelihood", likelihood, LIKELIHOODS)
        self.mode: str = check_choice("mode", mode, MODES)
        self.prior_precision = float(check_positive("prior_precision", prior_precision, PRECISION))
        self.sigma_noise = float(check_positive("sigma_noise", sigma_noise, STANDARD_DEVIATION))
        self.chunk_size = _positive_int("chunk_size", chunk_size)
        self.num_probes = _positive_int("num_probes", num_probes)
        self.lanczos_iterations = _positive_int("lanczos_iterations", lanczos_iterations)
        self.cg_tolerance = float(check_positive("cg_tolerance", cg_tolerance, "a relative residual"))
        self.max_cg_iterations = _positive_int("max_cg_iterations", max_cg_iterations)
        self.preconditioner_rank = _positive_int("preconditioner_rank", preconditioner_rank, minimum=0)
        self.seed = seed
        # Fitted state, set by fit().
        self.network: Optional[LinearizedNetwork] = None
        self.X: Optional[torch.Tensor] = None  # (n, ...) training inputs
        self.y: Optional[torch.Tensor] = None  # (n, C) regression targets or (n,) class labels
        self.num_outputs: Optional[int] = None  # C
        self.form: Optional[str] = None  # "function_space", "weight_space" or "operator"
        self._posterior: Optional[Form] = None
        self._log_likelihood: Optional[float] = None  # classification: log p(y | theta*)
        self._squared_residual: Optional[float] = None  # regression: |y - f(X; theta*)|^2
        self._theta_sq: Optional[float] = None  # |theta*|^2

    # -- fitting -----------------------------------------------------------------------------------------------
    def fit(self, X, y=None) -> DNN2GP:
        """Linearize the model at its current weights and decompose the posterior.

        Args:
            X: (n, ...) inputs, or a DataLoader of (x, y) batches (then y is None).
            y: (n,) or (n, C) real targets for regression, (n,) integer class labels for classification.

        Returns:
            self.

        Raises:
            ValueError / TypeError: inputs or targets of the wrong shape, dtype or values.
        """
        X, y = _collect(X, y)
        net = LinearizedNetwork(self.model, chunk_size=self.chunk_size)
        net.check_inputs(X, "X")
        outputs = net.outputs(X)
        root = None
        if self.likelihood == "classification":
            self._log_likelihood, root = _softmax_terms(outputs, y)
        else:
            y, self._squared_residual = _gaussian_terms(outputs, y)
        self.network, self.X, self.y, self.num_outputs = net, X, y, outputs.shape[1]
        self._theta_sq = sum(p.pow(2).sum() for p in net.params.values()).item()
        self.form = self._choose_form(X.shape[0] * self.num_outputs, net)
        if self.form == "operator":
            self._posterior = OperatorForm(net, X, root, self.num_outputs, self.num_probes, self.lanczos_iterations,
                                           self.cg_tolerance, self.max_cg_iterations, self.preconditioner_rank,
                                           self.seed)
        else:
            jl = net.jacobian(X)  # (n, C, P)
            if root is not None:
                jl = root.mT @ jl
            self._posterior = (WeightSpaceForm if self.form == "weight_space" else FunctionSpaceForm)(jl)
        return self

    def _choose_form(self, size: int, net: LinearizedNetwork) -> str:
        """The form for N = size outputs and the network's P parameters (see the class docstring)."""
        if self.mode in ("function_space", "weight_space", "operator"):
            return self.mode
        params = net.num_params
        jacobian_fits = size * params * net.dtype.itemsize <= EXPLICIT_BYTES
        if self.mode == "explicit" or (jacobian_fits and min(size, params) <= EXPLICIT_MAX_SIZE):
            return "weight_space" if params < size else "function_space"
        return "operator"

    @property
    def cg_info(self) -> Optional[dict]:
        """Operator form: iterations and relative residual of the last predictive solve (else None)."""
        return getattr(self._posterior, "cg_info", None)

    # -- evidence ----------------------------------------------------------------------------------------------
    def _scale(self, delta: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return delta * sigma.pow(2) if self.likelihood == "regression" else delta

    def log_marginal_likelihood(self, prior_precision=None, sigma_noise=None) -> torch.Tensor:
        """The Laplace-GGN log evidence at the fitted weights.

        Args:
            prior_precision, sigma_noise: values to evaluate at (default: the current ones); tensors that require
                grad give a differentiable result.

        Returns:
            A scalar tensor: log p(y | theta*) - delta/2 |theta*|^2 - 1/2 log det(I + L0^T J J^T L0 / scale).
        """
        self._check_fitted()
        dtype = self.network.dtype
        delta = torch.as_tensor(self.prior_precision if prior_precision is None else prior_precision, dtype=dtype)
        sigma = torch.as_tensor(self.sigma_noise if sigma_noise is None else sigma_noise, dtype=dtype)
        if self.likelihood == "regression":
            size = self.y.numel()
            log_lik = -0.5 * self._squared_residual / sigma.pow(2) - 0.5 * size * torch.log(2 * math.pi * sigma.pow(2))
        else:
            log_lik = torch.tensor(self._log_likelihood, dtype=dtype)
        return log_lik - 0.5 * delta * self._theta_sq - 0.5 * self._posterior.logdet(self._scale(delta, sigma))

    def optimize_marginal_likelihood(self, optimize_sigma: bool = True, max_iter: int = 100) -> dict:
        """Maximize the evidence over log delta (and log sigma for regression) with L-BFGS, the weights fixed at
        theta*: every step reuses the fitted decomposition.

        Args:
            optimize_sigma: also tune sigma_noise (regression).
            max_iter: L-BFGS iterations.

        Returns:
            {"prior_precision", "sigma_noise", "log_marginal_likelihood": [before, after]}; the attributes are
            set to the optimum.
        """
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
    def predict(self, X: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The linearized Laplace predictive at test inputs.

        Args:
            X: (m, ...) test inputs in the model's dtype.

        Returns:
            mean (m, C): the network's outputs f(X; theta*); cov (m, C, C): the predictive covariance of the
            outputs (logits for classification), J* A^-1 J*^T.
        """
        self._check_fitted()
        net = self.network
        net.check_inputs(X, "X")
        mean = net.outputs(X)
        dtype = net.dtype
        delta = torch.tensor(self.prior_precision, dtype=dtype)
        sigma = torch.tensor(self.sigma_noise if self.likelihood == "regression" else 1.0, dtype=dtype)
        scale = self._scale(delta, sigma)
        rows = net.jacobian_rows(X)
        if self.form == "operator":
            rows = max(1, min(rows, 64 // self.num_outputs))  # each test output is one CG right-hand side
        covs = [self._posterior.covariance(net.jacobian(X[a:a + rows]), delta, scale)
                for a in range(0, X.shape[0], rows)]
        return mean, torch.cat(covs)

    @torch.no_grad()
    def predict_proba(self, X: torch.Tensor, samples: int = 256, seed: int = 0) -> torch.Tensor:
        """Classification: class probabilities (m, C), the softmax averaged over `samples` predictive draws."""
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

    def _check_fitted(self) -> None:
        if self._posterior is None:
            raise RuntimeError("call fit(X, y) first")
