"""The GPU paths (run on a CUDA machine with `python -m pytest -m gpu`; skipped without one): the lazy and KeOps
backends on CUDA against the dense kernel, and an exact-GP marginal-likelihood step with CG on the device."""
import gpytorch
import pytest
import torch

from gpytorch_nngp import NNGPKernel, NTKKernel, backends

pytestmark = pytest.mark.gpu


def points(n, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("backend", ["lazy", "keops"])
@pytest.mark.parametrize("cls", [NNGPKernel, NTKKernel])
def test_cuda_backends_match_dense_cpu(cls, backend):
    x, v = points(600), points(600, 3, seed=1)
    dense = cls(3, "relu").double()(x).to_dense() @ v
    kernel = cls(3, "relu", backend=backend).double().cuda()
    op = kernel(x.cuda()).evaluate_kernel()
    assert op.device.type == "cuda"
    product = (op @ v.cuda()).cpu()
    assert ((product - dense).abs().max() / dense.abs().max()).item() < 1e-6


def test_auto_picks_keops_for_large_cuda_inputs():
    x = points(backends.DENSE_MAX_ENTRIES // 3000 + 1).cuda()
    big = torch.zeros(3000, x.shape[-1], dtype=x.dtype, device="cuda")
    assert backends.resolve_backend("auto", x, big, NNGPKernel(2, "relu").activation) == "keops"


def test_exact_gp_step_on_cuda_matches_cpu():
    x = points(4000, 8)
    y = torch.sin(x.sum(-1))

    def step(device):
        class GP(gpytorch.models.ExactGP):
            def __init__(self):
                super().__init__(x.to(device), y.to(device), gpytorch.likelihoods.GaussianLikelihood())
                self.mean = gpytorch.means.ConstantMean()
                self.cov = NNGPKernel(3, "relu", backend="lazy")

            def forward(self, z):
                return gpytorch.distributions.MultivariateNormal(self.mean(z), self.cov(z))

        model = GP().double().to(device)
        model.train()
        with gpytorch.settings.max_cholesky_size(0), gpytorch.settings.cg_tolerance(1e-6):
            torch.manual_seed(0)
            loss = -gpytorch.mlls.ExactMarginalLogLikelihood(model.likelihood, model)(model(x.to(device)), y.to(device))
            loss.backward()
        return loss.item(), model.cov.raw_weight_var.grad.item()

    cpu, gpu = step("cpu"), step("cuda")
    assert gpu[0] == pytest.approx(cpu[0], rel=1e-3) and gpu[1] == pytest.approx(cpu[1], rel=1e-2)
