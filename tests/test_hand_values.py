"""ReLU and erf recursions checked against values worked out by hand (math module only)."""
import math

import pytest
import torch

from gpytorch_nngp import NNGPKernel, NTKKernel


def test_relu_depth1_by_hand():
    # x = (1, 0), x' = (0, 1): <x,x'>/d = 0, |x|^2/d = |x'|^2/d = 1/2. weight_var = 2, bias_var = 0.5.
    # K0_12 = 0.5, K0_11 = K0_22 = 2 * 0.5 + 0.5 = 1.5. c = 1/3, theta = acos(1/3).
    # F = sqrt(1.5 * 1.5) / (2 pi) (sin theta + (pi - theta) c);  K1 = 2 F + 0.5.
    # Fdot = (pi - theta) / (2 pi);  Theta1 = K1 + 2 Fdot K0_12.
    c = 1 / 3
    theta = math.acos(c)
    f = 1.5 / (2 * math.pi) * (math.sin(theta) + (math.pi - theta) * c)
    k1 = 2 * f + 0.5
    fdot = (math.pi - theta) / (2 * math.pi)
    ntk1 = k1 + 2 * fdot * 0.5
    # diagonal: F(k, k, k) = k / 2 for ReLU, so K1_11 = 2 * 0.75 + 0.5 = 2.0 and Theta1_11 = 2.0 + 2 * 0.5 * 1.5 = 3.5
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    nngp = NNGPKernel(1, "relu").double()
    ntk = NTKKernel(1, "relu").double()
    for k in (nngp, ntk):
        k.weight_var, k.bias_var = 2.0, 0.5
    kn, kt = nngp(x).to_dense(), ntk(x).to_dense()
    assert math.isclose(kn[0, 1].item(), k1, rel_tol=1e-12)
    assert math.isclose(kt[0, 1].item(), ntk1, rel_tol=1e-12)
    assert math.isclose(kn[0, 0].item(), 2.0, rel_tol=1e-12)
    assert math.isclose(kt[0, 0].item(), 3.5, rel_tol=1e-12)


def test_erf_depth2_by_hand():
    # one input dimension, x = 1, x' = -2: <x,x'> = -2, |x|^2 = 1, |x'|^2 = 4. weight_var = 1, bias_var = 0.25.
    wv, bv = 1.0, 0.25
    k12, k11, k22 = -2 * wv + bv, wv + bv, 4 * wv + bv
    t12 = k12
    for _ in range(2):
        f12 = 2 / math.pi * math.asin(2 * k12 / math.sqrt((1 + 2 * k11) * (1 + 2 * k22)))
        fdot = 4 / math.pi / math.sqrt((1 + 2 * k11) * (1 + 2 * k22) - 4 * k12 ** 2)
        f11 = 2 / math.pi * math.asin(2 * k11 / (1 + 2 * k11))
        f22 = 2 / math.pi * math.asin(2 * k22 / (1 + 2 * k22))
        new12 = wv * f12 + bv
        t12 = new12 + wv * fdot * t12
        k12, k11, k22 = new12, wv * f11 + bv, wv * f22 + bv
    x1 = torch.tensor([[1.0]], dtype=torch.float64)
    x2 = torch.tensor([[-2.0]], dtype=torch.float64)
    nngp = NNGPKernel(2, "erf").double()
    ntk = NTKKernel(2, "erf").double()
    for k in (nngp, ntk):
        k.weight_var, k.bias_var = wv, bv
    assert math.isclose(nngp(x1, x2).to_dense().item(), k12, rel_tol=1e-12)
    assert math.isclose(ntk(x1, x2).to_dense().item(), t12, rel_tol=1e-12)


@pytest.mark.parametrize("activation", ["relu", "leaky_relu", "abs", "identity"])
@pytest.mark.parametrize("kernel_class", [NNGPKernel, NTKKernel])
def test_weight_var_is_the_output_scale_of_homogeneous_activations(kernel_class, activation):
    # For a positively homogeneous activation and bias_var -> 0 (1e-30 here; 0 is refused), every layer multiplies
    # the kernel by weight_var: K^L(weight_var) = weight_var^(L+1) K^L(1), and so for the NTK. An output scale s is
    # weight_var * s^(1/(L+1)), which is why the README advises against a ScaleKernel around these kernels.
    x = torch.randn(5, 3, dtype=torch.float64)
    depth, scale = 3, 7.0
    base, moved = (kernel_class(depth, activation).double() for _ in range(2))
    base.weight_var, moved.weight_var = 1.3, 1.3 * scale ** (1 / (depth + 1))  # set in float64, not rounded to float32
    base.bias_var = moved.bias_var = 1e-30
    torch.testing.assert_close(moved(x).to_dense(), scale * base(x).to_dense(), rtol=1e-10, atol=1e-12)


def test_weight_var_is_not_the_output_scale_of_erf():
    # erf saturates: the same identity fails, so there a ScaleKernel adds a degree of freedom.
    x = torch.randn(5, 3, dtype=torch.float64)
    base, moved = (NNGPKernel(3, "erf").double() for _ in range(2))
    base.weight_var, moved.weight_var = 1.3, 1.3 * 7.0 ** 0.25
    base.bias_var = moved.bias_var = 1e-30
    assert not torch.allclose(moved(x).to_dense(), 7.0 * base(x).to_dense(), rtol=1e-2)
