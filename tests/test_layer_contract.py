"""The contract every layer of the algebra keeps (GPyTorch's habit with BaseKernelTestCase, for layers).

A new layer registers here: one small network per layer in CASES, named after the layer class, and
`test_every_layer_is_registered` fails until it is. For each case, NNGP and NTK:
  - the in-place inference path (no autograd, recycled buffers) equals the autograd path;
  - diag=True is the matrix diagonal to the bit;
  - tiles of a few pairs give the dense matrix, and so does the lazy operator's product;
  - gradients wrt the inputs and the variances are finite at duplicate, zero and antiparallel inputs.
Values against neural-tangents and Monte Carlo are in test_reference_cnn.py and test_monte_carlo_cnn.py.
"""
import math

import pytest
import torch
from torch import nn

from gpytorch_nngp import Aggregate, NNGPKernel, NTKKernel, Parallel, Residual, SelfAttention, algebra
from gpytorch_nngp.backends.tiling import architecture_matrix
from gpytorch_nngp.graphs import normalized_adjacency


def _cases():
    c = 3
    conv = lambda i, o, k=3: nn.Conv2d(i, o, k, padding=k // 2)  # noqa: E731
    ring = torch.zeros(5, 5)
    ring[torch.arange(5), (torch.arange(5) + 1) % 5] = 1.0  # a directed 5-cycle, and the same cycle normalized
    return {
        # layer class name -> (module, input shape); per_layer keeps an MLP an architecture kernel.
        "Dense": (nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 5), nn.GELU(), nn.Linear(5, 1)), (6,)),
        "Conv": (nn.Sequential(nn.Conv2d(2, c, 3, stride=2), nn.ReLU(), conv(c, c), nn.Flatten(),
                               nn.Linear(c * 4, 1)), (2, 5, 5)),
        "AvgPool": (nn.Sequential(conv(2, c), nn.ReLU(), nn.AvgPool2d(2), conv(c, c), nn.ReLU(), nn.Flatten(),
                                  nn.Linear(c * 4, 1)), (2, 4, 4)),
        "GlobalAvgPool": (nn.Sequential(nn.Conv1d(2, c, 3), nn.ReLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten(),
                                        nn.Linear(c, 1)), (2, 6)),
        "Flatten": (nn.Sequential(nn.Conv1d(2, c, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(c * 6, 1)),
                    (2, 6)),
        "ToDiagonal": (nn.Sequential(conv(2, c), nn.AvgPool2d(2), nn.ReLU(), conv(c, c), nn.ReLU(), nn.Flatten(),
                                     nn.Linear(c * 4, 1)), (2, 4, 4)),
        "Nonlinearity": (nn.Sequential(conv(2, c), nn.ReLU(), conv(c, c), nn.SiLU(), nn.Flatten(),
                                       nn.Linear(c * 9, 1)), (2, 3, 3)),
        "LayerNorm": (nn.Sequential(conv(2, c), nn.LayerNorm([c, 3, 3], elementwise_affine=False), nn.ReLU(),
                                    nn.Flatten(), nn.Linear(c * 9, 1)), (2, 3, 3)),
        "Residual": (nn.Sequential(conv(2, c), Residual(nn.Sequential(nn.ReLU(), conv(c, c))),
                                   Residual(nn.Sequential(nn.ReLU(), conv(c, c))), nn.ReLU(),
                                   nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 1)), (2, 3, 3)),
        "Parallel": (nn.Sequential(conv(2, c), Parallel(nn.Sequential(nn.ReLU(), conv(c, c)), nn.Identity()),
                                   Parallel(nn.Sequential(nn.ReLU(), conv(c, 1)), conv(c, 2), merge="concat"),
                                   conv(c, c), Parallel(nn.Sequential(nn.ReLU(), conv(c, c)),
                                                        nn.Sequential(nn.Tanh(), conv(c, c)), merge="prod"),
                                   nn.Flatten(), nn.Linear(c * 9, 1)), (2, 3, 3)),
        # Blocks on the input itself: their branches' leading layers act on the input's values (InputMap), an
        # activation after the concatenation moves into the branches; the residual sum keeps the data's width, so
        # only linear layers follow it.
        "InputMap": (nn.Sequential(Parallel(nn.Sequential(nn.ReLU(), conv(2, c)),
                                            nn.Sequential(nn.Tanh(), nn.AvgPool2d(1), conv(2, 2, 1)), merge="concat"),
                                   nn.ReLU(), conv(c + 2, c), nn.GELU(), nn.Flatten(), nn.Linear(c * 9, 1)), (2, 3, 3)),
        "InputMapResidual": (nn.Sequential(Residual(nn.Sequential(nn.ReLU(), conv(2, 2))), conv(2, c),
                                           nn.AvgPool2d(3), nn.Flatten(), nn.Linear(c, 1)), (2, 3, 3)),
        "ConvTranspose": (nn.Sequential(nn.Conv2d(2, c, 2, stride=2), nn.ReLU(),
                                        nn.ConvTranspose2d(c, c, 3, stride=2, padding=1, output_padding=1), nn.ReLU(),
                                        nn.ConvTranspose2d(c, c, 2, stride=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                        nn.Linear(c, 1)), (2, 4, 4)),
        "SelfAttention": (nn.Sequential(conv(2, c), SelfAttention(c, c, heads=2, bias_var=0.1), nn.ReLU(),
                                        SelfAttention(c, c, mechanism="relu", positional="concat", spatial_shape=(3, 3),
                                                      positional_decay=lambda d: torch.exp(-d)),
                                        nn.Flatten(), nn.Linear(c * 9, 1)), (2, 3, 3)),
        "Aggregate": (nn.Sequential(Aggregate(ring.to_sparse()), nn.Conv1d(2, c, 1), nn.ReLU(),
                                    Aggregate(normalized_adjacency(ring + ring.T)), nn.Conv1d(c, c, 1), nn.ReLU(),
                                    Aggregate(ring), nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(c, 1)), (2, 5)),
    }


CASES = _cases()


def _layer_classes(cls=algebra.Layer):
    for sub in cls.__subclasses__():
        yield sub
        yield from _layer_classes(sub)


def test_every_layer_is_registered():
    missing = sorted({c.__name__ for c in _layer_classes()} - set(CASES))
    assert not missing, f"layers without a contract case in tests/test_layer_contract.py: {missing}"


def points(shape, n=6, seed=0):
    x = torch.randn(n, math.prod(shape), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x[1] = x[0]  # duplicate
    x[2] = 0.0  # zero input
    x[3] = -x[n - 1]  # antiparallel
    return x


def kernel(name, cls, backend="dense"):
    module, shape = CASES[name]
    k = cls.from_module(module, shape, weight_var=1.6, bias_var=0.15, per_layer=True, backend=backend).double()
    assert type(k).__name__ == "ArchitectureKernel"
    return k, shape


@pytest.mark.parametrize("cls", [NNGPKernel, NTKKernel], ids=["nngp", "ntk"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_layer_contract(name, cls):
    k, shape = kernel(name, cls)
    x, y = points(shape), points(shape, 4, seed=1)
    with torch.no_grad():
        fast, fast_xy = k(x).to_dense(), k(x, y).to_dense()
        diag = k(x, diag=True)
    with torch.enable_grad():
        k.raw_weight_var.requires_grad_(True)
        graph = k(x).to_dense()
    assert graph.requires_grad
    torch.testing.assert_close(fast, graph.detach(), rtol=1e-12, atol=1e-12, msg="in place != autograd")
    assert torch.equal(diag, fast.diagonal()), "diag=True must be the matrix diagonal to the bit"
    with torch.no_grad():
        net = k.network
        tiled = architecture_matrix(net, x, y, k.weight_var, k.bias_var, k.ntk, budget=2 * net.entries_per_pair * 64)
        # A numerical activation sizes its series per tile (to the tile's variances): equal to its accuracy.
        tol = 1e-8 if net.numerical else 1e-12
        torch.testing.assert_close(tiled, fast_xy, rtol=tol, atol=tol, msg="tiles != dense")
        lazy, _ = kernel(name, cls, backend="lazy")
        rhs = torch.randn(len(x), 2, dtype=torch.float64)
        torch.testing.assert_close(lazy(x) @ rhs, fast @ rhs, rtol=1e-10, atol=1e-10)
    xg = x.clone().requires_grad_(True)
    loss = k(xg).to_dense().sum() + k(xg, diag=True).sum()
    loss.backward()
    for g in (xg.grad, k.raw_weight_var.grad, k.raw_bias_var.grad):
        assert g is not None and torch.isfinite(g).all()


@pytest.mark.parametrize("name", ["SelfAttention", "Parallel", "ConvTranspose", "Aggregate"])
def test_float32_and_a_batch_of_one(name):
    """The idioms users write: float32 inputs give the float64 kernel to float32 accuracy, and one input point (a
    1 x 1 matrix, its diagonal) works."""
    k64, shape = kernel(name, NTKKernel)
    k32 = NTKKernel.from_module(CASES[name][0], shape, weight_var=1.6, bias_var=0.15, per_layer=True)
    x = points(shape, 5, seed=2)
    with torch.no_grad():
        want = k64(x).to_dense()
        got = k32(x.float()).to_dense()
        assert got.dtype == torch.float32
        torch.testing.assert_close(got.double(), want, rtol=2e-4, atol=2e-4 * want.abs().max().item())
        one = k64(x[:1]).to_dense()
        assert one.shape == (1, 1)
        torch.testing.assert_close(one[0, 0], want[0, 0], rtol=1e-12, atol=0)
        torch.testing.assert_close(k64(x[:1], diag=True), want[:1, 0], rtol=1e-12, atol=0)


@pytest.mark.parametrize("name", ["SelfAttention", "AvgPool", "Dense"])
def test_points_in_chunks(name):
    """Own states (records, the diagonal) are propagated a few points at a time under a small memory budget (a
    point's state holds P^2 numbers below pooling): the same kernel, and diag=True still the matrix diagonal."""
    from gpytorch_nngp.backends import memory_budget
    from gpytorch_nngp.backends.tiling import points_per_chunk

    k, shape = kernel(name, NNGPKernel)
    x = points(shape, 7, seed=3)
    with torch.no_grad():
        want = k(x).to_dense()
        with memory_budget(block_bytes=1):
            assert points_per_chunk(k.network, x) == 1
            got, diag = k(x).to_dense(), k(x, diag=True)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert torch.equal(diag, got.diagonal())
