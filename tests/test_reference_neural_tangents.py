"""Equality with neural-tangents (the reference implementation), float64.

The fixture was written by tests/reference/make_neural_tangents_reference.py (neural-tangents 0.6.5, JAX 0.4.30,
x64); its inputs contain zero, parallel, antiparallel and duplicated rows. When neural-tangents is importable,
a live comparison also runs.
"""
import math

import pytest
import torch

from gpytorch_nngp import NNGPKernel, NTKKernel
from nt_reference import AS_CALLABLE, CLOSED_FORM, load

X1, X2, CASES = load()


def _kernel(cls, depth, act, wv, bv):
    k = cls(depth, act).double()
    k.weight_var, k.bias_var = wv, bv
    return k


def _max_rel_err(ours, ref):
    """Entrywise relative error, with entries below 1e-9 of the matrix scale compared absolutely at that scale."""
    scale = ref.abs().max()
    return ((ours - ref).abs() / ref.abs().clamp_min(1e-9 * scale)).max().item()


def _compare(case, act, tol):
    name, depth, wv, bv, scale = case
    ref = CASES[case]
    for kind, cls in (("nngp", NNGPKernel), ("ntk", NTKKernel)):
        k = _kernel(cls, depth, act, wv, bv)
        with torch.no_grad():
            for pair, args in (("11", (scale * X1,)), ("12", (scale * X1, scale * X2))):
                err = _max_rel_err(k(*args).to_dense(), ref[(kind, pair)])
                assert err < tol, f"{kind} {pair} {case}: relative error {err:.2e} > {tol:.0e}"


@pytest.mark.parametrize("case", sorted(CASES), ids=lambda c: "-".join(map(str, c)))
def test_closed_forms_match_neural_tangents(case):
    _compare(case, CLOSED_FORM[case[0]](), 1e-6)


# Known gap: erf at layer variance ~36 behaves like a step up to very high Hermite order; the series reaches
# 2.8e-3 at degree 128 and 2.3e-4 at 512 (error ~ K^-1.2). strict=True makes this fail once it is fixed.
_STEEP = pytest.mark.xfail(strict=True, reason="steep smooth activation at variance ~36: Hermite series converges slowly")
NUMERICAL = [pytest.param(c, marks=_STEEP) if c == ("erf", 2, 4.0, 0.5, 3.0) else c
             for c in sorted(CASES) if c[0] in AS_CALLABLE]


@pytest.mark.parametrize("case", NUMERICAL, ids=lambda c: "-".join(map(str, c)) if isinstance(c, tuple) else None)
def test_numerical_nngp_matches_neural_tangents(case):
    """The same functions as plain callables, through the Hermite series: NNGP to 1e-4 (variances up to ~40)."""
    name, depth, wv, bv, scale = case
    ref = CASES[case]
    k = _kernel(NNGPKernel, depth, AS_CALLABLE[name], wv, bv)
    with torch.no_grad():
        for pair, args in (("11", (scale * X1,)), ("12", (scale * X1, scale * X2))):
            err = _max_rel_err(k(*args).to_dense(), ref[("nngp", pair)])
            assert err < 1e-4, f"{pair} {case}: relative error {err:.2e}"


def test_live_neural_tangents_if_installed():
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    stax = pytest.importorskip("neural_tangents").stax
    import numpy as np

    depth, wv, bv = 2, 1.3, 0.4
    dense = stax.Dense(1, W_std=math.sqrt(wv), b_std=math.sqrt(bv))
    _, _, kernel_fn = stax.serial(*([dense, stax.Relu()] * depth), dense)
    ref = kernel_fn(X1.numpy(), X2.numpy(), ("nngp", "ntk"))
    for kind, cls in (("nngp", NNGPKernel), ("ntk", NTKKernel)):
        ours = _kernel(cls, depth, "relu", wv, bv)(X1, X2).to_dense().detach()
        assert _max_rel_err(ours, torch.from_numpy(np.asarray(getattr(ref, kind)))) < 1e-6
