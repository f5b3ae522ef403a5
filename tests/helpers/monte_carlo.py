"""Monte Carlo of finite torch networks drawn from the prior, shared by the convergence tests: the draws (torch's
standard parametrization, weights N(0, weight_var / fan_in), biases N(0, bias_var)), the empirical NTK of the NTK
parametrization, and the convergence check (the mean of per-draw estimates within 4 standard errors)."""
import math

import torch
from torch import nn
from torch.func import functional_call, jacrev

from gpytorch_nngp import SelfAttention

WV, BV = 1.6, 0.2  # the variances the architecture Monte Carlo tests draw with


def assert_mean_converged(samples, ref, floor: float):
    """The mean of per-draw estimates (draws, n, n) is within 4 standard errors of ref (n, n), in the relative
    Frobenius norm, or within `floor` when the draws agree more closely than that."""
    err = (torch.linalg.norm(samples.mean(0) - ref) / torch.linalg.norm(ref)).item()
    stderr = (torch.linalg.norm(samples.std(0)) / math.sqrt(len(samples)) / torch.linalg.norm(ref)).item()
    assert err < max(4 * stderr, floor), f"relative Frobenius error {err:.4f}, standard error {stderr:.4f}"


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


def assert_kernel_converged(samples, cls, module, shape, x):
    """The mean of the per-draw estimates is within 4 standard errors (floor 2%) of cls.from_module's kernel."""
    with torch.no_grad():
        ref = cls.from_module(module, shape, weight_var=WV, bias_var=BV).double()(x).to_dense()
    assert_mean_converged(samples, ref, 0.02)
