"""Graph aggregation: x -> A x over the nodes of a graph (neural-tangents' stax.Aggregate).

A layer out[..., i] = sum_j A[i, j] x[..., j] over the V nodes (one spatial axis) is a fixed linear map of each
input, so on the pair state it acts on each side with that side's graph (Du et al. 2019, Graph NTK; Niu et al. 2023,
GNNGP):

    cov'[x, x'] = A_x cov[x, x'] A_x'^T,      theta' likewise,

with the full V x V state of node pairs below it. The graph is either fixed (one adjacency for every input: signals
on a sensor network or a mesh, or the nodes of one big graph) or each input's own, read from the state's side data
(`PairState.side[k]["graph"]`, filled by Network from packed inputs, graphs/packing.py).

A graph is a dense (V, V) tensor or a sparse one (torch COO/CSR) for a fixed graph; per-input graphs are a dense
(n, V, V) tensor or a sparse block-diagonal (n V, n V) matrix. Sparse graphs cost O(E) per column of the covariance
(torch.sparse.mm), never a dense V x V product.
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Optional

import torch

from .layer import Layer


def is_sparse(graph: torch.Tensor) -> bool:
    return graph.layout != torch.strided


def aggregate_axis(x: torch.Tensor, graph: torch.Tensor, node_axis: int, point_axis: Optional[int] = None,
                   batch_dims: int = 0) -> torch.Tensor:
    """sum_s A[a, s] x[..., s, ...] along `node_axis`: with one graph for everything, or (point_axis given) with
    the graph of each point, the points being the `batch_dims` leading axes and `point_axis`.

    Args:
        x: a tensor with a node axis of size V.
        graph: (V, V) dense or sparse; per point (N, V, V) dense or (N V, N V) sparse block-diagonal, N the points
            in row-major order of (*leading batch axes, point axis).
    """
    node_axis = node_axis % x.dim()
    if point_axis is None:
        if not is_sparse(graph):
            return torch.matmul(x.movedim(node_axis, -1), graph.mT).movedim(-1, node_axis)
        moved = x.movedim(node_axis, 0)
        out = torch.sparse.mm(graph, moved.reshape(moved.shape[0], -1))
        return out.reshape(moved.shape).movedim(0, node_axis)
    point_axis = point_axis % x.dim()
    moved = x.movedim((point_axis, node_axis), (batch_dims, batch_dims + 1))  # (*batch, n, V, rest...)
    v = moved.shape[batch_dims + 1]
    points, rest = math.prod(moved.shape[:batch_dims + 1]), math.prod(moved.shape[batch_dims + 2:])
    if (graph.shape[0] if not is_sparse(graph) else graph.shape[0] // max(v, 1)) != points:
        raise ValueError(f"per-input graphs for {graph.shape[0] if not is_sparse(graph) else graph.shape[0] // v} "
                         f"points, but the state has {points}")
    if not is_sparse(graph):
        out = torch.matmul(graph, moved.reshape(points, v, rest))
    else:
        out = torch.sparse.mm(graph, moved.reshape(points * v, rest))
    return out.reshape(moved.shape).movedim((batch_dims, batch_dims + 1), (point_axis, node_axis))


def apply_graph(x: torch.Tensor, graph: torch.Tensor, per_input: bool) -> torch.Tensor:
    """The module's map on the points themselves: x (..., n, C, V) -> out[..., i] = sum_j A[i, j] x[..., j], with
    the graph of each point (row-major over the leading axes) when per_input.

    A sparse graph is applied as messages along its edges (gather, scale, index_add): unlike torch.sparse.mm, this
    works under torch.func transforms (jacrev, vmap), which the finite-network tools (DNN2GP, Monte Carlo) use."""
    if not is_sparse(graph):
        if not per_input:
            return aggregate_axis(x, graph, -1)
        return aggregate_axis(x, graph, -1, -3, batch_dims=x.dim() - 3)
    graph = graph.to_sparse_coo().coalesce() if graph.layout != torch.sparse_coo else graph.coalesce()
    targets, sources = graph.indices()
    weights = graph.values().to(x.dtype)
    if not per_input:
        return torch.zeros_like(x).index_add(-1, targets, x.index_select(-1, sources) * weights)
    v = x.shape[-1]
    nodes = x.transpose(-1, -2).reshape(-1, x.shape[-2])  # (N V, C): every node of every point
    out = torch.zeros_like(nodes).index_add(0, targets, nodes.index_select(0, sources) * weights.unsqueeze(-1))
    return out.reshape(*x.shape[:-2], v, x.shape[-2]).transpose(-1, -2)


def _second_side(x: torch.Tensor, graph: torch.Tensor, batch: int) -> torch.Tensor:
    """Aggregation along V' of (*batch, n, m, V, V') with the graphs of the (*batch, m) points of the second input."""
    moved = x.movedim(batch, -1)  # (*batch, m, V, V', n)
    return aggregate_axis(moved, graph, -2, batch, batch).movedim(-1, batch)


class Aggregate(Layer):
    """Aggregation over the nodes (one spatial axis): a fixed graph, or (graph=None) each input's own graph from
    the state's side data."""

    linear = True

    def __init__(self, graph: Optional[torch.Tensor] = None):
        self.graph = graph

    def needs_full(self):
        return True

    def _output(self, geometry):
        if len(geometry.spatial) != 1:
            raise ValueError(f"a graph aggregation needs nodes on one axis, inputs (C, V), got {geometry.shape()}")
        if self.graph is not None and self.graph.shape[-1] != geometry.spatial[0]:
            raise ValueError(f"the adjacency has {self.graph.shape[-1]} nodes, the input has {geometry.spatial[0]} "
                             f"positions ({geometry.shape()})")
        return replace(geometry.linear_image("sums of activations over neighbours"), full=True)

    def reads_side(self) -> bool:
        return self.graph is None  # each point's own graph

    def transform(self, x, side):
        """x (..., n, C, V) -> A x per point; the points' own graphs (side["graph"]) when the layer has none."""
        if self.graph is not None:
            return apply_graph(x, self.graph.to(device=x.device, dtype=x.dtype), per_input=False)
        graph = side.get("graph")
        if graph is None:
            raise ValueError("an aggregation with per-input graphs got no graphs: build the kernel from "
                             "GraphNetwork(module, GraphInputs(...)) and pack the inputs with it")
        return apply_graph(x, graph, per_input=True)

    def low_rank(self, state):
        """Q' = A Q (and the NTK's factor alike), O(E r) with a sparse A."""
        if self.graph is None:
            return super().low_rank(state)
        graph = self.graph.to(device=state.q.device, dtype=state.q.dtype)
        state.q = aggregate_axis(state.q, graph, 0)
        state.t = None if state.t is None else aggregate_axis(state.t, graph, 0)
        return state

    def _graphs(self, state, like):
        if self.graph is not None:
            g = self.graph.to(device=like.device, dtype=like.dtype)
            return g, g, False
        try:
            return state.side[0]["graph"], state.side[1]["graph"], True
        except KeyError:
            raise ValueError("an aggregation with per-input graphs (Aggregate(adjacency=None)) needs inputs packed "
                             "with their graphs: build the kernel from GraphNetwork(module, GraphInputs(...))"
                             ) from None

    def _map(self, x, state):
        g1, g2, per_input = self._graphs(state, x)
        if not per_input:
            return aggregate_axis(aggregate_axis(x, g1, -2), g2, -1)
        # a full 1-d state: (*batch, n, m, V, V') for lead 2, (*batch, n, V, V') for lead 1
        batch = x.dim() - 2 - state.lead
        point1, point2 = (batch, batch + 1) if state.lead == 2 else (batch, batch)
        x = aggregate_axis(x, g1, -2, point1, batch)
        if state.lead == 2:  # the second input's points: the batch axes and m (n sits between them)
            return _second_side(x, g2, batch)
        return aggregate_axis(x, g2, -1, point2, batch)

    def apply(self, state, ctx):
        cov, theta = state.cov, state.theta
        out = self._map(cov, state)
        ctx.release(cov)
        if theta is not None:
            new_theta = self._map(theta, state)
            ctx.release(theta)
            theta = new_theta
        return state.with_(out, theta)

    def describe(self):
        if self.graph is None:
            return "Aggregate(per-input graphs)"
        kind = "sparse" if is_sparse(self.graph) else "dense"
        return f"Aggregate({self.graph.shape[-1]} nodes, {kind})"
