"""Finite-width torch networks converge to the analytic kernels (Lee et al. 2018; Jacot et al. 2018).

Networks in the NTK parametrization: h^{l+1} = sqrt(weight_var / fan_in) W h^l + sqrt(bias_var) b, W, b ~ N(0, 1),
hidden width N = 1024, one output. Over M initializations we average
  - the NNGP estimate weight_var <phi(h^L), phi(h^L')> / N + bias_var (the exact covariance of the readout given
    the last hidden layer, so only the hidden layers are sampled), and
  - the empirical NTK J(x) J(x')^T with J from torch.func.jacrev over all parameters.
Both fluctuate by O(depth / sqrt(N)) per initialization, so the mean over M draws has relative standard error
of order depth / sqrt(N M) (about 2-5% here), plus an O(1/N) bias. The tolerances below are four standard
errors measured from the spread across draws (printed on failure), with a floor of 1%.
"""
import math

import pytest
import torch
from helpers.monte_carlo import assert_mean_converged
from torch.func import jacrev

from gpytorch_nngp import NNGPKernel, NTKKernel

WIDTH = 1024


def make_net(d, depth, width, act, wv, bv, gen):
    params = {}
    fan_in = d
    for layer in range(depth + 1):
        fan_out = 1 if layer == depth else width
        params[f"w{layer}"] = torch.randn(fan_out, fan_in, generator=gen, dtype=torch.float64)
        params[f"b{layer}"] = torch.randn(fan_out, generator=gen, dtype=torch.float64)
        fan_in = fan_out

    def forward(p, x, readout=True):
        h = x
        for layer in range(depth + 1):
            w = p[f"w{layer}"]
            z = h @ w.T * math.sqrt(wv / w.shape[1]) + math.sqrt(bv) * p[f"b{layer}"]
            if layer == depth:
                return z.squeeze(-1)
            h = act(z)
            if not readout and layer == depth - 1:
                return h
        return h

    return params, forward


def inputs():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(6, 5, generator=gen, dtype=torch.float64)
    x[5] = 2 * x[0]  # a parallel pair
    return x



def _assert_converged(samples, kernel, x, wv, bv):
    """Mean of the per-draw estimates within 4 standard errors (floor 1%) of the analytic kernel, Frobenius norm."""
    kernel = kernel.double()
    kernel.weight_var, kernel.bias_var = wv, bv
    assert_mean_converged(samples, kernel(x).to_dense().detach(), 0.01)


@pytest.mark.parametrize("depth", [1, 3])
@pytest.mark.parametrize("act_name, act", [("relu", torch.relu), ("erf", torch.erf), ("tanh", torch.tanh)])
def test_empirical_nngp_converges(depth, act_name, act):
    x, wv, bv, draws = inputs(), 1.6, 0.2, 24
    gen = torch.Generator().manual_seed(depth)
    samples = []
    for _ in range(draws):
        params, forward = make_net(x.shape[1], depth, WIDTH, act, wv, bv, gen)
        h = forward(params, x, readout=False)
        samples.append(wv * h @ h.T / WIDTH + bv)
    _assert_converged(torch.stack(samples), NNGPKernel(depth, act_name), x, wv, bv)


@pytest.mark.parametrize("depth", [1, 3])
@pytest.mark.parametrize("act_name, act", [("relu", torch.relu), ("erf", torch.erf)])
def test_empirical_ntk_converges(depth, act_name, act):
    x, wv, bv, draws = inputs(), 1.6, 0.2, 6
    gen = torch.Generator().manual_seed(10 + depth)
    samples = []
    for _ in range(draws):
        params, forward = make_net(x.shape[1], depth, WIDTH, act, wv, bv, gen)
        jac = jacrev(forward)(params, x)
        flat = torch.cat([j.reshape(x.shape[0], -1) for j in jac.values()], dim=1)
        samples.append(flat @ flat.T)
    _assert_converged(torch.stack(samples), NTKKernel(depth, act_name), x, wv, bv)
