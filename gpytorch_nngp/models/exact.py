"""Exact GP classification as in the NNGP paper (Lee et al. 2018, section 3 and Eq. 4).

Classification is treated as regression on one-hot targets shifted to zero mean (-0.1 / 0.9). The C outputs are
independent GPs that share one kernel, so one Cholesky factor of K_DD + noise I serves all C right-hand sides.
The predicted class is the argmax of the posterior mean. Every output has the same predictive variance
k(x, x) - k_xD (K_DD + noise I)^{-1} k_Dx, because they share the kernel and the inputs.

The hyperparameters (weight_var, bias_var, noise) can be learned by maximizing the joint marginal likelihood
of the C outputs, sum_c log N(t_c | 0, K + noise I), instead of the paper's grid search.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from tqdm.auto import tqdm

from .._validation import VARIANCE, check_count, check_positive, check_training_data


def shifted_one_hot(y: torch.Tensor, num_classes: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The paper's regression targets: one-hot rows (n, C) of labels y (n,), minus 1 / C (-0.1 / 0.9 for C = 10)."""
    return torch.nn.functional.one_hot(y, num_classes).to(dtype) - 1.0 / num_classes


class ExactNNGPClassifier:
    """The NNGP paper's classifier: C independent GP regressions on shifted one-hot targets, one kernel.

    Args:
        kernel: any GPyTorch kernel (NNGPKernel, NTKKernel, ScaleKernel(...)).
        num_classes: C.
        noise: observation variance added to the kernel diagonal, or None for the paper's relative jitter
            (relative_jitter x mean of diag K, raised x100 until the Cholesky factorization succeeds).
        relative_jitter: see noise.

    Raises:
        ValueError: noise given and not finite and > 0, relative_jitter not finite and > 0, num_classes < 2.
    """

    def __init__(self, kernel, num_classes: int = 10, noise: Optional[float] = None, relative_jitter: float = 1e-10):
        if noise is not None:
            check_positive("noise", noise, VARIANCE, "or None for the paper's relative jitter")
        check_positive("relative_jitter", relative_jitter, "a fraction of the mean prior variance added to the "
                       "diagonal")
        self.kernel = kernel
        self.num_classes = check_count("num_classes", num_classes, 2)
        self.relative_jitter = float(relative_jitter)
        self.raw_noise = None if noise is None else torch.tensor(math.log(math.expm1(noise)), dtype=torch.float64)
        self.noise_used = None

    @property
    def noise(self) -> Optional[torch.Tensor]:
        return None if self.raw_noise is None else torch.nn.functional.softplus(self.raw_noise)

    def _factor(self, k_dd: torch.Tensor):
        eye = torch.eye(k_dd.shape[-1], dtype=k_dd.dtype, device=k_dd.device)
        noise = self.noise.to(k_dd) if self.noise is not None else self.relative_jitter * k_dd.diagonal().mean()
        for _ in range(8):  # deep kernels are nearly constant: raise a too-small noise until the factor exists
            chol, info = torch.linalg.cholesky_ex(k_dd + noise * eye)
            if int(info) == 0:
                return chol, noise
            noise = noise * 100
        raise RuntimeError(f"the kernel matrix is not positive definite even with noise {float(noise):.3g} on its "
                           "diagonal: the kernel is nearly constant (try a smaller depth or a larger bias_var), or the "
                           "noise is too small to matter (set noise=)")

    def log_marginal_likelihood(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """sum over the C outputs of log N(t_c | 0, K + noise I), divided by n (differentiable)."""
        check_training_data(x, y, self.num_classes)
        targets = shifted_one_hot(y, self.num_classes, x.dtype)
        chol, _ = self._factor(self.kernel(x).to_dense())
        return self._evidence(targets, chol, torch.cholesky_solve(targets, chol))

    @staticmethod
    def _evidence(targets, chol, alpha):
        """log N(targets | 0, chol chol^T) summed over the C columns, divided by n; alpha = (chol chol^T)^-1 targets."""
        n, c = targets.shape
        quad = (targets * alpha).sum()
        logdet = 2 * chol.diagonal().log().sum()
        return -0.5 * (quad + c * logdet + n * c * math.log(2 * math.pi)) / n

    def learn_hyperparameters(self, x, y, iters: int = 60, lr: float = 0.05, progress: bool = True):
        """Adam on -log marginal likelihood over the kernel's parameters and the noise; returns the loss curve."""
        check_training_data(x, y, self.num_classes)
        iters = check_count("iters", iters)
        check_positive("lr", lr, "a learning rate")
        if self.raw_noise is None:  # learning needs a noise parameter: start at 1e-3 of the prior variance scale
            with torch.no_grad():
                start = 1e-3 * self.kernel(x[:256]).to_dense().diagonal().mean().item()
            self.raw_noise = torch.tensor(math.log(math.expm1(start)), dtype=torch.float64)
        self.raw_noise.requires_grad_(True)
        params = [p for p in self.kernel.parameters() if p.requires_grad] + [self.raw_noise]
        optimizer = torch.optim.Adam(params, lr=lr)
        losses = []
        for _ in tqdm(range(iters), desc="marginal likelihood", disable=not progress):
            optimizer.zero_grad()
            loss = -self.log_marginal_likelihood(x, y)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        self.raw_noise.requires_grad_(False)
        return losses

    @torch.no_grad()
    def fit(self, x: torch.Tensor, y: torch.Tensor) -> ExactNNGPClassifier:
        """Factor K_DD + noise I once. Also sets fitted_log_marginal_likelihood (float), the value of
        log_marginal_likelihood(x, y) from the same factor."""
        check_training_data(x, y, self.num_classes)
        self.x_train = x
        targets = shifted_one_hot(y, self.num_classes, x.dtype)
        self.chol, self.noise_used = self._factor(self.kernel(x).to_dense())
        self.alpha = torch.cholesky_solve(targets, self.chol)
        self.fitted_log_marginal_likelihood = self._evidence(targets, self.chol, self.alpha).item()
        return self

    @torch.no_grad()
    def predict(self, x: torch.Tensor, batch_size: int = 2048, variance: bool = True):
        """Posterior mean (m, C) of the shifted targets and the shared predictive variance (m,) of the latent f
        (None with variance=False, which skips its triangular solves)."""
        if not hasattr(self, "alpha"):
            raise RuntimeError("predict needs a fitted classifier: call fit(x, y) first")
        batch_size = check_count("batch_size", batch_size)
        if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[-1] != self.x_train.shape[-1]:
            raise ValueError(f"x must have shape (m, {self.x_train.shape[-1]}) like the training inputs, got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        means, variances = [], []
        for start in range(0, x.shape[0], batch_size):
            xb = x[start:start + batch_size]
            k_sd = self.kernel(xb, self.x_train).to_dense()
            means.append(k_sd @ self.alpha)
            if variance:
                v = torch.linalg.solve_triangular(self.chol, k_sd.mT, upper=False)
                prior = self.kernel(xb, diag=True)
                variances.append((prior - (v * v).sum(0)).clamp_min(0))
        return torch.cat(means), (torch.cat(variances) if variance else None)

    def gaussian_nll(self, mean, variance, y) -> float:
        """Mean over test points of -log N(t | mean, (variance + noise) I) for the shifted one-hot targets t."""
        targets = shifted_one_hot(y, self.num_classes, mean.dtype)
        var = (variance + self.noise_used).unsqueeze(-1)
        return (0.5 * ((targets - mean) ** 2 / var + var.log() + math.log(2 * math.pi))).sum(-1).mean().item()
