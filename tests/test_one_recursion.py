"""The fully connected kernel is the layer algebra of its MLP, for every registered activation.

NNGPKernel/NTKKernel keep their own fast paths (the input Gram cache, in-place recycling, forward-mode variance
derivatives, KeOps); those must compute what the algebra (Dense and Nonlinearity layers through Network) computes
for the same nn.Sequential. Values, diagonals and the gradients wrt the variances (the lazy backend's forward-mode
derivative where the activation has one) are compared on inputs with duplicate, zero and antiparallel rows.
"""
import pytest
import torch
from torch import nn

from gpytorch_nngp import ArchitectureKernel, Elementwise, NNGPKernel, NTKKernel
from gpytorch_nngp.functional.activations import NAMES, ABReLU, Numerical, get_activation
from gpytorch_nngp.kernels.from_module import network_from_module

ACTIVATIONS = {name: (lambda name=name: get_activation(name)) for name in NAMES}
ACTIVATIONS["abrelu_-0.3_1.2"] = lambda: ABReLU(-0.3, 1.2)


def points(n=7):
    x = torch.randn(n, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    x[1], x[2], x[3] = x[0], 0.0, -x[4]
    return x


@pytest.mark.parametrize("cls", [NNGPKernel, NTKKernel], ids=["nngp", "ntk"])
@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_fully_connected_kernel_is_the_algebra_of_its_mlp(name, cls):
    activation = ACTIVATIONS[name]()
    mlp = nn.Sequential(nn.Linear(5, 8), Elementwise(activation), nn.Linear(8, 8), Elementwise(activation),
                        nn.Linear(8, 1))
    fast = cls.from_module(mlp, (5,), weight_var=1.6, bias_var=0.2).double()
    assert type(fast) is cls
    general = ArchitectureKernel(network_from_module(mlp, (5,)), ntk=cls is NTKKernel, weight_var=1.6,
                                 bias_var=0.2).double()
    x = points()
    tol = 1e-7 if isinstance(activation, Numerical) else 1e-12  # the series is fitted per call: to its accuracy
    with torch.no_grad():
        want = general(x).to_dense()
        torch.testing.assert_close(fast(x).to_dense(), want, rtol=tol, atol=tol)
        torch.testing.assert_close(fast(x, diag=True), general(x, diag=True), rtol=tol, atol=tol)
    # gradients wrt the variances: the lazy fully connected operator (forward mode where the activation has it)
    # against autograd through the algebra
    lazy = cls.from_module(mlp, (5,), weight_var=1.6, bias_var=0.2, backend="lazy").double()
    rhs = torch.randn(len(x), 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    grads = []
    for kernel in (lazy, general):
        kernel.zero_grad()
        (kernel(x) @ rhs).pow(2).sum().backward()
        grads.append(torch.stack([kernel.raw_weight_var.grad.sum(), kernel.raw_bias_var.grad.sum()]))
    torch.testing.assert_close(grads[0], grads[1], rtol=max(tol, 1e-9), atol=max(tol, 1e-9))
