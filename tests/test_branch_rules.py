"""The rules for branches, as the math has them (each case was refused, or refused for the wrong reason, before):
concatenations of activated branches and products of independent branches are computed (equal to neural-tangents
in test_reference_cnn.py: concat_activated, prod_independent), a product of branches that share their randomness
is refused, an activation after an activation across a block boundary composes as in a plain Sequential, and a
residual block on the raw input has its exact kernel when only linear layers follow it."""
import math

import pytest
import torch
from helpers.monte_carlo import assert_mean_converged, draw
from torch import nn

from gpytorch_nngp import NNGPKernel, NTKKernel, Parallel, Residual

WV, BV = 1.6, 0.2


def kernel_matrix(cls, module, shape, x):
    with torch.no_grad():
        return cls.from_module(module, shape, weight_var=WV, bias_var=BV).double()(x).to_dense()


def monte_carlo_nngp(module, shape, x, draws=24, seed=0):
    """Per-draw NNGP estimates (draws, n, n) of a finite module: WV <h, h'> / fan_in + BV at its readout."""
    gen = torch.Generator().manual_seed(seed)
    module = module.double()
    samples = []
    for _ in range(draws):
        draw(module, gen)
        with torch.no_grad():
            h = module[:-1](x.reshape(len(x), *shape)).reshape(len(x), -1)
        samples.append(WV * h @ h.T / h.shape[1] + BV)
    return torch.stack(samples)


def points(d, n=5, seed=1):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_a_product_of_branches_needs_independent_branches():
    c = 8
    shared = nn.Sequential(nn.Linear(3, c), nn.ReLU(), Parallel(nn.ReLU(), nn.Tanh(), merge="prod"), nn.Linear(c, 1))
    with pytest.raises(ValueError, match=r"branches \[0, 1\] of a product have no Linear/Conv layer of their own.*"
                                         "dependent.*neural-tangents multiplies them anyway"):
        NNGPKernel.from_module(shared, (3,))
    # One branch with its own weights is enough: relu(W h) is independent of tanh(h) in the limit.
    one = nn.Sequential(nn.Linear(3, 256), nn.ReLU(),
                        Parallel(nn.Sequential(nn.Linear(256, 256), nn.ReLU()), nn.Tanh(), merge="prod"),
                        nn.Linear(256, 1))
    x = points(3)
    assert_mean_converged(monte_carlo_nngp(one, (3,), x), kernel_matrix(NNGPKernel, one, (3,), x), 0.02)


def test_an_activation_after_an_activation_composes_across_a_block():
    """Conv, ReLU, Parallel([Tanh, Conv], [Conv]): the branch's tanh acts on relu of a Gaussian, an elementwise
    function of it, as tanh(relu(.)) in a plain Sequential (once refused as acting on a non-Gaussian value)."""
    c = 256
    module = nn.Sequential(nn.Conv1d(1, c, 3, padding=1), nn.ReLU(),
                           Parallel(nn.Sequential(nn.Tanh(), nn.Conv1d(c, c, 1)), nn.Conv1d(c, c, 3, padding=1)),
                           nn.Flatten(), nn.Linear(4 * c, 1))
    pushed = nn.Sequential(nn.Conv1d(1, c, 3, padding=1),
                           Parallel(nn.Sequential(nn.ReLU(), nn.Tanh(), nn.Conv1d(c, c, 1)),
                                    nn.Sequential(nn.ReLU(), nn.Conv1d(c, c, 3, padding=1))),
                           nn.Flatten(), nn.Linear(4 * c, 1))
    x = points(4)
    for cls in (NNGPKernel, NTKKernel):
        torch.testing.assert_close(kernel_matrix(cls, module, (1, 4), x), kernel_matrix(cls, pushed, (1, 4), x),
                                   rtol=1e-12, atol=1e-12)
    assert_mean_converged(monte_carlo_nngp(module, (1, 4), x), kernel_matrix(NNGPKernel, module, (1, 4), x), 0.02)
    # A residual block whose branch starts with an activation, after an activation: the skip carries relu(u).
    block = nn.Sequential(nn.Linear(3, c), nn.ReLU(), Residual(nn.Sequential(nn.Tanh(), nn.Linear(c, c))),
                          nn.Linear(c, 1))
    x = points(3)
    assert_mean_converged(monte_carlo_nngp(block, (3,), x), kernel_matrix(NNGPKernel, block, (3,), x), 0.02)


def test_an_activation_after_a_concatenation_acts_on_each_branch():
    c = 256
    module = nn.Sequential(nn.Linear(3, c), Parallel(nn.Linear(c, c), nn.Sequential(nn.ReLU(), nn.Linear(c, c // 2)),
                                                     merge="concat"), nn.Tanh(), nn.Linear(c + c // 2, 1))
    x = points(3)
    assert_mean_converged(monte_carlo_nngp(module, (3,), x), kernel_matrix(NNGPKernel, module, (3,), x), 0.02)


def test_a_residual_block_on_the_raw_input():
    """x + W relu(x) + b is a Gaussian with the deterministic mean x: a Linear after it has the closed form below
    (NNGP and NTK); an activation after it, or after any later Linear (the sum has the data's width, 3, so its
    randomness never averages out), is refused with that reason."""
    d = 3
    module = nn.Sequential(Residual(nn.Sequential(nn.ReLU(), nn.Linear(d, d))), nn.Linear(d, 1))
    x = points(d, 6)
    x[1] = x[0]
    lin, rel = x @ x.T / d, torch.relu(x) @ torch.relu(x).T / d
    branch = WV * rel + BV
    nngp = WV * (lin + branch) + BV
    ntk = WV * branch + nngp  # the branch's Linear (its NTK is its NNGP), then the readout's
    torch.testing.assert_close(kernel_matrix(NNGPKernel, module, (d,), x), nngp, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(kernel_matrix(NTKKernel, module, (d,), x), ntk, rtol=1e-13, atol=1e-13)
    with torch.no_grad():
        diag = NTKKernel.from_module(module, (d,), weight_var=WV, bias_var=BV).double()(x, diag=True)
    torch.testing.assert_close(diag, ntk.diagonal(), rtol=1e-13, atol=0)
    deeper = nn.Sequential(Residual(nn.Sequential(nn.ReLU(), nn.Linear(d, d))), nn.Linear(d, 8), nn.Linear(8, 1))
    torch.testing.assert_close(kernel_matrix(NNGPKernel, deeper, (d,), x), WV * nngp + BV, rtol=1e-13, atol=1e-13)
    for bad in (nn.Sequential(Residual(nn.Sequential(nn.ReLU(), nn.Linear(d, d))), nn.ReLU(), nn.Linear(d, 1)),
                nn.Sequential(Residual(nn.Sequential(nn.ReLU(), nn.Linear(d, d))), nn.Linear(d, 8), nn.ReLU(),
                              nn.Linear(8, 1))):
        with pytest.raises(ValueError, match="a Gaussian with a nonzero mean.*data's width .3 channels"):
            NNGPKernel.from_module(bad, (d,))
    # Branches that only transform the input are a fixed function of it: exact, whatever follows.
    fixed = nn.Sequential(Parallel(nn.ReLU(), nn.Tanh(), merge="prod"), nn.Linear(d, 4), nn.ReLU(), nn.Linear(4, 1))
    features = torch.relu(x) * torch.tanh(x)
    expected = NNGPKernel.from_module(nn.Sequential(nn.Linear(d, 4), nn.ReLU(), nn.Linear(4, 1)), (d,),
                                      weight_var=WV, bias_var=BV).double()
    with torch.no_grad():
        torch.testing.assert_close(kernel_matrix(NNGPKernel, fixed, (d,), x), expected(features).to_dense(),
                                   rtol=1e-13, atol=1e-13)
    assert math.isfinite(kernel_matrix(NTKKernel, fixed, (d,), x).sum().item())


def test_a_block_of_first_layers_has_the_ntk_with_and_without_autograd():
    """A network that starts with a block of weighted branches: each branch's first layer has theta = cov (one
    tensor), which the in-place sum once changed too (the NTK without autograd was off by 4.6 on unit inputs)."""
    d = 3
    module = nn.Sequential(Parallel(nn.Linear(d, 8), nn.Linear(d, 8)), nn.Linear(8, 1))
    x = points(d)
    first = WV * (x @ x.T / d) + BV
    expected = WV * 2 * first + (WV * 2 * first + BV)
    kernel = NTKKernel.from_module(module, (d,), weight_var=WV, bias_var=BV).double()
    with torch.no_grad():
        torch.testing.assert_close(kernel(x).to_dense(), expected, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(kernel(x.clone().requires_grad_(True)).to_dense().detach(), expected, rtol=1e-13,
                               atol=1e-13)
