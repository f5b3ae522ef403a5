"""Graphs to try the node kernels on, made locally: contextual stochastic block models and Zachary's karate club."""
from __future__ import annotations

from typing import NamedTuple

import torch

from .adjacency import adjacency_from_edges


class NodeData(NamedTuple):
    """One graph for node classification: features (N, d), a sparse symmetric adjacency (N, N) without
    self-loops, integer labels (N,)."""

    features: torch.Tensor
    adjacency: torch.Tensor
    labels: torch.Tensor


def contextual_sbm(nodes: int = 1000, homophily: float = 0.8, degree: float = 5.0, features: int = 20,
                   signal: float = 1.0, classes: int = 2, seed: int = 0) -> NodeData:
    """A contextual stochastic block model (Deshpande et al. 2018), the standard synthetic node classification
    benchmark: balanced classes; each node's features are its class mean plus N(0, I) noise (the class means are
    `signal` apart from 0 along orthogonal random directions); edges are drawn independently, a fraction `homophily`
    of them, in expectation, within a class, with `degree` edges per node on average.

    homophily 1 is a graph of disconnected classes, 1 / classes a graph that ignores them, 0 a multipartite graph
    (every edge between classes: heterophily).
    """
    if not 0.0 <= homophily <= 1.0:
        raise ValueError(f"homophily must be in [0, 1], got {homophily}")
    if classes < 2 or nodes < 2 * classes:
        raise ValueError(f"need at least 2 classes and 2 nodes per class, got classes={classes}, nodes={nodes}")
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(nodes) % classes
    labels = labels[torch.randperm(nodes, generator=gen)]
    directions = torch.linalg.qr(torch.randn(features, classes, generator=gen))[0].T  # orthonormal rows
    x = signal * directions[labels] + torch.randn(nodes, features, generator=gen)
    per_class = nodes / classes
    # expected edges per node: p_in per_class + p_out (nodes - per_class) = degree, homophily = p_in per_class / degree
    p_in = min(1.0, degree * homophily / max(per_class - 1, 1))
    p_out = min(1.0, degree * (1 - homophily) / (nodes - per_class))
    # Each block's edge count is Poisson (the binomial of independent edges, for sparse graphs), its endpoints
    # uniform in the block: O(E) instead of O(N^2); repeated draws are merged into one edge.
    members = [torch.nonzero(labels == c).squeeze(-1) for c in range(classes)]
    parts = []
    for a in range(classes):
        for b in range(a, classes):
            pairs = len(members[a]) * (len(members[a]) - 1) / 2 if a == b else len(members[a]) * len(members[b])
            rate = torch.tensor(float((p_in if a == b else p_out) * pairs))
            count = int(torch.poisson(rate, generator=gen).item())
            i = members[a][torch.randint(len(members[a]), (count,), generator=gen)]
            j = members[b][torch.randint(len(members[b]), (count,), generator=gen)]
            parts.append(torch.stack([i, j])[:, i != j])
    edges = torch.cat(parts, 1)
    adjacency = adjacency_from_edges(edges, nodes, symmetric=True)
    adjacency = torch.sparse_coo_tensor(adjacency.indices(), torch.ones_like(adjacency.values()), adjacency.shape,
                                        check_invariants=False).coalesce()
    return NodeData(x, adjacency, labels)


def karate_club() -> NodeData:
    """Zachary's karate club (34 members, 78 friendships; networkx ships it): the label is the faction each member
    joined after the split (0: Mr. Hi, 1: Officer); the features are one-hot node identities, as in Kipf and
    Welling (2017)."""
    import networkx as nx

    graph = nx.karate_club_graph()
    edges = torch.tensor(list(graph.edges())).T
    labels = torch.tensor([0 if graph.nodes[v]["club"] == "Mr. Hi" else 1 for v in graph.nodes()])
    n = graph.number_of_nodes()
    return NodeData(torch.eye(n), adjacency_from_edges(edges, n, symmetric=True), labels)
