"""Numerical activations at large layer variance against an independent nested quadrature (float64).

A kinked or saturating function seen at variance 10-100 is a near-step or near-kink on the scale of the
Gaussian: low-degree quadrature (neural-tangents' default ElementwiseNumerical) and short Hermite series both
break there. The reference integrates E[h(u1) h(u2)] directly: u2 given u1 is Gaussian, so
E = int p(z1) h(s1 z1) int p(z2) h(s2 (c z1 + sqrt(1 - c^2) z2)) dz2 dz1, by composite Simpson on [-12, 12].
"""
import math

import pytest
import torch

from gpytorch_nngp.activations import Numerical


def _reference(fn, v1, v2, c, deriv, nodes=2001):
    z = torch.linspace(-12, 12, nodes, dtype=torch.float64)
    h = z[1] - z[0]
    w = torch.ones(nodes, dtype=torch.float64)
    w[1:-1:2], w[2:-1:2] = 4.0, 2.0
    w = w * h / 3 * torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)

    def values(x):
        if not deriv:
            return fn(x)
        x = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(fn(x).sum(), x)
        return g

    inner = values(math.sqrt(v2) * (c * z[:, None] + math.sqrt(1 - c * c) * z[None, :])) @ w
    return (values(math.sqrt(v1) * z) * inner * w).sum().item()


FUNCTIONS = {
    "tanh": torch.tanh,
    "softplus": torch.nn.functional.softplus,
    "silu": torch.nn.functional.silu,
    "elu": torch.nn.functional.elu,
    "sigmoid": torch.sigmoid,
}


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
@pytest.mark.parametrize("variances", [(10.0, 10.0), (30.0, 12.0), (100.0, 100.0)], ids=lambda v: f"{v[0]:g}-{v[1]:g}")
def test_large_variance_nngp_and_ntk_to_1e4(name, variances):
    v1, v2 = variances
    cs = [-0.6, 0.3, 0.95, 0.999]
    act = Numerical(FUNCTIONS[name], name=name)
    k12 = torch.tensor(cs, dtype=torch.float64) * math.sqrt(v1 * v2)
    k11 = torch.full((len(cs),), v1, dtype=torch.float64)
    k22 = torch.full((len(cs),), v2, dtype=torch.float64)
    f, fdot = act.dual(k12, k11, k22, ntk=True)
    for ours, deriv in ((f, False), (fdot, True)):
        ref = torch.tensor([_reference(FUNCTIONS[name], v1, v2, c, deriv) for c in cs], dtype=torch.float64)
        err = ((ours - ref).abs() / ref.abs().max()).max().item()
        assert err < 1e-4, f"{name} {'NTK' if deriv else 'NNGP'} at variances {variances}: {err:.1e}"


@pytest.mark.parametrize("fn", [torch.relu, torch.abs, torch.sign, lambda x: torch.where(x > 0, 2.0 * x, -0.3 * x)],
                         ids=["relu", "abs", "sign", "abrelu"])
def test_kinks_at_zero_are_split_off_exactly(fn):
    """Kinked callables: the jump/kink at 0 goes to closed forms, so the series is exact up to quadrature error."""
    from gpytorch_nngp.activations import ABReLU, Sign

    act = Numerical(fn)
    closed = {torch.sign: Sign()}.get(fn)
    if closed is None:
        slopes = {torch.relu: (0.0, 1.0), torch.abs: (-1.0, 1.0)}.get(fn, (-0.3, 2.0))
        closed = ABReLU(*slopes)
    k11 = torch.tensor([[0.5], [3.0], [40.0]], dtype=torch.float64)
    k22 = k11.mT
    c = torch.tensor([[1.0, 0.2, -0.999], [0.2, 1.0, 0.9999], [-0.999, 0.9999, 1.0]], dtype=torch.float64)
    k12 = c * (k11 * k22).sqrt()
    ours = act.dual(k12, k11, k22, ntk=True)
    exact = closed.dual(k12, k11, k22, ntk=True)
    for o, e in zip(ours, exact):
        assert torch.allclose(o, e, rtol=1e-7, atol=1e-9 * e.abs().max().item())
