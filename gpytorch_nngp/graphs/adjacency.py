"""Adjacency matrices: checks, the usual normalizations, and conversions from edge lists and PyTorch Geometric.

Convention (as torch_geometric's message passing and neural-tangents' Aggregate with the pattern transposed): an
aggregation computes out[i] = sum_j A[i, j] x[j], so A[i, j] is the weight of the edge j -> i. For an undirected
graph A is symmetric and the direction does not matter.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch


def check_adjacency(adjacency, name: str = "adjacency", nodes: Optional[int] = None) -> torch.Tensor:
    """A (V, V) dense or sparse float tensor with finite, non-negative weights; raises a ValueError naming `name`."""
    if not isinstance(adjacency, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor (dense or sparse), got {type(adjacency).__name__}")
    if adjacency.dim() != 2 or adjacency.shape[0] != adjacency.shape[1]:
        raise ValueError(f"{name} must be a square (V, V) matrix, got shape {tuple(adjacency.shape)}")
    if nodes is not None and adjacency.shape[0] != nodes:
        raise ValueError(f"{name} has {adjacency.shape[0]} nodes, expected {nodes}")
    if adjacency.layout not in (torch.strided, torch.sparse_coo, torch.sparse_csr):
        raise ValueError(f"{name} must be dense, sparse COO or sparse CSR, got layout {adjacency.layout}")
    if adjacency.dtype.is_complex:
        raise ValueError(f"{name} must hold real weights, got dtype {adjacency.dtype}")
    adjacency = adjacency.to(torch.get_default_dtype() if not adjacency.is_floating_point() else adjacency.dtype)
    values = _values(adjacency)
    if not torch.isfinite(values).all():
        raise ValueError(f"{name} has NaN or infinite weights")
    if (values < 0).any():
        raise ValueError(f"{name} has negative weights (min {values.min().item():.3g}): aggregations sum neighbours "
                         "with non-negative weights (use normalized_adjacency for the usual normalizations)")
    return adjacency


def _values(adjacency: torch.Tensor) -> torch.Tensor:
    if adjacency.layout == torch.sparse_coo:
        return adjacency.coalesce().values()
    if adjacency.layout == torch.sparse_csr:
        return adjacency.values()
    return adjacency


def adjacency_from_edges(edge_index: torch.Tensor, num_nodes: int, edge_weight: Optional[torch.Tensor] = None,
                         symmetric: bool = False, sparse: bool = True,
                         dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """A (V, V) adjacency from a (2, E) edge list of (source, target) rows, as torch_geometric's `edge_index`.

    A[target, source] = the edge's weight (1 by default; repeated edges add up). symmetric: add each edge's reverse
    too (for an undirected graph given once per edge). sparse: a coalesced sparse COO tensor, else dense.
    dtype: the adjacency's dtype; by default edge_weight's own (float64 weights stay float64), or torch's default
    dtype for unit or integer weights.
    """
    if not isinstance(edge_index, torch.Tensor) or edge_index.dim() != 2 or edge_index.shape[0] != 2:
        raise ValueError(f"edge_index must be a (2, E) tensor of (source, target) node indices, got "
                         f"{tuple(edge_index.shape) if isinstance(edge_index, torch.Tensor) else type(edge_index)}")
    if edge_index.is_floating_point() and not torch.equal(edge_index, edge_index.round()):
        raise ValueError("edge_index must hold integer node indices")
    edge_index = edge_index.long()
    if edge_index.numel() and (edge_index.min() < 0 or edge_index.max() >= num_nodes):
        raise ValueError(f"edge_index has node indices outside [0, {num_nodes}): min {edge_index.min().item()}, "
                         f"max {edge_index.max().item()}")
    if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
        raise ValueError(f"dtype must be a floating point torch.dtype (e.g. torch.float64) or None, got {dtype!r}")
    weight = torch.ones(edge_index.shape[1], dtype=dtype) if edge_weight is None else torch.as_tensor(edge_weight)
    if dtype is not None or not weight.is_floating_point():
        weight = weight.to(dtype or torch.get_default_dtype())
    if weight.shape != (edge_index.shape[1],):
        raise ValueError(f"edge_weight must have one weight per edge ({edge_index.shape[1]}), got "
                         f"{tuple(weight.shape)}")
    source, target = edge_index
    if symmetric:
        source, target, weight = torch.cat([source, target]), torch.cat([target, source]), torch.cat([weight, weight])
    out = torch.sparse_coo_tensor(torch.stack([target, source]), weight, (num_nodes, num_nodes),
                                  check_invariants=False).coalesce()
    return check_adjacency(out if sparse else out.to_dense(), "edge_weight")


def normalized_adjacency(adjacency: torch.Tensor, self_loops: bool = True, kind: str = "symmetric") -> torch.Tensor:
    """The usual normalizations of a graph convolution, dense in, dense out; sparse in, sparse out.

    kind "symmetric": D^-1/2 (A + I) D^-1/2 (Kipf and Welling 2017's GCN), D the degrees of A + I;
    kind "row": D^-1 (A + I), the mean over neighbours (GraphSAGE's mean aggregator).
    self_loops=False uses A instead of A + I. Nodes without neighbours keep a zero row.
    """
    if kind not in ("symmetric", "row"):
        raise ValueError(f"kind must be 'symmetric' or 'row', got {kind!r}")
    adjacency = check_adjacency(adjacency)
    v = adjacency.shape[0]
    sparse = adjacency.layout != torch.strided
    a = adjacency.to_sparse_coo().coalesce() if sparse else adjacency
    if self_loops:
        eye = torch.sparse_coo_tensor(torch.arange(v).repeat(2, 1), torch.ones(v, dtype=a.dtype), (v, v),
                                      check_invariants=False)
        a = (a + eye).coalesce() if sparse else a + torch.eye(v, dtype=a.dtype, device=a.device)
    degree = torch.sparse.sum(a, 1).to_dense() if sparse else a.sum(1)
    inv = torch.where(degree > 0, degree, 1.0).pow(-0.5 if kind == "symmetric" else -1.0)
    inv = torch.where(degree > 0, inv, 0.0)
    if not sparse:
        return inv[:, None] * a * inv[None, :] if kind == "symmetric" else inv[:, None] * a
    rows, cols = a.indices()
    scale = inv[rows] * inv[cols] if kind == "symmetric" else inv[rows]
    return torch.sparse_coo_tensor(a.indices(), a.values() * scale, (v, v), check_invariants=False).coalesce()


def from_pyg(data, ignore_edge_attr: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """(features (N, d), sparse adjacency (N, N)) of a torch_geometric `Data` object: its `x` (in its own floating
    dtype; integer features become torch's default dtype) and `edge_index`, weighted by `edge_weight`, or else by
    an `edge_attr` of one value per edge ((E,) or (E, 1)), in that tensor's dtype; unit weights in x's dtype.

    An `edge_attr` with several features per edge (E, k) has no single weight: it is refused (ValueError) unless
    ignore_edge_attr=True (unit weights, or edge_weight's), rather than silently dropped."""
    if not hasattr(data, "edge_index") or not hasattr(data, "x"):
        raise TypeError(f"expected a torch_geometric Data object with x and edge_index, got {type(data).__name__}")
    if data.x is None:
        raise ValueError("the Data object has no node features (data.x is None)")
    x = data.x if data.x.is_floating_point() else data.x.to(torch.get_default_dtype())
    weight = getattr(data, "edge_weight", None)
    attr = getattr(data, "edge_attr", None)
    if weight is None and attr is not None and not ignore_edge_attr:
        if attr.dim() == 2 and attr.shape[1] == 1:
            attr = attr[:, 0]
        if attr.dim() != 1:
            raise ValueError(f"data.edge_attr has shape {tuple(attr.shape)}: {attr.shape[-1]} features per edge, "
                             "not one weight. Set data.edge_weight to the weights you mean (e.g. edge_attr[:, 0]), "
                             "or pass ignore_edge_attr=True for unit weights")
        weight = attr
    return x, adjacency_from_edges(data.edge_index, data.num_nodes, weight,
                                   dtype=None if weight is not None else x.dtype)
