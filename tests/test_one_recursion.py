"""The fully connected kernel is the layer algebra of its MLP, for every registered activation.

NNGPKernel/NTKKernel run their MLP's layers compiled to a FlatProgram (algebra/flat.py), with its fast paths (the
input Gram cache, in-place recycling, forward-mode variance derivatives, KeOps); those must compute what the
general propagation (Dense and Nonlinearity layers through Network) computes for the same nn.Sequential. Values,
diagonals and the gradients wrt the variances (the lazy backend's forward-mode derivative where the activation has
one) are compared on inputs with duplicate, zero and antiparallel rows.
"""
import pytest
import torch
from torch import nn

from gpytorch_nngp import ArchitectureKernel, Elementwise, NNGPKernel, NTKKernel
from gpytorch_nngp.algebra import Conv, Dense, FlatProgram, Nonlinearity, mlp_program
from gpytorch_nngp.algebra.mlp import input_grams
from gpytorch_nngp.frontend.translate import network_from_module
from gpytorch_nngp.functional.activations import NAMES, ABReLU, Numerical, get_activation

ACTIVATIONS = {name: (lambda name=name: get_activation(name)) for name in NAMES}
ACTIVATIONS["abrelu_-0.3_1.2"] = lambda: ABReLU(-0.3, 1.2)


def points(n=7):
    x = torch.randn(n, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    x[1], x[2], x[3] = x[0], 0.0, -x[4]
    return x


@pytest.mark.parametrize("cls", [NNGPKernel, NTKKernel], ids=["nngp", "ntk"])
@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_fully_connected_kernel_is_the_algebra_of_its_mlp(name, cls):
    activation = ACTIVATIONS[name]()
    mlp = nn.Sequential(nn.Linear(5, 8), Elementwise(activation), nn.Linear(8, 8), Elementwise(activation),
                        nn.Linear(8, 1))
    fast = cls.from_module(mlp, (5,), weight_var=1.6, bias_var=0.2).double()
    assert type(fast) is cls
    general = ArchitectureKernel(network_from_module(mlp, (5,)), ntk=cls is NTKKernel, weight_var=1.6,
                                 bias_var=0.2).double()
    x = points()
    tol = 1e-7 if isinstance(activation, Numerical) else 1e-12  # the series is fitted per call: to its accuracy
    with torch.no_grad():
        want = general(x).to_dense()
        torch.testing.assert_close(fast(x).to_dense(), want, rtol=tol, atol=tol)
        torch.testing.assert_close(fast(x, diag=True), general(x, diag=True), rtol=tol, atol=tol)
    # gradients wrt the variances: the lazy fully connected operator (forward mode where the activation has it)
    # against autograd through the algebra
    lazy = cls.from_module(mlp, (5,), weight_var=1.6, bias_var=0.2, backend="lazy").double()
    rhs = torch.randn(len(x), 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    grads = []
    for kernel in (lazy, general):
        kernel.zero_grad()
        (kernel(x) @ rhs).pow(2).sum().backward()
        grads.append(torch.stack([kernel.raw_weight_var.grad.sum(), kernel.raw_bias_var.grad.sum()]))
    torch.testing.assert_close(grads[0], grads[1], rtol=max(tol, 1e-9), atol=max(tol, 1e-9))


@pytest.mark.parametrize("ntk", [False, True], ids=["nngp", "ntk"])
def test_the_program_is_compiled_from_the_layers_from_module_builds(ntk):
    """The layers from_module builds for an MLP compile to the program the fully connected kernel runs, and its three
    forms agree: values (in place and with autograd) and the forward-mode tangents against autograd."""
    mlp = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 1))
    network = network_from_module(mlp, (5,))
    compiled = FlatProgram(network.layers)
    assert [type(step).__name__ for step in compiled.steps] == ["Affine", "Dual", "Affine", "Dual", "Affine"]
    x = points()
    gram, var1, var2 = input_grams(x, x, x1_eq_x2=True)
    want = ArchitectureKernel(network, ntk=ntk, weight_var=1.6, bias_var=0.2).double()(x).to_dense().detach()
    w, b = torch.tensor(1.6, dtype=torch.float64), torch.tensor(0.2, dtype=torch.float64)
    with torch.no_grad():
        k, theta = compiled.values(gram.clone(), var1, var2, w, b, ntk=ntk, x1_eq_x2=True, consume_gram=True)
    torch.testing.assert_close(theta if ntk else k, want, rtol=1e-7, atol=1e-7)  # tanh: the Hermite series

    relu = mlp_program(2, get_activation("relu"))
    gram, var1, var2 = input_grams(x, x[:4])
    before = gram.clone()
    weights = torch.randn(gram.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    tangents = relu.tangents(gram, var1, var2, 1.6, 0.2, ntk, weights)
    assert torch.equal(gram, before)  # the caller's input state is read, never overwritten
    wv, bv = w.clone().requires_grad_(), b.clone().requires_grad_()
    k, theta = relu.values(gram, var1, var2, wv, bv, ntk=ntk)
    autograd = torch.autograd.grad(((theta if ntk else k) * weights).sum(), (wv, bv))
    torch.testing.assert_close(torch.stack(tangents), torch.stack(autograd), rtol=1e-10, atol=1e-10)


def test_a_program_takes_only_flat_layers_with_shared_variances():
    with pytest.raises(ValueError, match="without a flat form"):
        FlatProgram([Dense(), Conv((3,), (1,), ((1, 1),))])
    with pytest.raises(ValueError, match="shares one weight_var"):
        FlatProgram([Dense(), Nonlinearity(get_activation("relu")), Dense(index=1)])
    with pytest.raises(ValueError, match="starts with a Dense"):
        FlatProgram([Nonlinearity(get_activation("relu")), Dense()])
