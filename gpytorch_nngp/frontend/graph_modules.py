"""Graph aggregation as a torch module, and the wrapper that feeds packed graphs to it."""
from __future__ import annotations

import contextvars
from typing import Optional

import torch

from ..algebra.graph import apply_graph
from ..graphs.adjacency import check_adjacency
from ..graphs.packing import GraphInputs

# The graphs of the rows a GraphNetwork is running on, for the Aggregate(adjacency=None) modules inside it.
_CURRENT_GRAPHS: contextvars.ContextVar = contextvars.ContextVar("gpytorch_nngp_graphs", default=None)


class Aggregate(torch.nn.Module):
    r"""Graph aggregation over the nodes: forward(x) for x (N, C, V) is out[..., i] = sum_j A[i, j] x[..., j]
    (neural-tangents' stax.Aggregate with the pattern A^T; Kipf and Welling 2017 with a normalized A).

    Per-node dense layers are nn.Conv1d(c_in, c_out, 1), so a graph convolutional network is an nn.Sequential, and
    NNGPKernel.from_module / NTKKernel.from_module give its kernels.

    Args:
        adjacency: the (V, V) adjacency, dense or sparse (any non-negative weighting: raw, with self-loops,
            normalized; see gpytorch_nngp.graphs.normalized_adjacency), A[i, j] the weight of the edge j -> i.
            None: every input has its own graph (whole graphs as inputs), packed with it by
            gpytorch_nngp.graphs.GraphInputs; such a module runs inside a GraphNetwork.

    The kernel map on a pair of inputs with graphs A and A' (the NTK alike):

    .. math::

        K_{out}(x, x') = A \, K_{in}(x, x') \, A'^T.

    Example:
        >>> import torch
        >>> from gpytorch_nngp import Aggregate
        >>> a = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
        >>> Aggregate(a)(torch.tensor([[[1.0, 2.0]]])).tolist()
        [[[2.0, 1.0]]]
    """

    def __init__(self, adjacency: Optional[torch.Tensor] = None):
        super().__init__()
        if adjacency is not None:
            adjacency = check_adjacency(adjacency)
            if adjacency.layout == torch.sparse_csr:
                adjacency = adjacency.to_sparse_coo()
            adjacency = adjacency.coalesce() if adjacency.layout == torch.sparse_coo else adjacency
        self.register_buffer("adjacency", adjacency)

    @property
    def nodes(self) -> Optional[int]:
        return None if self.adjacency is None else self.adjacency.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2:
            raise ValueError(f"Aggregate: expected inputs (N, C, V), got shape {tuple(x.shape)}")
        if self.adjacency is not None:
            if x.shape[-1] != self.nodes:
                raise ValueError(f"Aggregate: the adjacency has {self.nodes} nodes, the input {x.shape[-1]} "
                                 f"(shape {tuple(x.shape)}, nodes last)")
            return apply_graph(x, self.adjacency.to(x.dtype), per_input=False)
        graphs = _CURRENT_GRAPHS.get()
        if graphs is None:
            raise ValueError("Aggregate(adjacency=None) takes each input's own graph: run it inside "
                             "gpytorch_nngp.GraphNetwork(module, GraphInputs(...)) on packed rows")
        return apply_graph(x, graphs.to(x.dtype), per_input=True)

    def extra_repr(self) -> str:
        if self.adjacency is None:
            return "adjacency=None (per-input graphs)"
        kind = "dense" if self.adjacency.layout == torch.strided else "sparse"
        return f"{self.nodes} nodes, {kind}"


class GraphNetwork(torch.nn.Module):
    """A network on whole graphs: forward(rows) for packed rows (N, graphs.dim) (gpytorch_nngp.graphs.GraphInputs)
    runs `module` on the node features (N, C, V), with every Aggregate(adjacency=None) inside it aggregating over
    each row's own graph. NNGPKernel.from_module(GraphNetwork(...), (graphs.dim,)) gives a kernel on the same rows.

    Args:
        module: the network on node features, e.g. nn.Sequential(Aggregate(), nn.Conv1d(C, 64, 1), nn.ReLU(),
            Aggregate(), nn.Conv1d(64, 64, 1), nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(64, 1)).
        graphs: the packing of the rows.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from gpytorch_nngp import Aggregate, GraphInputs, GraphNetwork, NNGPKernel
        >>> packing = GraphInputs(channels=2, nodes=3)
        >>> graphs = [torch.ones(3, 3), torch.eye(2)]
        >>> rows = packing.pack([torch.randn(2, 3), torch.randn(2, 2)], graphs)
        >>> net = GraphNetwork(nn.Sequential(Aggregate(), nn.Conv1d(2, 8, 1), nn.ReLU(), nn.AdaptiveAvgPool1d(1),
        ...                                  nn.Flatten(), nn.Linear(8, 1)), packing)
        >>> net(rows).shape
        torch.Size([2, 1])
        >>> NNGPKernel.from_module(net, input_shape=(packing.dim,))(rows).shape
        torch.Size([2, 2])
    """

    def __init__(self, module: torch.nn.Module, graphs: GraphInputs):
        super().__init__()
        if not isinstance(module, torch.nn.Module):
            raise TypeError(f"GraphNetwork needs a torch.nn.Module, got {type(module).__name__}")
        if not isinstance(graphs, GraphInputs):
            raise TypeError(f"graphs must be a gpytorch_nngp.graphs.GraphInputs, got {type(graphs).__name__}")
        self.module, self.graphs = module, graphs

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        features, graphs = self.graphs.unpack(rows)
        token = _CURRENT_GRAPHS.set(graphs)
        try:
            return self.module(features)
        finally:
            _CURRENT_GRAPHS.reset(token)

    def extra_repr(self) -> str:
        return repr(self.graphs)
