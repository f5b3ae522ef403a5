"""The KeOps backend on the CPU (pykeops compiles with g++): tiny sizes, one depth, cached builds.

The first run compiles a handful of KeOps formulas (a few minutes on 2 cores); later runs reuse the build in
KEOPS_CACHE_FOLDER (set in conftest.py). On a GPU the same code path is the fast one.
"""
import pytest
import torch

from gpytorch_nngp import NNGPKernel, NTKKernel, backends
from gpytorch_nngp.activations import ReLU

pytestmark = pytest.mark.skipif(not backends.KEOPS_AVAILABLE, reason="pykeops not importable")


def test_keops_matches_dense_values_products_and_gradients():
    torch.manual_seed(0)
    x = torch.randn(12, 3, dtype=torch.float64)
    x[3] = x[2]  # identical points: the gap threshold must give finite gradients
    u, v = torch.randn(12, 2, dtype=torch.float64), torch.randn(12, 2, dtype=torch.float64)
    out = {}
    for backend in ("dense", "keops"):
        k = NNGPKernel(1, "relu", backend=backend).double()
        k.weight_var, k.bias_var = 1.7, 0.2
        xr = x.clone().requires_grad_(True)
        op = k(xr).evaluate_kernel()
        product = op @ v
        loss = (u * product).sum()
        grads = torch.autograd.grad(loss, [k.raw_weight_var, k.raw_bias_var, xr])
        out[backend] = (product.detach(), *grads)
        if backend == "keops":
            assert isinstance(op, backends.KeOpsNetworkKernelOperator)
    for a, b in zip(out["dense"], out["keops"]):
        assert torch.isfinite(b).all()
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-8 * a.abs().max().item())


def test_keops_backend_errors_are_clear():
    with pytest.raises(ValueError, match="keops"):
        NTKKernel(2, "tanh", backend="keops")
    k = NNGPKernel(2, "relu", backend="keops", batch_shape=torch.Size([2]))
    with pytest.raises(ValueError, match="batch_shape"):
        (k(torch.randn(2, 5, 3)).evaluate_kernel() @ torch.randn(2, 5, 1))


def test_auto_uses_keops_only_for_cuda():
    x = torch.zeros(backends.DENSE_MAX_ENTRIES // 10 + 1, 3)
    assert backends.resolve_backend("auto", x[:10], x, ReLU()) == "lazy"  # a CPU tensor: KeOps is slow there
