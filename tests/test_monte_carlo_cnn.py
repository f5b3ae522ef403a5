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
from test_monte_carlo import assert_mean_converged
from torch import nn
from torch.func import functional_call, jacrev

from gpytorch_nngp import NNGPKernel, NTKKernel, Parallel, Residual, SelfAttention

WIDTH = 256
WV, BV = 1.6, 0.2


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


def prior_variances(module):
    """Each parameter's prior variance: weight_var / fan_in for weights, bias_var for biases."""
    out = {}
    for name, sub in module.named_modules():
        if isinstance(sub, (nn.Conv1d, nn.Conv2d, nn.Linear, nn.ConvTranspose1d, nn.ConvTranspose2d)):
            # weight (out, in, *k), transposed (in, out, *k): fan-in = in * taps, as the kernel normalizes
            fan_in = sub.weight[0].numel() if not isinstance(sub, (nn.ConvTranspose1d, nn.ConvTranspose2d)) else \
                sub.weight[:, 0].numel()
            out[f"{name}.weight" if name else "weight"] = WV / fan_in
            out[f"{name}.bias" if name else "bias"] = BV
        if isinstance(sub, SelfAttention):  # N(0, 1) weights, scaled in its forward (NTK parametrization)
            out.update({f"{name}.{p}": 1.0 for p, _ in sub.named_parameters()})
    return out


def draw(module, gen):
    variances = prior_variances(module)
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * math.sqrt(variances[name]))
    return variances


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


def _assert_converged(samples, cls, module, shape, x):
    """The mean of the per-draw estimates is within 4 standard errors (floor 2%) of cls.from_module's kernel."""
    with torch.no_grad():
        ref = cls.from_module(module, shape, weight_var=WV, bias_var=BV).double()(x).to_dense()
    assert_mean_converged(samples, ref, 0.02)


def empirical_ntks(module, inputs, points: int, gen, draws: int):
    """Empirical NTKs (draws, points, points) of the NTK parametrization: sum over parameters of their prior
    variance times the Jacobians' Gram, for `draws` prior draws of module's parameters."""
    samples = []
    for _ in range(draws):
        variances = draw(module, gen)
        params = {k: v.detach() for k, v in module.named_parameters()}
        jac = jacrev(lambda p: functional_call(module, p, (inputs,)).squeeze(-1))(params)
        samples.append(sum(variances[k] * j.reshape(points, -1) @ j.reshape(points, -1).T for k, j in jac.items()))
    return torch.stack(samples)


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
    _assert_converged(torch.stack(samples), NNGPKernel, module, shape, x)


@pytest.mark.parametrize("name", ["attention", "flatten", "parallel", "pool_residual_layernorm", "shared_activation"])
def test_cnn_empirical_ntk_converges(name):
    module, shape, x, batch = _case(name)
    samples = empirical_ntks(module, batch, len(x), torch.Generator().manual_seed(2), draws=6)
    _assert_converged(samples, NTKKernel, module, shape, x)
