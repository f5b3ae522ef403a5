"""The network kernels as BoTorch surrogates: SingleTaskGP, fit_gpytorch_mll, transforms, acquisition
optimization with b x q x d batches, posterior sampling; and equality with BoTorch's InfiniteWidthBNNKernel."""
import pytest
import torch

botorch = pytest.importorskip("botorch")
from botorch.acquisition import qLogExpectedImprovement, qUpperConfidenceBound  # noqa: E402
from botorch.fit import fit_gpytorch_mll  # noqa: E402
from botorch.models import SingleTaskGP  # noqa: E402
from botorch.models.kernels import InfiniteWidthBNNKernel  # noqa: E402
from botorch.models.transforms import Normalize, Standardize  # noqa: E402
from botorch.optim import optimize_acqf  # noqa: E402
from gpytorch.kernels import ScaleKernel  # noqa: E402
from gpytorch.mlls import ExactMarginalLogLikelihood  # noqa: E402

from gpytorch_nngp import NNGPKernel, NTKKernel  # noqa: E402
from gpytorch_nngp.dnn2gp import FiniteNTKKernel  # noqa: E402


@pytest.mark.parametrize("depth", [1, 2, 4])
def test_relu_nngp_equals_infinite_width_bnn_kernel(depth):
    g = torch.Generator().manual_seed(depth)
    x1 = torch.rand(2, 7, 5, generator=g, dtype=torch.float64)  # a batch, as BoTorch passes it
    x2 = torch.rand(2, 4, 5, generator=g, dtype=torch.float64)
    ours = NNGPKernel(depth, "relu", weight_var=1.7, bias_var=0.3).double()
    theirs = InfiniteWidthBNNKernel(depth).double()
    theirs.weight_var, theirs.bias_var = 1.7, 0.3
    with torch.no_grad():
        assert torch.allclose(ours(x1, x2).to_dense(), theirs(x1, x2).to_dense(), rtol=1e-6, atol=0)
        # On the diagonal BoTorch clamps the angle's cosine to 1 - 1e-7, a 1e-7-level difference.
        assert torch.allclose(ours(x1, diag=True), theirs(x1, diag=True), rtol=1e-6, atol=0)
        assert torch.allclose(ours(x1).to_dense(), theirs(x1).to_dense(), rtol=1e-6, atol=0)


def objective(x):
    """A smooth test function on [0, 1]^3 (maximized)."""
    return -((x - 0.3) ** 2).sum(-1) + 0.1 * torch.sin(6 * x[..., 0])


def finite_ntk_kernel():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1)).double()
    return FiniteNTKKernel(net, mode="explicit")


KERNELS = {  # covariance modules as a user writes them
    "nngp": lambda: ScaleKernel(NNGPKernel(3, "relu")),
    "nngp_unscaled": lambda: NNGPKernel(3, "relu"),  # what the README advises for ReLU: weight_var is the scale
    "ntk": lambda: ScaleKernel(NTKKernel(2, "erf")),
    "finite_ntk": lambda: ScaleKernel(finite_ntk_kernel()),
    # the 3 inputs as a 1-channel sequence: a circular 1-D CNN built from torch modules (b x q x d batches)
    "cnn_from_module": lambda: ScaleKernel(NNGPKernel.from_module(torch.nn.Sequential(
        torch.nn.Conv1d(1, 8, 3, padding=1, padding_mode="circular"), torch.nn.ReLU(), torch.nn.Flatten(),
        torch.nn.Linear(24, 1)), (1, 3))),
}


@pytest.mark.parametrize("name", list(KERNELS))
def test_single_task_gp_bayesian_optimization_step(name):
    g = torch.Generator().manual_seed(0)
    train_x = torch.rand(12, 3, generator=g, dtype=torch.float64)
    train_y = objective(train_x).unsqueeze(-1)
    model = SingleTaskGP(train_x, train_y, covar_module=KERNELS[name]().double(),
                         input_transform=Normalize(3), outcome_transform=Standardize(1))
    mll = ExactMarginalLogLikelihood(model.likelihood, model)
    fit_gpytorch_mll(mll)
    model.eval()
    bounds = torch.stack([torch.zeros(3), torch.ones(3)]).double()
    for acqf in (qLogExpectedImprovement(model, best_f=train_y.max()), qUpperConfidenceBound(model, beta=2.0)):
        candidates, value = optimize_acqf(acqf, bounds=bounds, q=2, num_restarts=2, raw_samples=16)
        assert candidates.shape == (2, 3) and torch.isfinite(candidates).all() and torch.isfinite(value)
        assert ((candidates >= 0) & (candidates <= 1)).all()
    test_x = torch.rand(5, 3, generator=g, dtype=torch.float64)
    posterior = model.posterior(test_x)
    samples = posterior.rsample(torch.Size([8]))
    assert samples.shape == (8, 5, 1) and torch.isfinite(samples).all()
    assert (posterior.variance > 0).all()
    # The fitted surrogate predicts the training data far better than their spread.
    fitted = model.posterior(train_x).mean
    assert (fitted - train_y).pow(2).mean() < 0.25 * train_y.var()
