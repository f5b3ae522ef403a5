"""The KeOps backend: every formula it supports against the dense recursion, values and gradients.

KeOps compiles each formula (and each gradient formula) with g++ on a CPU, about 15 s apiece on 2 cores. So the
formulas are checked in two ways:
- the formula builder run on plain torch tensors (tests/keops_stand_in.py stands in for LazyTensor): every
  activation, NNGP and NTK, depths 2 and 3, values and gradients, in milliseconds;
- compiled by KeOps: one end-to-end case in the default run, and every formula under `-m slow`. Builds are
  cached in KEOPS_CACHE_FOLDER (set in conftest.py), so only a cold cache pays for compilation.
"""
import pytest
import torch
from keops_stand_in import TorchLazyTensor

from gpytorch_nngp import NNGPKernel, NTKKernel, activations, backends
from gpytorch_nngp.activations import ReLU
from gpytorch_nngp.algebra.mlp import fully_connected_recursion, input_grams
from gpytorch_nngp.backends import keops

FORMULAS = ["relu", activations.LeakyReLU(0.2), activations.ABReLU(-0.3, 1.2), "abs", "identity", "erf", "sign"]
compiled = pytest.mark.skipif(not backends.KEOPS_AVAILABLE, reason="pykeops not importable")


@pytest.fixture
def torch_formulas(monkeypatch):
    """The KeOps formula builder on torch tensors (see keops_stand_in.py)."""
    monkeypatch.setattr(keops, "LazyTensor", TorchLazyTensor)
    monkeypatch.setattr(keops, "KEOPS_AVAILABLE", True)


def boundary_points(n=9, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    x[3] = x[2]  # identical: the formulas' gap threshold must give |c| = 1 and finite gradients
    x[4] = 0.0  # zero input
    x[5] = -x[2]  # antiparallel
    return x, torch.randn(n - 2, d, generator=g, dtype=torch.float64)


def dense_reference(x1, x2, weight_var, bias_var, depth, activation, ntk):
    gram, var1, var2 = input_grams(x1, x2)
    k, theta = fully_connected_recursion(gram, var1, var2, depth, activation, weight_var, bias_var, ntk=ntk)
    return theta if ntk else k


def values_and_gradients(kernel_fn, x1, x2, u, v, input_gradients=True):
    """K (n, m), and d/d(weight_var, bias_var[, x1, x2]) of sum(u * (K @ v))."""
    weight_var = torch.tensor([[1.7]], dtype=torch.float64, requires_grad=True)
    bias_var = torch.tensor([[0.2]], dtype=torch.float64, requires_grad=True)
    x1, x2 = x1.clone().requires_grad_(input_gradients), x2.clone().requires_grad_(input_gradients)
    matrix, product = kernel_fn(x1, x2, weight_var, bias_var, v)
    wrt = [weight_var, bias_var, x1, x2] if input_gradients else [weight_var, bias_var]
    grads = torch.autograd.grad((u * product).sum(), wrt)
    return [matrix.detach(), product.detach(), *grads]


def check_formula(activation, ntk, depth, x1, x2, rtol, input_gradients=True):
    act = activations.get_activation(activation)
    g = torch.Generator().manual_seed(1)
    u = torch.randn(x1.shape[0], 2, generator=g, dtype=torch.float64)
    v = torch.randn(x2.shape[0], 2, generator=g, dtype=torch.float64)

    def dense(a, b, wv, bv, rhs):
        k = dense_reference(a, b, wv, bv, depth, act, ntk)
        return k, k @ rhs

    def formula(a, b, wv, bv, rhs):
        lazy = keops.keops_kernel(a, b, wv, bv, depth, act, ntk)
        eye = torch.eye(b.shape[0], dtype=b.dtype)
        return lazy @ eye, lazy @ rhs

    expected = values_and_gradients(dense, x1, x2, u, v, input_gradients)
    got = values_and_gradients(formula, x1, x2, u, v, input_gradients)
    for name, a, b in zip(["matrix", "product", "weight_var", "bias_var", "x1", "x2"], expected, got):
        assert torch.isfinite(b).all(), name
        assert torch.allclose(a, b, rtol=rtol, atol=rtol * a.abs().max().item()), name


@pytest.mark.parametrize("depth", [2, 3])
@pytest.mark.parametrize("ntk", [False, True], ids=["nngp", "ntk"])
@pytest.mark.parametrize("activation", FORMULAS, ids=str)
def test_formula_matches_dense(activation, ntk, depth, torch_formulas):
    x, z = boundary_points()
    check_formula(activation, ntk, depth, x, x, rtol=1e-9)  # symmetric, with the boundary rows
    check_formula(activation, ntk, depth, x, z, rtol=1e-9)  # cross-covariance


def test_operator_through_kernel_matches_dense(torch_formulas):
    """The kernel's keops backend end to end (operator, products, MLL-style gradients), formulas on torch."""
    x, _ = boundary_points()
    v = torch.randn(x.shape[0], 3, dtype=torch.float64)
    out = {}
    for backend in ("dense", "keops"):
        k = NTKKernel(2, "relu", backend=backend).double()
        op = k(x).evaluate_kernel()
        loss = (op @ v).square().sum()
        out[backend] = (loss.detach(), *torch.autograd.grad(loss, [k.raw_weight_var, k.raw_bias_var]))
        if backend == "keops":
            assert isinstance(op, backends.KeOpsNetworkKernelOperator)
    for a, b in zip(out["dense"], out["keops"]):
        assert torch.allclose(a, b, rtol=1e-10)


def compiled_against_dense(gradients: bool):
    """Products of the relu NNGP (depth 1) through compiled KeOps and dense, and optionally the gradients of
    their squared norm wrt weight_var and bias_var."""
    x, _ = boundary_points(12, 3)
    v = torch.randn(12, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    out = {}
    for backend in ("dense", "keops"):
        k = NNGPKernel(1, "relu", backend=backend).double()
        k.weight_var, k.bias_var = 1.7, 0.2
        op = k(x).evaluate_kernel()
        product = op @ v
        grads = torch.autograd.grad(product.square().sum(), [k.raw_weight_var, k.raw_bias_var]) if gradients else ()
        out[backend] = (product.detach(), *grads)
        if backend == "keops":
            assert isinstance(op, backends.KeOpsNetworkKernelOperator)
    # Measured 2.0e-8 (product) and 3.5e-8 / 9.4e-9 (gradients) relative to the largest entry: KeOps sums <x, x'>
    # in its own order, so the formula treats gaps below 1e-12 k11 k22 as 0, which moves sqrt(gap) slightly for
    # highly correlated pairs. Bound 1e-6.
    for a, b in zip(out["dense"], out["keops"]):
        assert torch.isfinite(b).all()
        assert ((a - b).abs().max() / a.abs().max()).item() < 1e-6


@compiled
def test_compiled_keops_products_match_dense():
    """One case through the real KeOps compiler, end to end (kernel, operator, KeOps reduction): 17 s on a cold
    cache. Its gradient formulas take about 45 s more to compile, so they run under -m slow; the formulas'
    gradients are checked on torch above."""
    compiled_against_dense(gradients=False)


@compiled
@pytest.mark.slow
def test_compiled_keops_hyperparameter_gradients_match_dense():
    """What a marginal-likelihood step needs from KeOps: gradients wrt weight_var and bias_var, compiled."""
    compiled_against_dense(gradients=True)


@compiled
@pytest.mark.slow
@pytest.mark.parametrize("ntk", [False, True], ids=["nngp", "ntk"])
@pytest.mark.parametrize("activation", FORMULAS, ids=str)
def test_compiled_formula_matches_dense(activation, ntk):
    """Every formula compiled by KeOps: values, products, gradients wrt weight_var and bias_var (about 2 minutes a
    formula on a cold cache, 2 cores: each gradient formula is a compilation of its own)."""
    x, z = boundary_points()
    check_formula(activation, ntk, 2, x, z, rtol=1e-6, input_gradients=False)  # tolerance: see compiled_against_dense


@compiled
@pytest.mark.slow
def test_compiled_input_gradients_match_dense():
    """Gradients wrt both inputs through compiled KeOps, for the relu NTK (their formulas are checked on torch for
    every activation above)."""
    x, z = boundary_points()
    check_formula("relu", True, 2, x, z, rtol=1e-6)


def test_keops_backend_errors_are_clear():
    with pytest.raises(ValueError, match="keops"):
        NTKKernel(2, "tanh", backend="keops")
    with pytest.raises(ValueError, match="batch_shape"):
        NNGPKernel(2, "relu", backend="keops", batch_shape=torch.Size([2]))


def test_auto_uses_keops_only_for_cuda():
    x = torch.zeros(backends.DENSE_MAX_ENTRIES // 10 + 1, 3)
    assert backends.resolve_backend("auto", x[:10], x, ReLU()) == "lazy"  # a CPU tensor: KeOps is slow there


def test_ard_length_scales_through_the_keops_formula(torch_formulas):
    """ARD on the KeOps backend: the formula takes the scaled inputs; values and the length scales' gradients
    equal the dense kernel's."""
    x, _ = boundary_points()
    v = torch.randn(x.shape[0], 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    out = {}
    for backend in ("dense", "keops"):
        k = NTKKernel(2, "relu", backend=backend, ard_num_dims=4).double()
        k.lengthscale = torch.tensor([0.5, 1.0, 2.0, 1.5], dtype=torch.float64)
        loss = (k(x).evaluate_kernel() @ v).square().sum()
        out[backend] = (loss.detach(), *torch.autograd.grad(loss, [k.raw_lengthscale, k.raw_weight_var]))
    for a, b in zip(out["dense"], out["keops"]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
