"""Graph networks and inputs shared by make_graph_reference.py (neural-tangents) and tests/test_reference_graph.py.

A network is a list of layers: ("node", width) a per-node dense layer (torch: nn.Conv1d(c, width, 1);
neural-tangents: stax.Conv(width, (1,))), ("act", name), ("agg",) an aggregation, ("gap",) global average pooling,
("flatten",), ("readout",) a dense layer to one output. A case says which graphs the aggregations use: "fixed"
(one dense adjacency), "fixed_sparse" (the same, sparse), "dense" (each input's own, packed dense), "edges" (each
input's own, packed as edge lists; neural-tangents' SPARSE implementation), or "nodes" (the node-by-node covariance of
one input: no readout).
"""
import numpy as np

WEIGHT_VAR, BIAS_VAR = 1.7, 0.15
CHANNELS, NODES, MAX_EDGES = 3, 7, 40
N1, N2 = 4, 3

GCN = [("node", 8), ("act", "relu"), ("agg",), ("node", 8), ("act", "relu"), ("agg",), ("gap",), ("readout",)]
CASES = {
    "fixed_gcn": ("fixed", GCN),
    "fixed_sparse_gcn": ("fixed_sparse", GCN),
    "fixed_prefix_erf_flatten": ("fixed", [("agg",), ("node", 8), ("act", "erf"), ("agg",), ("node", 8),
                                           ("act", "erf"), ("flatten",), ("readout",)]),
    "graphs_dense_gcn": ("dense", GCN),
    "graphs_dense_prefix": ("dense", [("agg",), ("node", 8), ("act", "relu"), ("agg",), ("agg",), ("gap",),
                                      ("readout",)]),
    "graphs_edges_gcn": ("edges", GCN),
    "nodes_gcn": ("nodes", [("node", 8), ("act", "relu"), ("agg",), ("node", 8), ("act", "relu"), ("agg",),
                            ("node", 1)]),
}


def inputs():
    """x1 (N1, C, V), x2 (N2, C, V) and graphs: a (V, V) fixed normalized adjacency with self-loops, and per input
    graphs of different sizes (the rest padded with isolated zero-feature nodes), as edge counts (an edge listed
    twice counts 2: edge lists) and as weighted adjacencies (dense packs). A[i, j] is the weight of the edge j -> i."""
    rng = np.random.RandomState(5)
    x1 = rng.randn(N1, CHANNELS, NODES)
    x2 = rng.randn(N2, CHANNELS, NODES)
    fixed = (rng.rand(NODES, NODES) < 0.35).astype(float)
    fixed = np.maximum(fixed, fixed.T) + np.eye(NODES)
    fixed = fixed / np.sqrt(fixed.sum(1))[:, None] / np.sqrt(fixed.sum(1))[None, :]
    counts, sizes = [], [7, 5, 6, 7, 4, 7, 6]
    for k, size in enumerate(sizes):
        a = np.zeros((NODES, NODES))
        a[:size, :size] = (rng.rand(size, size) < 0.4).astype(float)
        if k % 2 == 0:
            a[:size, :size] = np.maximum(a[:size, :size], a[:size, :size].T)
        a[0, 1] = 2.0  # the edge 1 -> 0 twice
        counts.append(a)
    counts = np.stack(counts)
    weighted = counts * rng.uniform(0.5, 1.5, counts.shape)
    for k, size in enumerate(sizes):
        if size < NODES:
            (x1 if k < N1 else x2)[k % N1 if k < N1 else k - N1][:, size:] = 0.0
    return dict(x1=x1, x2=x2, fixed=fixed, weighted1=weighted[:N1], weighted2=weighted[N1:], counts1=counts[:N1],
                counts2=counts[N1:])


def edge_lists(adjacency):
    """Unit-weight edge lists (n, E, 2) of (source, target) from integer-valued adjacencies (n, V, V), padded
    with -1: an entry 2 is an edge listed twice."""
    out = np.full((adjacency.shape[0], MAX_EDGES, 2), -1, dtype=np.int64)
    for k, a in enumerate(adjacency):
        pairs = [(j, i) for i in range(a.shape[0]) for j in range(a.shape[1]) for _ in range(int(a[i, j]))]
        out[k, :len(pairs)] = pairs
    return out
