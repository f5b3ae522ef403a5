"""Float64 asked for is float64 kept: constructor variances set again exactly when a kernel moves to float64 before
training, and graph helpers that keep the features' and weights' dtype."""
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from gpytorch_nngp import NNGPKernel, NTKKernel
from gpytorch_nngp.graphs import GraphInputs, adjacency_from_edges, from_pyg


def test_variances_written_are_the_variances_held_in_float64():
    net = nn.Sequential(nn.Conv1d(2, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(20, 1))
    kernels = [NTKKernel.from_module(net, (2, 5), weight_var=1.5, bias_var=0.1).double(),
               NNGPKernel(2, "relu", weight_var=1.7, bias_var=0.15, ard_num_dims=3).to(torch.float64)]
    for k in kernels:  # once 1.500000034710427 and 0.09999998150501897 (float32 on the way)
        assert abs(k.weight_var.item() / (1.5 if k is kernels[0] else 1.7) - 1) < 1e-15
        assert abs(k.bias_var.item() / (0.1 if k is kernels[0] else 0.15) - 1) < 1e-15
    assert torch.equal(kernels[1].lengthscale, torch.ones(1, 3, dtype=torch.float64))
    # The closed form of a depth-1 ReLU NNGP in float64 with the variances written, to 1e-14.
    x = torch.randn(4, 3, dtype=torch.float64)
    k = NNGPKernel(1, "relu", weight_var=1.5, bias_var=0.1).double()
    k0 = 1.5 * x @ x.T / 3 + 0.1
    d = k0.diagonal().sqrt()
    cos = (k0 / d[:, None] / d[None, :]).clamp(-1, 1)
    theta = torch.arccos(cos)
    k1 = d[:, None] * d[None, :] * (torch.sin(theta) + (torch.pi - theta) * cos) / (2 * torch.pi)
    with torch.no_grad():
        torch.testing.assert_close(k(x).to_dense(), 1.5 * k1 + 0.1, rtol=1e-14, atol=0)
    # A parameter changed after construction (an optimizer step, an assignment) is the truth from then on.
    trained = NNGPKernel(2, "relu", weight_var=1.7)
    with torch.no_grad():
        trained.raw_weight_var.add_(0.1)
    value = trained.weight_var.item()
    assert trained.double().weight_var.item() == pytest.approx(value, rel=1e-7)
    assert trained.weight_var.item() != pytest.approx(1.7, rel=1e-3)


def test_graph_helpers_keep_the_dtype():
    edges = torch.tensor([[0, 1, 1], [1, 2, 2]])
    weights = torch.tensor([0.1234567891, 0.25, 0.5], dtype=torch.float64)
    a = adjacency_from_edges(edges, 3, weights)
    assert a.dtype == torch.float64 and a.to_dense()[1, 0].item() == 0.1234567891  # once 0.1234567880 (float32)
    assert a.to_dense()[2, 1].item() == 0.75  # repeated edges add up, in float64
    assert adjacency_from_edges(edges, 3).dtype == torch.get_default_dtype()
    assert adjacency_from_edges(edges, 3, dtype=torch.float64).dtype == torch.float64
    for bad in (torch.int64, "float64"):
        with pytest.raises(ValueError, match="dtype must be a floating point torch.dtype"):
            adjacency_from_edges(edges, 3, dtype=bad)
    x = torch.randn(3, 2, dtype=torch.float64)
    data = SimpleNamespace(x=x, edge_index=edges, num_nodes=3, edge_attr=weights)
    features, adjacency = from_pyg(data)
    assert features is x and adjacency.dtype == torch.float64  # the graphs guide: from_pyg returns data.x
    torch.testing.assert_close(adjacency.to_dense(), a.to_dense(), rtol=0, atol=0)
    unit = from_pyg(SimpleNamespace(x=x, edge_index=edges, num_nodes=3))[1]
    assert unit.dtype == torch.float64 and unit.to_dense()[2, 1] == 2
    column = SimpleNamespace(x=x, edge_index=edges, num_nodes=3, edge_attr=weights[:, None])
    torch.testing.assert_close(from_pyg(column)[1].to_dense(), a.to_dense(), rtol=0, atol=0)
    several = SimpleNamespace(x=x, edge_index=edges, num_nodes=3, edge_attr=torch.randn(3, 4))
    with pytest.raises(ValueError, match=r"edge_attr has shape \(3, 4\): 4 features per edge"):
        from_pyg(several)
    assert from_pyg(several, ignore_edge_attr=True)[1].to_dense()[2, 1] == 2
    packing = GraphInputs(2, 3, max_edges=4)
    rows = packing.pack_pyg([data, data])
    assert rows.dtype == torch.float64
    feats, graphs = packing.unpack(rows)
    assert feats.dtype == torch.float64
    with pytest.raises(ValueError, match="features per edge"):
        packing.pack_pyg([several])
