"""Finite-width torch CNNs, initialized from the prior, converge to the architecture kernels.

The modules are the same nn.Module objects a user passes to from_module, at 256 channels, with weights
N(0, weight_var / fan_in) and biases N(0, bias_var) (torch's standard parametrization). Over M draws we average
  - the NNGP estimate weight_var <h(x), h(x')> / fan_in + bias_var, with h the input of the final Linear layer (the
    exact covariance of the readout given h, so only the layers below it are sampled), and
  - the empirical NTK of the NTK parametrization, sum over parameters p of var(p) df/dp df/dp^T with var(p) the prior
    variance of p (each weight tensor's Jacobian scaled by weight_var / fan_in, each bias's by bias_var), from
    torch.func.jacrev.
The tolerance is four standard errors of the mean over draws (floor 2%), as in test_monte_carlo.py.
"""
import math

import pytest
import torch
from helpers.monte_carlo import BV, WV, assert_kernel_converged, draw, empirical_ntks
from torch import nn

from gpytorch_nngp import NNGPKernel, NTKKernel, Parallel, Residual, SelfAttention

WIDTH = 256


def networks():
    c = WIDTH
    shared = nn.ReLU()
    return {
        "flatten": (nn.Sequential(nn.Conv2d(1, c, 3, padding=1), nn.ReLU(), nn.Conv2d(c, c, 3, padding=1), nn.ReLU(),
                                  nn.Flatten(), nn.Linear(c * 25, 1)), (1, 5, 5)),
        "pool_residual_layernorm": (nn.Sequential(
            nn.Conv2d(2, c, 3, padding=1), Residual(nn.Sequential(nn.ReLU(), nn.Conv2d(c, c, 3, padding=1))),
            nn.LayerNorm([c, 4, 4], elementwise_affine=False), nn.ReLU(), nn.AvgPool2d(2),
            nn.Conv2d(c, c, 2, padding=1, padding_mode="circular"), nn.Tanh(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(c, 1)), (2, 4, 4)),
        # One ReLU instance at every depth, as people write it: nn.Sequential runs it after each conv.
        "shared_activation": (nn.Sequential(nn.Conv2d(1, c, 3, padding=1), shared, nn.Conv2d(c, c, 3, padding=1),
                                            shared, nn.Conv2d(c, c, 3, padding=1), shared, nn.Flatten(),
                                            nn.Linear(c * 9, 1)), (1, 3, 3)),
        # Branches of unequal widths concatenated (weighted by their channel shares), then a product of branches.
        "parallel": (nn.Sequential(
            nn.Conv2d(1, c, 3, padding=1),
            Parallel(nn.Sequential(nn.ReLU(), nn.Conv2d(c, c // 4, 3, padding=1)),
                     nn.Conv2d(c, 3 * c // 4, 1), merge="concat"),
            nn.Conv2d(c, c, 3, padding=1),
            Parallel(nn.Sequential(nn.ReLU(), nn.Conv2d(c, c, 1)),
                     nn.Sequential(nn.GELU(), nn.Conv2d(c, c, 3, padding=1)), merge="prod"),
            nn.Flatten(), nn.Linear(c * 16, 1)), (1, 4, 4)),
        # Attention: the logits converge as key_channels grows (their noise biases a softmax by O(1 / key_channels));
        # heads average the per-head noise of the weights, so a draw's kernel estimate varies less.
        "attention": (nn.Sequential(
            nn.Conv1d(2, c, 3, padding=1),
            SelfAttention(c, c, heads=8, key_channels=512, value_channels=32, key_var=1.3, query_var=0.8,
                          value_var=1.5, out_var=0.9, bias_var=0.1, positional="sum", spatial_shape=(6,)),
            nn.ReLU(), nn.Flatten(), nn.Linear(c * 6, 1)), (2, 6)),
        # A U-Net's down and up halves: strided conv, then transposed convs with and without output padding.
        "conv_transpose": (nn.Sequential(
            nn.Conv2d(1, c, 2, stride=2), nn.ReLU(), nn.ConvTranspose2d(c, c, 3, stride=2, padding=1, output_padding=1),
            nn.ReLU(), nn.ConvTranspose2d(c, c, 2), nn.Tanh(), nn.Flatten(),
            nn.Linear(c * 25, 1)), (1, 4, 4)),
        "conv1d": (nn.Sequential(nn.Conv1d(3, c, 3, stride=2), nn.ReLU(), nn.Conv1d(c, c, 3, padding="same"),
                                 nn.GELU(), nn.Flatten(), nn.Linear(c * 3, 1)), (3, 7)),
    }








def inputs(shape):
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(5, math.prod(shape), generator=gen, dtype=torch.float64)
    x[4] = -0.5 * x[0]  # antiparallel
    return x


def _case(name):
    """The float64 module of a case, its input shape, the inputs (n, F) and the same as images (n, *shape)."""
    module, shape = networks()[name]
    x = inputs(shape)
    return module.double(), shape, x, x.reshape(len(x), *shape)








@pytest.mark.parametrize("name", sorted(networks()))
def test_cnn_nngp_converges(name):
    module, shape, x, batch = _case(name)
    gen = torch.Generator().manual_seed(1)
    samples = []
    for _ in range(24):
        draw(module, gen)
        with torch.no_grad():
            h = module[:-1](batch).reshape(len(x), -1)
        samples.append(WV * h @ h.T / h.shape[1] + BV)
    assert_kernel_converged(torch.stack(samples), NNGPKernel, module, shape, x)


@pytest.mark.parametrize("name", ["attention", "flatten", "parallel", "pool_residual_layernorm", "shared_activation"])
def test_cnn_empirical_ntk_converges(name):
    module, shape, x, batch = _case(name)
    samples = empirical_ntks(module, batch, len(x), torch.Generator().manual_seed(2), draws=6)
    assert_kernel_converged(samples, NTKKernel, module, shape, x)
