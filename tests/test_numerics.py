"""Finite values and gradients at the |c| = 1 boundary, for every activation, float32 and float64."""
import pytest
import torch

from gpytorch_nngp import NNGPKernel, NTKKernel, activations

ACTIVATIONS = ["relu", "erf", "abs", "identity", "gelu", "sign", activations.LeakyReLU(0.2), "tanh", "softplus", "elu",
               activations.Numerical(torch.relu, name="relu-callable"),
               activations.Numerical(torch.sign, name="sign-callable")]


def boundary_inputs(dtype):
    torch.manual_seed(0)
    x = torch.randn(6, 4, dtype=dtype)
    x[1] = x[0]  # identical
    x[2] = 3.0 * x[0]  # parallel
    x[3] = -x[0]  # antiparallel
    x[4] = 0.0  # zero input
    return x


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("cls", [NNGPKernel, NTKKernel])
@pytest.mark.parametrize("act", ACTIVATIONS, ids=str)
def test_finite_values_and_gradients_at_boundary(act, cls, dtype):
    x = boundary_inputs(dtype).requires_grad_(True)
    k = cls(3, act, weight_var=1.8, bias_var=0.1).to(dtype)
    full = k(x).to_dense()
    cross = k(x, x[:3].detach().clone() * 1.0).to_dense()
    diag = k(x, diag=True)
    assert torch.isfinite(full).all() and torch.isfinite(cross).all() and torch.isfinite(diag).all()
    assert torch.allclose(diag, full.diagonal(), rtol=1e-5 if dtype == torch.float32 else 1e-10)
    (full.sum() + cross.sum() + diag.sum()).backward()
    for name, g in (("x", x.grad), ("raw_weight_var", k.raw_weight_var.grad), ("raw_bias_var", k.raw_bias_var.grad)):
        assert g is not None and torch.isfinite(g).all(), f"non-finite gradient wrt {name}"


@pytest.mark.parametrize("act", ["relu", "abs", activations.LeakyReLU(0.3), "tanh",
                                 activations.Numerical(torch.relu, name="relu-callable")], ids=str)
def test_hyperparameter_gradients_match_finite_differences(act):
    """Analytic backward of the arc-cosine family and of the numerical path (series, tail model and split-off kink)
    vs central differences, float64, with boundary rows."""
    x = boundary_inputs(torch.float64)
    for cls in (NNGPKernel, NTKKernel):
        k = cls(2, act).double()

        def value(wv, bv, k=k):
            k.weight_var, k.bias_var = wv, bv
            return k(x).to_dense().sum()

        k.weight_var, k.bias_var = 1.7, 0.3
        loss = k(x).to_dense().sum()
        gw, gb = torch.autograd.grad(loss, [k.raw_weight_var, k.raw_bias_var])
        # chain rule of the softplus constraint: d value / d raw = d value / d var * sigmoid(raw)
        sw, sb = torch.sigmoid(k.raw_weight_var).item(), torch.sigmoid(k.raw_bias_var).item()
        eps = 1e-6
        with torch.no_grad():
            fd_w = (value(1.7 + eps, 0.3) - value(1.7 - eps, 0.3)) / (2 * eps)
            fd_b = (value(1.7, 0.3 + eps) - value(1.7, 0.3 - eps)) / (2 * eps)
        assert torch.allclose(gw.sum() / sw, fd_w, rtol=1e-6)
        assert torch.allclose(gb.sum() / sb, fd_b, rtol=1e-6)


def test_input_gradient_matches_finite_differences_off_boundary():
    torch.manual_seed(1)
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    other = torch.randn(2, 3, dtype=torch.float64)  # its own storage: gradcheck perturbs x in place
    for act in ["relu", "gelu", "erf", "tanh"]:
        k = NTKKernel(2, act).double()
        ok = torch.autograd.gradcheck(lambda inp, k=k: k(inp, other).to_dense(), (x,), eps=1e-6, atol=1e-5)
        assert ok


def test_deep_kernel_is_near_constant_but_finite():
    """Deep ReLU kernels flatten toward a constant (correlations go to the fixed point 1, Schoenholz et al. 2017):
    values stay finite, no NaN."""
    x = torch.randn(20, 5, dtype=torch.float64)
    k = NNGPKernel(200, "relu", weight_var=2.0, bias_var=0.5).double()(x).to_dense()
    corr = k / torch.sqrt(k.diagonal()[:, None] * k.diagonal()[None, :])
    assert torch.isfinite(k).all()
    assert corr.min() > 0.99
