"""Sparse variational GPs (Hensman et al. 2015) with the network kernels: classification with a softmax
likelihood, and regression. They go past the NNGP paper, which left "a fully Bayesian approach to
classification" for later.

A classifier has C latent functions with their own inducing-point posteriors. All share one kernel, so
weight_var and bias_var are learned jointly. The ELBO is maximized with minibatches. Inducing inputs start at
a random subset of the training inputs and are learned.
"""
from __future__ import annotations

import gpytorch
import torch
from tqdm.auto import tqdm


class SVGPClassifier(gpytorch.models.ApproximateGP):
    """kernel: NNGPKernel / NTKKernel (wrapped in a ScaleKernel here); inducing_points (M, d)."""

    def __init__(self, kernel, inducing_points: torch.Tensor, num_classes: int = 10):
        distribution = gpytorch.variational.CholeskyVariationalDistribution(
            inducing_points.shape[0], batch_shape=torch.Size([num_classes]))
        strategy = gpytorch.variational.IndependentMultitaskVariationalStrategy(
            gpytorch.variational.VariationalStrategy(self, inducing_points, distribution, learn_inducing_locations=True),
            num_tasks=num_classes)
        super().__init__(strategy)
        self.num_classes = num_classes
        self.mean_module = gpytorch.means.ConstantMean(batch_shape=torch.Size([num_classes]))
        self.covar_module = gpytorch.kernels.ScaleKernel(kernel)
        self.likelihood = gpytorch.likelihoods.SoftmaxLikelihood(num_classes=num_classes, mixing_weights=False)

    def forward(self, x):
        # The mean is batched over the C latent functions; the covariance is one shared (n, n) matrix that
        # broadcasts against it (expanding it to (C, n, n) made every step 4x slower: C Cholesky factors).
        return gpytorch.distributions.MultivariateNormal(self.mean_module(x), self.covar_module(x))

    def predict_proba(self, x, batch_size: int = 1024, samples: int = 64):
        """Class probabilities (m, C): the softmax averaged over `samples` draws of the latent functions."""
        self.eval()
        out = []
        with torch.no_grad(), gpytorch.settings.num_likelihood_samples(samples):
            for start in range(0, x.shape[0], batch_size):
                out.append(self.likelihood(self(x[start:start + batch_size])).probs.mean(0))
        return torch.cat(out)


class SVGPRegressor(gpytorch.models.ApproximateGP):
    """Scalar regression with a Gaussian likelihood; kernel wrapped in a ScaleKernel; inducing_points (M, d)."""

    def __init__(self, kernel, inducing_points: torch.Tensor):
        distribution = gpytorch.variational.CholeskyVariationalDistribution(inducing_points.shape[0])
        strategy = gpytorch.variational.VariationalStrategy(self, inducing_points, distribution,
                                                            learn_inducing_locations=True)
        super().__init__(strategy)
        self.mean_module = gpytorch.means.ConstantMean()
        self.covar_module = gpytorch.kernels.ScaleKernel(kernel)
        self.likelihood = gpytorch.likelihoods.GaussianLikelihood()

    def forward(self, x):
        return gpytorch.distributions.MultivariateNormal(self.mean_module(x), self.covar_module(x))


def train_svgp(model, x, y, epochs: int = 20, batch_size: int = 256, lr: float = 0.01, seed: int = 0,
               progress: bool = True):
    """Maximize the ELBO with Adam over minibatches; returns the per-epoch mean negative ELBO."""
    model.train()
    mll = gpytorch.mlls.VariationalELBO(model.likelihood, model, num_data=x.shape[0])
    optimizer = torch.optim.Adam(list(model.parameters()), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    history = []
    bar = tqdm(range(epochs), desc="ELBO", disable=not progress)
    for _ in bar:
        perm = torch.randperm(x.shape[0], generator=generator)
        total = 0.0
        for start in range(0, x.shape[0], batch_size):
            idx = perm[start:start + batch_size]
            optimizer.zero_grad()
            loss = -mll(model(x[idx]), y[idx])
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
        history.append(total / x.shape[0])
        bar.set_postfix(neg_elbo=f"{history[-1]:.3f}")
    return history
