"""Whole graphs as GPyTorch inputs: each graph packed into one row of an (n, d) tensor.

GPyTorch, its variational strategies and BoTorch pass inputs as (..., n, d) tensors and slice, expand and
concatenate them along the point axis. A graph therefore travels as one row: its node features, channel first and
zero-padded to `nodes` nodes, then its edges, either as a dense `nodes x nodes` adjacency (dense graphs) or as an
edge list of `max_edges` (source, target, weight) triples padded with source = target = -1 (sparse graphs, as
neural-tangents' sparse Aggregate pattern). Padded nodes are real nodes without edges and with zero features: a
network sees them as torch sees the padded tensor (neural-tangents does the same).

    row = [features (C * V) | adjacency (V * V)]                             dense
    row = [features (C * V) | sources (E) | targets (E) | weights (E)]       edge lists

An edge j -> i (source j, target i) with weight w contributes w x[j] to node i: A[i, j] = w.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import torch

from .adjacency import check_adjacency, from_pyg


class GraphInputs:
    """The packing of graphs with `channels` features per node and at most `nodes` nodes (and, for edge lists,
    at most `max_edges` directed edges per graph).

    Args:
        channels: C, node features.
        nodes: V, nodes per graph after padding.
        max_edges: None for dense adjacencies in the pack, or E for edge lists (sparse aggregation, O(E) per
            covariance column). An undirected edge is two directed edges.
    """

    def __init__(self, channels: int, nodes: int, max_edges: Optional[int] = None):
        for name, value in (("channels", channels), ("nodes", nodes), ("max_edges", max_edges)):
            if value is None and name == "max_edges":
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"GraphInputs: {name} must be a positive int, got {value!r}")
        self.channels, self.nodes, self.max_edges = channels, nodes, max_edges

    @property
    def sparse(self) -> bool:
        return self.max_edges is not None

    @property
    def dim(self) -> int:
        """d, the width of a packed row."""
        return self.channels * self.nodes + (3 * self.max_edges if self.sparse else self.nodes ** 2)

    def __repr__(self):
        edges = f", max_edges={self.max_edges}" if self.sparse else ""
        return f"GraphInputs(channels={self.channels}, nodes={self.nodes}{edges})"

    def __eq__(self, other):
        return isinstance(other, GraphInputs) and (self.channels, self.nodes, self.max_edges) == (
            other.channels, other.nodes, other.max_edges)

    def __hash__(self):
        return hash((self.channels, self.nodes, self.max_edges))

    # -- packing -------------------------------------------------------------------------------------------------
    def pack(self, features: Union[torch.Tensor, Sequence[torch.Tensor]],
             adjacency: Union[torch.Tensor, Sequence[torch.Tensor]]) -> torch.Tensor:
        """Graphs as rows, (n, dim).

        Args:
            features: (n, C, V) node features, or n tensors (C, V_i) with V_i <= V (zero-padded).
            adjacency: (n, V, V), or n (V_i, V_i) dense or sparse matrices, A[i, j] the weight of the edge j -> i
                (graphs.adjacency_from_edges makes one from an edge list).
        """
        feats = list(features) if not isinstance(features, torch.Tensor) else list(features.unbind(0))
        if isinstance(adjacency, torch.Tensor):
            if adjacency.dim() != 3:
                raise ValueError(f"adjacency must be (n, V, V) or a list of (V_i, V_i) matrices, got shape "
                                 f"{tuple(adjacency.shape)}")
            adjs = list(adjacency.unbind(0))
        else:
            adjs = list(adjacency)
        if len(feats) != len(adjs):
            raise ValueError(f"{len(feats)} feature tensors but {len(adjs)} adjacencies")
        dtype = feats[0].dtype if feats and feats[0].is_floating_point() else torch.get_default_dtype()
        rows = []
        for k, (x, a) in enumerate(zip(feats, adjs)):
            if x.dim() != 2 or x.shape[0] != self.channels or x.shape[1] > self.nodes:
                raise ValueError(f"graph {k}: features must be (C={self.channels}, V_i <= {self.nodes}), got shape "
                                 f"{tuple(x.shape)}")
            a = check_adjacency(a, f"graph {k}'s adjacency")
            if a.shape[0] != x.shape[1]:
                raise ValueError(f"graph {k}: {x.shape[1]} nodes of features but a {a.shape[0]}-node adjacency")
            padded = torch.zeros(self.channels, self.nodes, dtype=dtype)
            padded[:, :x.shape[1]] = x
            rows.append(torch.cat([padded.reshape(-1), self._pack_edges(a, k, dtype)]))
        return torch.stack(rows)

    def pack_pyg(self, graphs, ignore_edge_attr: bool = False) -> torch.Tensor:
        """Rows (n, dim) from torch_geometric `Data` objects (a list, or a dataset of whole graphs): each graph's
        node features `x` (V_i, C) and its `edge_index`, weighted as `from_pyg` weighs them (ignore_edge_attr as
        there), in the features' dtype."""
        features, adjacencies = [], []
        for data in graphs:
            x, adjacency = from_pyg(data, ignore_edge_attr)
            features.append(x.T)
            adjacencies.append(adjacency)
        return self.pack(features, adjacencies)

    def _pack_edges(self, a: torch.Tensor, k: int, dtype) -> torch.Tensor:
        v = a.shape[0]
        if not self.sparse:
            dense = torch.zeros(self.nodes, self.nodes, dtype=dtype)
            dense[:v, :v] = a.to_dense() if a.layout != torch.strided else a
            return dense.reshape(-1)
        coo = a.to_sparse_coo().coalesce()
        targets, sources = coo.indices()
        weights = coo.values()
        keep = weights != 0
        targets, sources, weights = targets[keep], sources[keep], weights[keep]
        if len(weights) > self.max_edges:
            raise ValueError(f"graph {k} has {len(weights)} directed edges, more than max_edges={self.max_edges}")
        out = torch.full((3, self.max_edges), -1.0, dtype=dtype)
        out[2] = 0.0
        out[0, :len(weights)], out[1, :len(weights)], out[2, :len(weights)] = sources, targets, weights
        return out.reshape(-1)

    # -- unpacking -----------------------------------------------------------------------------------------------
    def check(self, x: torch.Tensor, name: str = "x") -> None:
        """Raises a ValueError naming `name` when x (..., n, dim) is not a valid pack."""
        if x.shape[-1] != self.dim:
            raise ValueError(f"{name} must have shape (..., n, {self.dim}) for {self!r} (C V features + "
                             + ("3 E edge entries" if self.sparse else "V^2 adjacency entries")
                             + f"), got {tuple(x.shape)}")
        edges = x[..., self.channels * self.nodes:]
        if not self.sparse:
            if not torch.isfinite(edges).all() or (edges < 0).any():
                raise ValueError(f"{name}: packed adjacencies have NaN, infinite or negative weights")
            return
        e = self.max_edges
        sources, targets, weights = edges[..., :e], edges[..., e:2 * e], edges[..., 2 * e:]
        index = torch.cat([sources, targets], -1)
        if not torch.isfinite(edges).all() or not torch.equal(index, index.round()):
            raise ValueError(f"{name}: packed edge lists must hold integer node indices and finite weights")
        if (index < -1).any() or (index >= self.nodes).any():
            raise ValueError(f"{name}: packed edge lists have node indices outside [0, {self.nodes}) (-1 pads)")
        if not torch.equal(sources < 0, targets < 0):
            raise ValueError(f"{name}: a packed edge has one end -1 (padding) and the other a node")
        if (weights < 0).any():
            raise ValueError(f"{name}: packed edge lists have negative weights")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The node features of packed rows x (..., n, dim), as (..., n, C * V) (channel first)."""
        return x[..., :self.channels * self.nodes]

    def graph(self, x: torch.Tensor) -> torch.Tensor:
        """The graphs of packed rows x (..., n, dim), for every point in row-major order of the leading axes:
        a dense (N, V, V) tensor, or for edge lists a sparse block-diagonal (N V, N V) matrix, N = x[..., 0].numel().
        """
        edges = x.detach()[..., self.channels * self.nodes:].reshape(-1, self.dim - self.channels * self.nodes)
        v = self.nodes
        if not self.sparse:
            return edges.reshape(-1, v, v)
        e = self.max_edges
        points = edges.shape[0]
        sources, targets, weights = edges[:, :e], edges[:, e:2 * e], edges[:, 2 * e:]
        offset = (torch.arange(points, device=x.device) * v).unsqueeze(-1)
        keep = sources >= 0
        rows = (targets.long() + offset)[keep]
        cols = (sources.long() + offset)[keep]
        return torch.sparse_coo_tensor(torch.stack([rows, cols]), weights[keep], (points * v, points * v),
                                       dtype=x.dtype, device=x.device, check_invariants=False).coalesce()

    def unpack(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(features (..., n, C, V), graphs as in `graph`) of checked packed rows."""
        self.check(x)
        return self.features(x).reshape(*x.shape[:-1], self.channels, self.nodes), self.graph(x)
