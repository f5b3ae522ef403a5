"""Wide torch graph networks, initialized from the prior, converge to their kernels: a GCN on a fixed graph, and a
GraphNetwork on whole graphs packed with their own adjacencies (dense and as edge lists). Estimates as in
test_monte_carlo_cnn.py (NNGP from the readout's input, the empirical NTK from torch.func.jacrev)."""

import pytest
import torch
from helpers.monte_carlo import BV, WV, assert_kernel_converged, draw, empirical_ntks
from torch import nn

from gpytorch_nngp import Aggregate, GraphInputs, GraphNetwork, NNGPKernel, NTKKernel
from gpytorch_nngp.graphs import normalized_adjacency

WIDTH, V, C = 256, 6, 2


def graphs(n, seed):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        edges = (torch.rand(V, V, generator=gen) < 0.4).double()
        out.append(edges * (0.5 + torch.rand(V, V, generator=gen, dtype=torch.float64)))
    return torch.stack(out)


def gcn(adjacency):
    c = WIDTH
    return nn.Sequential(nn.Conv1d(C, c, 1), nn.ReLU(), Aggregate(adjacency), nn.Conv1d(c, c, 1), nn.ReLU(),
                         Aggregate(adjacency), nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(c, 1)).double()


def cases():
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(5, C, V, generator=gen, dtype=torch.float64)
    x[4] = -0.5 * x[0]
    ring = torch.zeros(V, V, dtype=torch.float64)
    ring[torch.arange(V), (torch.arange(V) + 1) % V] = 1.0
    fixed = normalized_adjacency(ring + ring.T)
    out = {"fixed": (gcn(fixed), (C, V), x.flatten(1))}
    for name, edges in (("dense", None), ("edges", 40)):
        packing = GraphInputs(C, V, max_edges=edges)
        rows = packing.pack(x, graphs(len(x), 1))
        out[name] = (GraphNetwork(gcn(None), packing), (packing.dim,), rows)
    return out


def _readout_input(module, rows):
    captured = []
    last = [m for m in module.modules() if isinstance(m, nn.Linear)][-1]
    handle = last.register_forward_hook(lambda m, inp, out: captured.append(inp[0]))
    with torch.no_grad():
        module(rows)
    handle.remove()
    return captured[0]


@pytest.mark.parametrize("name", ["fixed", "dense", "edges"])
def test_graph_nngp_converges(name):
    module, shape, rows = cases()[name]
    inputs = rows.reshape(len(rows), *shape) if name == "fixed" else rows
    gen = torch.Generator().manual_seed(1)
    samples = []
    for _ in range(24):
        draw(module, gen)
        h = _readout_input(module, inputs)
        samples.append(WV * h @ h.T / h.shape[1] + BV)
    assert_kernel_converged(torch.stack(samples), NNGPKernel, module, shape, rows)


@pytest.mark.parametrize("name", ["fixed", "edges"])
def test_graph_empirical_ntk_converges(name):
    module, shape, rows = cases()[name]
    inputs = rows.reshape(len(rows), *shape) if name == "fixed" else rows
    samples = empirical_ntks(module, inputs, len(rows), torch.Generator().manual_seed(2), draws=6)
    assert_kernel_converged(samples, NTKKernel, module, shape, rows)
