"""The GPyTorch kernel contract: GPyTorch's own generic kernel tests, plus composition, pickling, dtype."""
import pickle
import unittest

import gpytorch
import torch
from gpytorch.test.base_kernel_test_case import BaseKernelTestCase

from gpytorch_nngp import NNGPKernel, NTKKernel, activations


class TestNNGPReLUContract(BaseKernelTestCase, unittest.TestCase):
    def create_kernel_no_ard(self, **kwargs):
        return NNGPKernel(depth=2, activation="relu", **kwargs)


class TestNNGPReLUARDContract(BaseKernelTestCase, unittest.TestCase):
    """The same contract with per-input length scales (GPyTorch's ARD convention), at non-trivial values."""

    def create_kernel_no_ard(self, **kwargs):
        return NNGPKernel(depth=2, activation="relu", **kwargs)

    def create_kernel_ard(self, num_dims, **kwargs):
        kernel = NNGPKernel(depth=2, activation="relu", ard_num_dims=num_dims, **kwargs)
        kernel.lengthscale = torch.linspace(0.5, 2.0, num_dims)
        return kernel


class TestNTKArchitectureARDContract(BaseKernelTestCase, unittest.TestCase):
    def create_kernel_no_ard(self, **kwargs):  # GPyTorch's batched cases use 2 input dimensions
        return NTKKernel.from_module(torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.GELU(),
                                                         torch.nn.Linear(8, 1)), (2,), per_layer=True, **kwargs)

    def create_kernel_ard(self, num_dims, **kwargs):
        module = torch.nn.Sequential(torch.nn.Linear(num_dims, 8), torch.nn.GELU(), torch.nn.Linear(8, 1))
        kernel = NTKKernel.from_module(module, (num_dims,), per_layer=True, ard_num_dims=num_dims, **kwargs)
        kernel.lengthscale = torch.linspace(0.5, 2.0, num_dims)
        return kernel

    def test_active_dims_list(self):
        self.skipTest("the module is built for its input width; active_dims would select fewer columns")

    def test_active_dims_range(self):
        self.skipTest("the module is built for its input width; active_dims would select fewer columns")


class TestNNGPConvolutionalContract(BaseKernelTestCase, unittest.TestCase):
    """A convolutional architecture kernel (a 1-d CNN with global pooling) under GPyTorch's kernel contract: its
    inputs are 2 channels of 5 positions (10 columns), and its ARD length scales are per channel."""

    SHAPE = (2, 5)

    def module(self):
        return torch.nn.Sequential(torch.nn.Conv1d(2, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool1d(1),
                                   torch.nn.Flatten(), torch.nn.Linear(4, 1))

    def create_kernel_no_ard(self, **kwargs):
        return NNGPKernel.from_module(self.module(), self.SHAPE, **kwargs)

    def create_kernel_ard(self, num_dims, **kwargs):
        kernel = NNGPKernel.from_module(self.module(), self.SHAPE, ard_num_dims=num_dims, **kwargs)
        kernel.lengthscale = torch.linspace(0.5, 2.0, num_dims)
        return kernel

    def create_data_single_batch(self):
        return torch.randn(2, 3, 10)

    def create_data_double_batch(self):
        return torch.randn(3, 2, 50, 10)

    def test_active_dims_list(self):
        self.skipTest("the module is built for 10 input columns; active_dims would select fewer")

    def test_active_dims_range(self):
        self.skipTest("the module is built for 10 input columns; active_dims would select fewer")


class TestNTKLazyBackendContract(BaseKernelTestCase, unittest.TestCase):
    """The lazy backend's operator under the same contract (GPyTorch evaluates it through to_dense)."""

    def create_kernel_no_ard(self, **kwargs):
        return NTKKernel(depth=2, activation="relu", backend="lazy", **kwargs)

    def create_kernel_ard(self, num_dims, **kwargs):
        kernel = NTKKernel(depth=2, activation="relu", backend="lazy", ard_num_dims=num_dims, **kwargs)
        kernel.lengthscale = torch.linspace(0.5, 2.0, num_dims)
        return kernel


class TestGraphNodeContract(BaseKernelTestCase, unittest.TestCase):
    """GraphNodeKernel (inputs: node indices, one column) under GPyTorch's contract, on a 50-node ring."""

    def create_kernel_no_ard(self, **kwargs):
        from gpytorch_nngp import Aggregate, GraphNodeKernel
        from gpytorch_nngp.graphs import normalized_adjacency

        ring = torch.roll(torch.eye(50), 1, dims=1)
        a = normalized_adjacency(ring + ring.T)
        module = torch.nn.Sequential(Aggregate(a), torch.nn.Conv1d(3, 8, 1), torch.nn.ReLU(), Aggregate(a),
                                     torch.nn.Conv1d(8, 1, 1))
        features = torch.randn(50, 3, generator=torch.Generator().manual_seed(0))
        return GraphNodeKernel(module, features, **kwargs)

    def _nodes(self, *shape):
        return torch.randint(0, 50, (*shape, 1)).float()

    def create_data_no_batch(self):
        return self._nodes(50)

    def create_data_single_batch(self):
        return self._nodes(2, 3)

    def create_data_double_batch(self):
        return self._nodes(3, 2, 50)

    def test_active_dims_list(self):
        self.skipTest("the inputs are node indices, one column: there are no dimensions to select")

    def test_active_dims_range(self):
        self.skipTest("the inputs are node indices, one column: there are no dimensions to select")


class TestNTKErfContract(BaseKernelTestCase, unittest.TestCase):
    def create_kernel_no_ard(self, **kwargs):
        return NTKKernel(depth=3, activation="erf", **kwargs)


class TestNTKNumericalContract(BaseKernelTestCase, unittest.TestCase):
    def create_kernel_no_ard(self, **kwargs):
        return NTKKernel(depth=1, activation="tanh", **kwargs)


def test_floats_tensors_and_batch_shape():
    k = NNGPKernel(2, weight_var=torch.tensor([1.0, 2.0]).view(2, 1, 1), bias_var=0.3, batch_shape=torch.Size([2]))
    assert k.weight_var.shape == (2, 1, 1)
    assert torch.allclose(k.weight_var.flatten(), torch.tensor([1.0, 2.0]))
    assert torch.allclose(k.bias_var, torch.full((2, 1, 1), 0.3))
    x = torch.randn(2, 5, 3)
    out = k(x).to_dense()
    assert out.shape == (2, 5, 5)
    single = NNGPKernel(2, weight_var=2.0, bias_var=0.3)(x[1]).to_dense()
    assert torch.allclose(out[1], single, rtol=1e-5, atol=1e-6)
    k.weight_var = 1.5
    assert torch.allclose(k.weight_var, torch.full((2, 1, 1), 1.5))


def test_bxqxd_inputs_and_cross_covariance():
    k = NTKKernel(3, "relu")
    x1 = torch.randn(4, 3, 6)  # b x q x d, as BoTorch passes
    x2 = torch.randn(10, 6)
    out = k(x1, x2).to_dense()
    assert out.shape == (4, 3, 10)
    assert torch.allclose(out[2], k(x1[2], x2).to_dense())


def test_priors_and_parameters_are_learnable():
    k = NNGPKernel(2, weight_var_prior=gpytorch.priors.GammaPrior(2.0, 1.0),
                   bias_var_prior=gpytorch.priors.GammaPrior(1.0, 5.0))
    names = {name for name, _, _, _, _ in k.named_priors()}
    assert names == {"weight_var_prior", "bias_var_prior"}
    x = torch.randn(6, 4)
    k(x).to_dense().sum().backward()
    assert k.raw_weight_var.grad is not None and torch.isfinite(k.raw_weight_var.grad).all()
    assert k.raw_bias_var.grad is not None and torch.isfinite(k.raw_bias_var.grad).all()


def test_pickle_and_dtype_roundtrip():
    k = NTKKernel(2, activations.LeakyReLU(0.1), weight_var=1.7, bias_var=0.2)
    x = torch.randn(5, 3)
    before = k(x).to_dense().detach()
    k2 = pickle.loads(pickle.dumps(k))
    assert torch.allclose(k2(x).to_dense(), before)
    k64 = k2.double()
    out64 = k64(x.double()).to_dense()
    assert out64.dtype == torch.float64
    assert torch.allclose(out64.float(), before, rtol=1e-5, atol=1e-6)
    # numerical activation built from a module-level function pickles too
    k3 = pickle.loads(pickle.dumps(NNGPKernel(1, "silu")))
    assert torch.isfinite(k3(x).to_dense()).all()


def test_composes_with_scale_additive_and_exact_gp():
    x = torch.linspace(-1, 1, 30).unsqueeze(-1)
    y = torch.sin(3 * x).squeeze(-1)
    covar = gpytorch.kernels.ScaleKernel(NNGPKernel(2)) + gpytorch.kernels.ScaleKernel(NTKKernel(1, "erf"))
    assert isinstance(covar, gpytorch.kernels.AdditiveKernel)

    class GP(gpytorch.models.ExactGP):
        def __init__(self):
            super().__init__(x, y, gpytorch.likelihoods.GaussianLikelihood())
            self.mean_module = gpytorch.means.ZeroMean()
            self.covar_module = covar

        def forward(self, inp):
            return gpytorch.distributions.MultivariateNormal(self.mean_module(inp), self.covar_module(inp))

    model = GP()
    mll = gpytorch.mlls.ExactMarginalLogLikelihood(model.likelihood, model)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    losses = []
    for _ in range(15):
        opt.zero_grad()
        loss = -mll(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    model.eval()
    with torch.no_grad():
        pred = model.likelihood(model(torch.linspace(-1, 1, 7).unsqueeze(-1)))
    assert torch.isfinite(pred.mean).all() and (pred.variance > 0).all()


def test_gram_cache_reused_and_never_stale():
    k = NNGPKernel(1)
    x = torch.randn(6, 3)
    a = k(x).to_dense().detach()
    assert len(k._gram_cache.entries) == 1
    k.weight_var = 3.0
    b = k(x).to_dense().detach()
    assert len(k._gram_cache.entries) == 1 and not torch.allclose(a, b)
    x.mul_(2.0)  # in-place edit: the cache must notice
    c = k(x).to_dense().detach()
    fresh = NNGPKernel(1, weight_var=3.0)(x.clone()).to_dense().detach()
    assert torch.allclose(c, fresh)


def test_last_dim_is_batch_rejected_clearly():
    k = NNGPKernel(1)
    x = torch.randn(4, 3)
    try:
        k.forward(x, x, last_dim_is_batch=True)
    except ValueError as err:
        assert "last_dim_is_batch" in str(err)
    else:
        raise AssertionError("expected ValueError")
