"""The kernels say when they cannot be accurate: numerical activations past their series or quadrature warn, float32
at large input scales stays accurate (no cancellation, no overflow), and a kernel that would not be finite raises."""
import warnings

import pytest
import torch

from gpytorch_nngp import NNGPKernel, NTKKernel
from gpytorch_nngp.functional.activations import GELU, Erf
from gpytorch_nngp.warnings import AccuracyWarning


def inputs(n=6, d=5, scale=1.0, seed=0):
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale
    x[1] = x[0]  # a duplicate: the diagonal case
    return x


def test_a_numerical_activation_on_raw_pixels_warns():
    """tanh's NTK on 0-255 pixels: phi' is a spike far narrower than the quadrature's node spacing."""
    x = torch.rand(4, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 255
    with pytest.warns(AccuracyWarning, match=r"activation 'tanh'.*Standardize the inputs"):
        NTKKernel(1, "tanh").double()(x).to_dense()
    with pytest.warns(AccuracyWarning, match="activation 'erf'"):  # torch.erf as a callable, at input scale 1000
        NTKKernel(1, torch.erf).double()(inputs(scale=1000.0)).to_dense()


@pytest.mark.parametrize("cls", [NNGPKernel, NTKKernel])
@pytest.mark.parametrize("activation", ["tanh", "silu", "elu", "softplus", "sigmoid", torch.erf])
def test_standardized_inputs_do_not_warn(cls, activation):
    with warnings.catch_warnings():
        warnings.simplefilter("error", AccuracyWarning)
        cls(3, activation).double()(inputs()).to_dense()


@pytest.mark.parametrize("cls", [NNGPKernel, NTKKernel])
@pytest.mark.parametrize("activation", ["erf", "gelu", "relu", "identity", "abs"])
@pytest.mark.parametrize("scale", [1e3, 1e10])
def test_float32_at_large_scale_matches_float64(cls, activation, scale):
    if (cls, activation, scale) == (NTKKernel, "erf", 1e10):
        pytest.skip("erf's NTK of near-parallel points at variances past 1 / eps is ill-conditioned in float64 too")
    x = inputs(scale=scale)
    k64 = cls(2, activation).double()(x).to_dense().detach()
    try:
        k32 = cls(2, activation)(x.float()).to_dense().detach().double()
    except ValueError as error:  # float32 cannot hold this kernel: it must say so, never return inf or NaN
        assert scale == 1e10 and activation == "gelu" and "not finite in torch.float32" in str(error)
        return
    err = ((k32 - k64).abs().max() / k64.abs().max()).item()
    assert err < 2e-4, f"float32 relative error {err:.1e}"


@pytest.mark.parametrize("activation", [Erf(), GELU()])
def test_erf_and_gelu_duals_keep_their_gradients(activation):
    """The stable forms have the gradients of the textbook formulas: gradcheck inside the positive semidefinite
    region, and on its boundary (k12^2 = k11 k22, where finite differences step outside) the textbook's autograd."""
    k11 = torch.tensor([0.7, 2.0, 1.3], dtype=torch.float64, requires_grad=True)
    k22 = torch.tensor([1.1, 3.0, 0.4], dtype=torch.float64, requires_grad=True)
    k12 = torch.tensor([0.2, 2.0, -0.5], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, c: activation.dual(c, a, b, ntk=True), (k11, k22, k12))

    def textbook(k12, k11, k22):
        if isinstance(activation, Erf):
            prod = (1 + 2 * k11) * (1 + 2 * k22)
            return 2 / torch.pi * torch.asin(2 * k12 / prod.sqrt()), 4 / torch.pi / (prod - 4 * k12 * k12).sqrt()
        d = ((1 + k11) * (1 + k22) - k12 * k12).sqrt()
        alpha, p, p1 = torch.atan2(k12, d), k11 * k22, (1 + k11) * (1 + k22)
        f = 0.25 * k12 + ((k12 * k12 + p * d * d) / (p1 * d) + k12 * alpha) / (2 * torch.pi)
        return f, 0.25 + alpha / (2 * torch.pi) + k12 / (2 * torch.pi * d) * (1 / (d * d) + (1 - p) / p1 + 1)

    on_boundary = [torch.tensor([1.5, -0.8], dtype=torch.float64, requires_grad=True) for _ in range(2)]
    v1, v2 = on_boundary
    grads = []
    for dual in (lambda c, a, b: activation.dual(c, a, b, ntk=True), textbook):
        f, fdot = dual(v1 * 1.0, v1 * v1.sign(), v1 * v1.sign())  # k12 = +-k11 = +-k22
        grads.append(torch.autograd.grad((f + fdot).sum(), v1))
        f, fdot = dual(v2 * 2.0, v2 * v2.sign() * 4.0, v2 * v2.sign())  # k12^2 = k11 k22, unequal variances
        grads.append(torch.autograd.grad((f + fdot).sum(), v2))
    for ours, reference in zip(grads[:2], grads[2:]):
        torch.testing.assert_close(ours, reference)


@pytest.mark.parametrize("backend", ["dense", "lazy"])
@pytest.mark.parametrize("activation", ["relu", "identity", "erf", "tanh"])
def test_a_kernel_that_overflows_raises(backend, activation):
    x = inputs(scale=1e20).float()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AccuracyWarning)
        with pytest.raises(ValueError, match="not finite|overflow"):
            NNGPKernel(1, activation, backend=backend)(x).to_dense()
        with pytest.raises(ValueError, match="not finite|overflow"):
            NNGPKernel(1, activation, backend=backend)(x, diag=True)


def test_an_architecture_kernel_that_overflows_raises():
    from torch import nn

    module = nn.Sequential(nn.Conv1d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(12, 1))
    for backend in ("dense", "lazy"):
        with pytest.raises(ValueError, match="squared norms of its points overflow torch.float32"):
            NNGPKernel.from_module(module, (1, 5), backend=backend)(torch.full((3, 5), 1e20)).to_dense()
        with pytest.raises(ValueError, match="not finite in torch.float32"):  # finite Gram, infinite variances
            NNGPKernel.from_module(module, (1, 5), backend=backend, weight_var=1e30)(torch.full((3, 5), 1e8)).to_dense()
