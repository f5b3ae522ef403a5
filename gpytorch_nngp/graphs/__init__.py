"""Graphs: adjacency helpers and the packing of whole graphs into GPyTorch's (n, d) inputs.

The aggregation layer itself is `gpytorch_nngp.Aggregate` (a torch module, frontend/graph_modules.py) and its kernel map
`algebra/graph.py`; the kernel over the nodes of one graph is `gpytorch_nngp.GraphNodeKernel`.
"""
from .adjacency import adjacency_from_edges, check_adjacency, from_pyg, normalized_adjacency
from .datasets import NodeData, contextual_sbm, karate_club
from .packing import GraphInputs

__all__ = ["GraphInputs", "NodeData", "adjacency_from_edges", "check_adjacency", "contextual_sbm", "from_pyg",
           "karate_club", "normalized_adjacency"]
