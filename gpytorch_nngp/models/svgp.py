"""Sparse variational GPs (Hensman et al. 2015) with the network kernels: classification with a softmax
likelihood, and regression. They go past the NNGP paper, which left "a fully Bayesian approach to
classification" for later.

A classifier has C latent functions with their own inducing-point posteriors. All share one kernel, so
weight_var and bias_var are learned jointly. The ELBO is maximized with minibatches. Inducing inputs start at
a random subset of the training inputs and are learned.

With natural_gradients=True the variational distributions take natural-gradient steps (Salimbeni et al. 2018,
GPyTorch's NGD optimizer on a TrilNaturalVariationalDistribution) while the kernel hyperparameters and inducing
inputs take Adam steps. Plain Adam is the default; the README's classification section has the measurements.
"""
from __future__ import annotations

import gpytorch
import torch
from tqdm.auto import tqdm

from .._validation import check_choice, check_count, check_positive, check_training_data


def _check_inducing_points(inducing_points) -> None:
    if not isinstance(inducing_points, torch.Tensor) or inducing_points.dim() != 2 or \
            not torch.is_floating_point(inducing_points) or inducing_points.shape[0] < 1:
        got = tuple(inducing_points.shape) if isinstance(inducing_points, torch.Tensor) else repr(inducing_points)
        raise ValueError(f"inducing_points must be a floating point tensor of shape (M, d) with M >= 1, got {got}")


def _variational_distribution(num_inducing: int, batch_shape: torch.Size, natural_gradients: bool):
    cls = (gpytorch.variational.TrilNaturalVariationalDistribution if natural_gradients
           else gpytorch.variational.CholeskyVariationalDistribution)
    return cls(num_inducing, batch_shape=batch_shape)


class SVGPClassifier(gpytorch.models.ApproximateGP):
    """C latent GPs with a softmax likelihood, trained by the ELBO (train_svgp).

    Args:
        kernel: NNGPKernel / NTKKernel (wrapped in a ScaleKernel here), shared by the C latent functions.
        inducing_points: (M, d) initial inducing inputs (learned).
        num_classes: C.
        natural_gradients: natural parameters for the variational distributions (train_svgp then uses NGD on them).
    """

    def __init__(self, kernel, inducing_points: torch.Tensor, num_classes: int = 10, natural_gradients: bool = False):
        _check_inducing_points(inducing_points)
        num_classes = check_count("num_classes", num_classes, 2)
        distribution = _variational_distribution(inducing_points.shape[0], torch.Size([num_classes]),
                                                 natural_gradients)
        strategy = gpytorch.variational.IndependentMultitaskVariationalStrategy(
            gpytorch.variational.VariationalStrategy(self, inducing_points, distribution,
                                                     learn_inducing_locations=True),
            num_tasks=num_classes)
        super().__init__(strategy)
        self.natural_gradients = natural_gradients
        self.num_classes = num_classes
        self.mean_module = gpytorch.means.ConstantMean(batch_shape=torch.Size([num_classes]))
        self.covar_module = gpytorch.kernels.ScaleKernel(kernel)
        self.likelihood = gpytorch.likelihoods.SoftmaxLikelihood(num_classes=num_classes, mixing_weights=False)

    def forward(self, x):
        # The mean is batched over the C latent functions; the covariance is one shared (n, n) matrix that
        # broadcasts against it (expanding it to (C, n, n) would factorize C Cholesky factors per step).
        return gpytorch.distributions.MultivariateNormal(self.mean_module(x), self.covar_module(x))

    def predict_proba(self, x, batch_size: int = 1024, samples: int = 64):
        """Class probabilities (m, C): the softmax averaged over `samples` draws of the latent functions."""
        batch_size, samples = check_count("batch_size", batch_size), check_count("samples", samples)
        self.eval()
        out = []
        with torch.no_grad(), gpytorch.settings.num_likelihood_samples(samples):
            for start in range(0, x.shape[0], batch_size):
                out.append(self.likelihood(self(x[start:start + batch_size])).probs.mean(0))
        return torch.cat(out)


class SVGPRegressor(gpytorch.models.ApproximateGP):
    """Scalar regression with a Gaussian likelihood, trained by the ELBO (train_svgp).

    Args:
        kernel: NNGPKernel / NTKKernel (wrapped in a ScaleKernel here).
        inducing_points: (M, d) initial inducing inputs (learned).
        natural_gradients: as for SVGPClassifier.
    """

    def __init__(self, kernel, inducing_points: torch.Tensor, natural_gradients: bool = False):
        _check_inducing_points(inducing_points)
        distribution = _variational_distribution(inducing_points.shape[0], torch.Size([]), natural_gradients)
        strategy = gpytorch.variational.VariationalStrategy(self, inducing_points, distribution,
                                                            learn_inducing_locations=True)
        super().__init__(strategy)
        self.natural_gradients = natural_gradients
        self.mean_module = gpytorch.means.ConstantMean()
        self.covar_module = gpytorch.kernels.ScaleKernel(kernel)
        self.likelihood = gpytorch.likelihoods.GaussianLikelihood()

    def forward(self, x):
        return gpytorch.distributions.MultivariateNormal(self.mean_module(x), self.covar_module(x))


SCHEDULES = ("cosine", "constant")


def train_svgp(model, x, y, epochs: int = 20, batch_size: int = 256, lr: float = 0.01, seed: int = 0,
               progress: bool = True, schedule: str = "constant", ngd_lr: float = 0.1):
    """Maximize the ELBO over minibatches.

    Args:
        model: an SVGPClassifier or SVGPRegressor.
        x: (n, d) inputs; y: (n,) labels or targets.
        epochs, batch_size: passes over the data, minibatch size.
        lr: Adam step (every parameter, or all but the variational ones with natural gradients).
        seed: minibatch order.
        progress: show a tqdm bar.
        schedule: "constant", or "cosine" to anneal the Adam step from lr to 0 over the run.
        ngd_lr: the natural-gradient step, for models built with natural_gradients=True.

    Returns:
        The mean negative ELBO per epoch.

    Raises:
        ValueError: an unknown schedule, epochs or batch_size < 1, lr or ngd_lr not > 0, or x and y that do not fit
            the model (labels outside 0 .. C - 1 for a classifier, y not of shape (n,)).
        TypeError: float labels for a classifier.
    """
    check_choice("schedule", schedule, SCHEDULES)
    epochs, batch_size = check_count("epochs", epochs), check_count("batch_size", batch_size)
    check_positive("lr", lr, "a learning rate")
    check_positive("ngd_lr", ngd_lr, "a learning rate")
    classes = getattr(model, "num_classes", None)
    check_training_data(x, y, classes, labels=classes is not None)
    model.train()
    mll = gpytorch.mlls.VariationalELBO(model.likelihood, model, num_data=x.shape[0])
    if getattr(model, "natural_gradients", False):
        # The likelihood is a submodule here, so hyperparameters() already holds its parameters.
        optimizer = torch.optim.Adam(list(model.hyperparameters()), lr=lr)
        natural = gpytorch.optim.NGD(model.variational_parameters(), num_data=x.shape[0], lr=ngd_lr)
        optimizers = (natural, optimizer)
    else:
        optimizer = torch.optim.Adam(list(model.parameters()), lr=lr)
        optimizers = (optimizer,)
    steps_per_epoch = -(-x.shape[0] // batch_size)
    scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps_per_epoch)
                 if schedule == "cosine" else None)
    generator = torch.Generator().manual_seed(seed)
    history = []
    bar = tqdm(range(epochs), desc="ELBO", disable=not progress)
    for _ in bar:
        perm = torch.randperm(x.shape[0], generator=generator)
        total = 0.0
        for start in range(0, x.shape[0], batch_size):
            idx = perm[start:start + batch_size]
            for opt in optimizers:
                opt.zero_grad()
            loss = -mll(model(x[idx]), y[idx])
            loss.backward()
            for opt in optimizers:
                opt.step()
            if scheduler is not None:
                scheduler.step()
            total += loss.item() * len(idx)
        history.append(total / x.shape[0])
        bar.set_postfix(neg_elbo=f"{history[-1]:.3f}")
    return history
