"""One way to ask for the NNGP or the NTK: every network kernel has a read-only `kind` and `with_kind`, which
shares the parameters; isinstance tells the kind of what NNGPKernel / NTKKernel make; predict uses with_kind and
changes nothing of the user's kernel, and takes GraphNodeKernel (node-level dynamics)."""
import math

import pytest
import torch
from torch import nn

from gpytorch_nngp import Aggregate, ArchitectureKernel, GraphNodeKernel, NNGPKernel, NTKKernel
from gpytorch_nngp.graphs import normalized_adjacency
from gpytorch_nngp.predict import gradient_descent_mse, gradient_descent_mse_ensemble

CNN = nn.Sequential(nn.Conv1d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(4, 1))


def graph_kernel(ntk=True):
    ring = torch.zeros(6, 6)
    ring[torch.arange(6), (torch.arange(6) + 1) % 6] = 1.0
    a = normalized_adjacency(ring + ring.T)
    module = nn.Sequential(Aggregate(a), nn.Conv1d(2, 8, 1), nn.ReLU(), Aggregate(a), nn.Conv1d(8, 1, 1))
    features = torch.randn(6, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return GraphNodeKernel(module, features, ntk=ntk).double()


@pytest.mark.parametrize("make", [lambda: NTKKernel(2, "erf", ard_num_dims=3),
                                  lambda: NTKKernel.from_module(CNN, (1, 3)), graph_kernel],
                         ids=["fully connected", "architecture", "graph nodes"])
def test_with_kind_shares_the_parameters_and_changes_nothing(make):
    ntk = make().double()
    assert ntk.kind == "ntk" and ntk.with_kind("ntk") is ntk
    nngp = ntk.with_kind("nngp")
    assert nngp.kind == "nngp" and ntk.kind == "ntk"
    assert nngp.raw_weight_var is ntk.raw_weight_var and nngp.raw_bias_var is ntk.raw_bias_var
    with pytest.raises(AttributeError):
        ntk.kind = "nngp"
    with pytest.raises(ValueError, match="kind must be 'nngp' or 'ntk'"):
        ntk.with_kind("gp")
    x = torch.arange(6, dtype=torch.float64)[:, None] if isinstance(ntk, GraphNodeKernel) else \
        torch.randn(5, 3, dtype=torch.float64)
    with torch.no_grad():
        before = ntk(x).to_dense()
        theta, k = ntk(x).to_dense(), nngp(x).to_dense()
        assert not torch.allclose(theta, k)
        ntk.weight_var = 1.3  # one parameter: the other kind follows
        assert nngp.weight_var.item() == pytest.approx(1.3)
        ntk.weight_var = 2.0
        torch.testing.assert_close(ntk(x).to_dense(), before)
    params = {id(p) for p in ntk.parameters()}
    assert {id(p) for p in nngp.parameters()} == params


def test_isinstance_tells_the_kind():
    cnn_ntk, cnn_nngp = NTKKernel.from_module(CNN, (1, 3)), NNGPKernel.from_module(CNN, (1, 3))
    assert isinstance(cnn_ntk, NTKKernel) and not isinstance(cnn_ntk, NNGPKernel)
    assert isinstance(cnn_nngp, NNGPKernel) and not isinstance(cnn_nngp, NTKKernel)
    assert isinstance(cnn_ntk, ArchitectureKernel) and type(cnn_ntk) is ArchitectureKernel
    assert isinstance(cnn_ntk.with_kind("nngp"), NNGPKernel)
    mlp = NTKKernel.from_module(nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 1)), (3,))
    assert type(mlp) is NTKKernel and not isinstance(mlp, NNGPKernel)

    class Mine(NNGPKernel):  # a subclass claims only its own instances
        pass

    assert not isinstance(cnn_nngp, Mine)


def test_predict_leaves_the_kernel_alone_and_nests():
    torch.manual_seed(0)
    x, y, x_test = torch.randn(20, 3, dtype=torch.float64), torch.randn(20, 1, dtype=torch.float64), \
        torch.randn(4, 3, dtype=torch.float64)
    kernel = NTKKernel(2, "relu").double()
    outer = gradient_descent_mse_ensemble(kernel, x, y, diag_reg=1e-3)
    inner = gradient_descent_mse_ensemble(kernel, x[:10], y[:10], diag_reg=1e-3)
    a = outer(t=5.0, x_test=x_test, compute_cov=True)
    inner(t=5.0, x_test=x_test, compute_cov=True)  # a second predict_fn on the same kernel, in between
    b = outer(t=5.0, x_test=x_test, compute_cov=True)
    torch.testing.assert_close(a.ntk.mean, b.ntk.mean)
    assert kernel.kind == "ntk" and "_ntk" not in vars(kernel)


def test_node_level_dynamics_on_a_graph_node_kernel():
    kernel = graph_kernel()
    nodes = torch.arange(6, dtype=torch.float64)[:, None]
    train, test = nodes[:4], nodes[4:]
    y = torch.tensor([[1.0], [-1.0], [0.5], [0.0]], dtype=torch.float64)
    fn = gradient_descent_mse_ensemble(kernel, train, y, learning_rate=1.0, diag_reg=1e-4)
    out = fn(t=[3.0, math.inf], x_test=test, get="ntk")
    with torch.no_grad():
        theta = kernel(nodes).to_dense()
    reg = theta[:4, :4] + 1e-4 * theta[:4, :4].diagonal().mean() * torch.eye(4, dtype=torch.float64)
    one = gradient_descent_mse(reg, y, learning_rate=1.0)(3.0, 0.0, torch.zeros(2, 1, dtype=torch.float64),
                                                          theta[4:, :4])
    torch.testing.assert_close(out[0], one[1], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out[1], theta[4:, :4] @ torch.linalg.solve(reg, y), rtol=1e-8, atol=1e-10)
    nngp_only = gradient_descent_mse_ensemble(graph_kernel(ntk=False), train, y, diag_reg=1e-4)
    with pytest.raises(ValueError, match="the NTK ensemble needs an NTKKernel"):
        nngp_only(t=1.0, x_test=test, get="ntk")
