"""Graph networks against neural-tangents' stax.Aggregate (fixture: tests/reference/make_graph_reference.py), to
1e-6 in float64, NNGP and NTK: a fixed graph (dense and sparse), per-input graphs packed dense and as edge lists
(graphs of different sizes, an edge listed twice), and the node-by-node covariance of one input."""
import os
import sys

import numpy as np
import pytest
import torch
from torch import nn

from gpytorch_nngp import Aggregate, GraphInputs, GraphNetwork, NNGPKernel, NTKKernel

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "reference"))
from graph_architectures import BIAS_VAR, CASES, CHANNELS, MAX_EDGES, NODES, WEIGHT_VAR  # noqa: E402

REFERENCE = np.load(os.path.join(HERE, "reference", "neural_tangents_graph_reference.npz"))
ACTIVATIONS = {"relu": nn.ReLU, "erf": lambda: __import__("gpytorch_nngp").Elementwise("erf")}


def module(spec, adjacency):
    out, channels = [], CHANNELS
    for layer in spec:
        kind = layer[0]
        if kind == "node":
            out.append(nn.Conv1d(channels, layer[1], 1))
            channels = layer[1]
        elif kind == "act":
            out.append(ACTIVATIONS[layer[1]]())
        elif kind == "agg":
            out.append(Aggregate(adjacency))
        elif kind == "gap":
            out += [nn.AdaptiveAvgPool1d(1), nn.Flatten()]
        elif kind == "flatten":
            out.append(nn.Flatten())
            channels *= NODES
        elif kind == "readout":
            out.append(nn.Linear(channels, 1))
    return nn.Sequential(*out)


def kernel_and_inputs(name, cls):
    data = {k: torch.from_numpy(REFERENCE[k]) for k in ("x1", "x2", "fixed", "weighted1", "weighted2", "counts1",
                                                         "counts2")}
    graphs, spec = CASES[name]
    if graphs.startswith("fixed"):
        adjacency = data["fixed"].to_sparse() if graphs == "fixed_sparse" else data["fixed"]
        kernel = cls.from_module(module(spec, adjacency), (CHANNELS, NODES), weight_var=WEIGHT_VAR, bias_var=BIAS_VAR)
        return kernel.double(), data["x1"].flatten(1), data["x2"].flatten(1)
    packing = GraphInputs(CHANNELS, NODES, max_edges=MAX_EDGES if graphs == "edges" else None)
    which = "counts" if graphs == "edges" else "weighted"
    x1 = packing.pack(data["x1"], data[f"{which}1"])
    x2 = packing.pack(data["x2"], data[f"{which}2"])
    kernel = cls.from_module(GraphNetwork(module(spec, None), packing), (packing.dim,), weight_var=WEIGHT_VAR,
                             bias_var=BIAS_VAR)
    return kernel.double(), x1, x2


@pytest.mark.parametrize("cls", [NNGPKernel, NTKKernel], ids=["nngp", "ntk"])
@pytest.mark.parametrize("name", [n for n, (graphs, _) in CASES.items() if graphs != "nodes"])
def test_graph_networks_equal_neural_tangents(name, cls):
    kernel, x1, x2 = kernel_and_inputs(name, cls)
    want = torch.from_numpy(REFERENCE[f"{name}_{'ntk' if cls is NTKKernel else 'nngp'}"])
    with torch.no_grad():
        torch.testing.assert_close(kernel(x1, x2).to_dense(), want, rtol=1e-6, atol=1e-6)
        # both sides' graphs and the diagonal pass: the kernel of x1 with itself, and its diagonal
        k11 = kernel(x1).to_dense()
        torch.testing.assert_close(kernel(x1, diag=True), k11.diagonal(), rtol=0, atol=0)
        torch.testing.assert_close(kernel(x1, torch.cat([x1, x2])).to_dense()[:, -len(x2):], want, rtol=1e-6,
                                   atol=1e-6)


@pytest.mark.parametrize("ntk", [False, True], ids=["nngp", "ntk"])
def test_node_kernel_equals_neural_tangents_node_by_node_covariance(ntk):
    """GraphNodeKernel over the nodes of one graph = neural-tangents' (V, V) spatial covariance of that input; the
    low-rank form with every node a landmark is exact."""
    from gpytorch_nngp import GraphNodeKernel

    _, spec = CASES["nodes_gcn"]
    adjacency = torch.from_numpy(REFERENCE["fixed"])
    features = torch.from_numpy(REFERENCE["x1"])[0].T  # (V, C): the nodes of the first input
    want = torch.from_numpy(REFERENCE[f"nodes_gcn_{'ntk' if ntk else 'nngp'}"])
    nodes = torch.arange(NODES, dtype=torch.float64).unsqueeze(-1)
    for graph, landmarks in ((adjacency, None), (adjacency.to_sparse(), None), (adjacency.to_sparse(), NODES)):
        kernel = GraphNodeKernel(module(spec, graph), features, ntk=ntk, weight_var=WEIGHT_VAR, bias_var=BIAS_VAR,
                                 landmarks=landmarks).double()
        with torch.no_grad():
            torch.testing.assert_close(kernel(nodes).to_dense(), want, rtol=1e-6, atol=1e-6)
            torch.testing.assert_close(kernel(nodes, diag=True), want.diagonal(), rtol=1e-6, atol=1e-6)
