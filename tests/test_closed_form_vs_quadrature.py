"""Every closed-form F and Fdot against independent 2-D numerical integration (scipy dblquad).

Fdot uses phi' in closed form (a step for the ReLU family, a Gaussian for erf); sign has phi' = 0 a.e.
"""
import math

import numpy as np
import pytest
import torch
from scipy import integrate, special

from gpytorch_nngp import activations as A

CASES = {
    "relu": (A.ReLU(), lambda x: np.maximum(x, 0), lambda x: float(x > 0)),
    "leaky_relu": (A.LeakyReLU(0.2), lambda x: x if x > 0 else 0.2 * x, lambda x: 1.0 if x > 0 else 0.2),
    "abrelu": (A.ABReLU(-0.5, 1.5), lambda x: 1.5 * x if x > 0 else -0.5 * x, lambda x: 1.5 if x > 0 else -0.5),
    "abs": (A.Abs(), abs, lambda x: 1.0 if x > 0 else -1.0),
    "identity": (A.Identity(), lambda x: x, lambda x: 1.0),
    "erf": (A.Erf(), special.erf, lambda x: 2 / math.sqrt(math.pi) * math.exp(-x * x)),
    "gelu": (A.GELU(), lambda x: x * special.ndtr(x),
             lambda x: special.ndtr(x) + x * math.exp(-x * x / 2) / math.sqrt(2 * math.pi)),
    "sign": (A.Sign(), np.sign, lambda x: 0.0),
}
TRIPLES = [(0.3, 1.0, 1.0), (-0.7, 1.2, 0.8), (2.9, 3.0, 4.0), (-5.0, 10.0, 12.0), (0.0, 0.5, 2.0)]


def expectation(f, g, k12, k11, k22):
    """E[f(u) g(v)] for (u, v) ~ N(0, [[k11, k12], [k12, k22]]) by nested 1-D quadrature.

    u = sqrt(k11) z1 and v = sqrt(k22) (c z1 + s z2) with independent standard normals z1, z2; the breakpoints
    u = 0 (z1 = 0) and v = 0 (z2 = -c z1 / s) are passed to scipy so kinks and steps are integrated exactly.
    """
    c = k12 / math.sqrt(k11 * k22)
    s = math.sqrt(max(1 - c * c, 0.0))
    pdf = lambda z: math.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)  # noqa: E731

    def inner(z1):
        fu = f(math.sqrt(k11) * z1)
        if fu == 0.0:
            return 0.0
        mean = math.sqrt(k22) * c * z1
        val = integrate.quad(lambda z2: g(mean + math.sqrt(k22) * s * z2) * pdf(z2), -10, 10,
                             points=[min(max(-c * z1 / s, -10), 10)], epsabs=1e-12, epsrel=1e-11, limit=200)[0]
        return fu * val

    return integrate.quad(lambda z1: inner(z1) * pdf(z1), -10, 10, points=[0.0], epsabs=1e-11, epsrel=1e-10,
                          limit=200)[0]


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("triple", TRIPLES)
def test_closed_form_matches_quadrature(name, triple):
    act, f, df = CASES[name]
    k12, k11, k22 = (torch.tensor(v, dtype=torch.float64) for v in triple)
    F, Fdot = act.dual(k12, k11, k22, ntk=True)
    ref_f = expectation(f, f, *triple)
    ref_fdot = expectation(df, df, *triple)
    scale = math.sqrt(triple[1] * triple[2])
    assert abs(F.item() - ref_f) < 2e-6 * scale + 1e-7
    assert abs(Fdot.item() - ref_fdot) < 2e-6 * max(1.0, abs(ref_fdot)) + 1e-7
