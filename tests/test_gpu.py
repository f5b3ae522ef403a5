"""The GPU paths (run on a CUDA machine with `python -m pytest -m gpu`; skipped without one): the lazy and KeOps
backends on CUDA against the dense kernel, an exact-GP marginal-likelihood step with CG on the device, the
architecture kernels (pooling, attention, transposed convolutions, branches) on CUDA against the CPU, the memory
budget read from the device, and DeviceSharding."""
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


def _architectures():
    from torch import nn

    from gpytorch_nngp import Parallel, Residual, SelfAttention

    c = 8
    return {
        "cnn_pool": (nn.Sequential(nn.Conv2d(1, c, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
                                   nn.Conv2d(c, c, 3, padding=1), nn.GELU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                   nn.Linear(c, 1)), (1, 8, 8)),
        "transformer": (nn.Sequential(
            nn.Conv1d(1, c, 3, padding=1),
            Residual(nn.Sequential(nn.LayerNorm([c, 12], elementwise_affine=False),
                                   SelfAttention(c, c, heads=2, positional="sum", spatial_shape=(12,)))),
            Residual(nn.Sequential(nn.LayerNorm([c, 12], elementwise_affine=False), nn.Conv1d(c, c, 1), nn.ReLU(),
                                   nn.Conv1d(c, c, 1))),
            nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(c, 1)), (1, 12)),
        "unet_branches": (nn.Sequential(
            nn.Conv2d(1, c, 2, stride=2), nn.ReLU(), nn.ConvTranspose2d(c, c, 2, stride=2),
            Parallel(nn.Conv2d(c, c, 1), nn.Sequential(nn.ReLU(), nn.Conv2d(c, c, 3, padding=1)), merge="concat"),
            nn.Flatten(), nn.Linear(2 * c * 64, 1)), (1, 8, 8)),
    }


@pytest.mark.parametrize("name", sorted(_architectures()))
@pytest.mark.parametrize("backend", ["dense", "lazy"])
def test_architecture_kernels_on_cuda_match_cpu(name, backend):
    import math

    module, shape = _architectures()[name]
    x = points(40, math.prod(shape), seed=2)
    cpu = NTKKernel.from_module(module, shape, backend=backend).double()
    gpu = NTKKernel.from_module(module, shape, backend=backend).double().cuda()
    with torch.no_grad():
        want = cpu(x).to_dense()
        got = gpu(x.cuda()).to_dense().cpu()
        diag = gpu(x.cuda(), diag=True).cpu()
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(diag, want.diagonal(), rtol=1e-9, atol=1e-10)
    xg = x.cuda().requires_grad_(True)
    gpu(xg).to_dense().sum().backward()
    assert torch.isfinite(xg.grad).all() and torch.isfinite(gpu.raw_weight_var.grad).all()


def test_memory_budget_reads_the_cuda_device():
    from gpytorch_nngp.backends import budget, memory_budget

    free = budget.device_bytes(torch.device("cuda"))
    assert 0 < free <= torch.cuda.get_device_properties(0).total_memory
    assert budget.tile_bytes(torch.device("cuda")) == budget.block_bytes()  # GPU tiles are blocks, not cache-sized
    with memory_budget(share=0.25):
        assert budget.cache_bytes(torch.device("cuda")) <= 0.25 * free


def test_device_sharding_on_cuda_matches_one_device():
    from gpytorch_nngp.backends import DeviceSharding

    devices = [torch.device("cuda", i) for i in range(torch.cuda.device_count())] * (
        2 if torch.cuda.device_count() == 1 else 1)
    x, v = points(500, 6), points(500, 2, seed=3)
    want = NNGPKernel(3, "relu").double()(x).to_dense() @ v
    kernel = NNGPKernel(3, "relu", backend=DeviceSharding(devices)).double().cuda()
    got = (kernel(x.cuda()) @ v.cuda()).cpu()
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
