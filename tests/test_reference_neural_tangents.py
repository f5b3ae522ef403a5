"""Equality with neural-tangents (the reference implementation), float64.

The fixture was written by tests/reference/make_neural_tangents_reference.py (neural-tangents 0.6.5, JAX 0.4.30,
x64); its inputs contain zero, parallel, antiparallel and duplicated rows. When neural-tangents is importable,
a live comparison also runs.
"""
import math

import pytest
import torch
from nt_reference import AS_CALLABLE, CLOSED_FORM, load

from gpytorch_nngp import NNGPKernel, NTKKernel

X1, X2, CASES = load()


def _kernel(cls, depth, act, wv, bv):
    k = cls(depth, act).double()
    k.weight_var, k.bias_var = wv, bv
    return k


def _max_rel_err(ours, ref):
    """Entrywise relative error, with entries below 1e-9 of the matrix scale compared absolutely at that scale."""
    scale = ref.abs().max()
    return ((ours - ref).abs() / ref.abs().clamp_min(1e-9 * scale)).max().item()


def _compare_kind(case, act, kind, cls, tol):
    name, depth, wv, bv, scale = case
    k = _kernel(cls, depth, act, wv, bv)
    with torch.no_grad():
        for pair, args in (("11", (scale * X1,)), ("12", (scale * X1, scale * X2))):
            err = _max_rel_err(k(*args).to_dense(), CASES[case][(kind, pair)])
            assert err < tol, f"{kind} {pair} {case}: relative error {err:.2e} > {tol:.0e}"


def _compare(case, act, tol):
    for kind, cls in (("nngp", NNGPKernel), ("ntk", NTKKernel)):
        _compare_kind(case, act, kind, cls, tol)


@pytest.mark.parametrize("case", sorted(CASES), ids=lambda c: "-".join(map(str, c)))
def test_closed_forms_match_neural_tangents(case):
    _compare(case, CLOSED_FORM[case[0]](), 1e-6)


NUMERICAL = [c for c in sorted(CASES) if c[0] in AS_CALLABLE]
# Known gap: at input scale 3 and weight_var 4 one row reaches layer variance ~570, where erf' is a bump of width
# 1/34 in z. The NTK needs Hermite degree ~10x the variance (measured: 1e-5 at variance 100); at the default
# max_degree=1024 erf reaches 2e-4 there (GELU passes). The NNGP meets 1e-4. strict: fails once fixed.
_STEEP_NTK = {("erf", 2, 4.0, 0.5, 3.0)}
NUMERICAL_NTK = [pytest.param(c, marks=pytest.mark.xfail(strict=True, reason="steep phi' at variance ~570"))
                 if c in _STEEP_NTK else c for c in NUMERICAL]


def _case_id(c):
    return "-".join(map(str, c)) if isinstance(c, tuple) else None


@pytest.mark.parametrize("case", NUMERICAL, ids=_case_id)
def test_numerical_nngp_matches_neural_tangents(case):
    """The same functions as plain callables, through the Hermite series, to 1e-4: layer variances reach ~570
    (erf there is nearly a step), and the kinks of ReLU/abs/leaky ReLU are split off in closed form."""
    _compare_kind(case, AS_CALLABLE[case[0]], "nngp", NNGPKernel, 1e-4)


@pytest.mark.parametrize("case", NUMERICAL_NTK, ids=_case_id)
def test_numerical_ntk_matches_neural_tangents(case):
    """NTK of the same callables (phi' by autograd; the jump of ReLU' is split off) to 1e-4."""
    _compare_kind(case, AS_CALLABLE[case[0]], "ntk", NTKKernel, 1e-4)


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
