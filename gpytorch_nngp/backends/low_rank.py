"""The node-by-node kernel of a graph network in low rank (Nystrom at every activation), for graphs too large for the
N x N matrix.

Niu et al. (ICLR 2023, GNNGP-X) keep each layer's covariance as K ~ Q Q^T with Q of shape (N, r). The maps of a
graph convolutional network then act on Q:

    per-node dense layer   K' = w K + b       ->  Q' = [sqrt(w) Q, sqrt(b) 1]
    aggregation            K' = A K A^T       ->  Q' = A Q                     (O(E r), sparse A)
    activation             K' = F(K)          ->  Nystrom over m landmark nodes S:
                                                  C = F(K[:, S]) (N, m) from Q Q_S^T and the variances diag(Q Q^T),
                                                  Q' = C C_SS^{-1/2}          (O(N m r))

and the NTK likewise (theta' = K' + w theta: the factors are concatenated; theta' = Fdot * theta at an activation:
Nystrom of Fdot(K[:, S]) * theta[:, S]). Nothing of size N x N is formed. The activation's Nystrom step is the
approximation; its error against the exact kernel is measured in benchmarks/graph_kernels.py.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from ..algebra import Aggregate, Conv, Network, Nonlinearity
from ..algebra.graph import aggregate_axis


def nystrom(columns: torch.Tensor, landmarks: torch.Tensor, rel_eps: float) -> torch.Tensor:
    """Q with Q Q^T = C C_SS^+ C^T for columns C (N, m) of a PSD matrix at landmark rows S: C_SS = C[S] (m, m),
    eigenvalues below rel_eps of the largest dropped."""
    block = columns[landmarks]
    block = (block + block.mT) / 2
    values, vectors = torch.linalg.eigh(block)
    keep = values > rel_eps * values.max().clamp_min(torch.finfo(values.dtype).tiny)
    return columns @ (vectors[:, keep] / values[keep].sqrt())


def low_rank_factors(network: Network, x: torch.Tensor, weight_var: torch.Tensor, bias_var: torch.Tensor,
                     landmarks: torch.Tensor, ntk: bool) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(Q_K, Q_Theta) with the node covariance K ~ Q_K Q_K^T and the NTK Theta ~ Q_Theta Q_Theta^T (None unless
    ntk), each (N, r), for a node-level network (Network(spatial_output=True)) on one graph.

    Args:
        x: the graph's features, one input row (1, C * N) (channel first).
        weight_var, bias_var: (L,) variances (no batch shape).
        landmarks: (m,) node indices.
    """
    if weight_var.dim() != 1:
        raise ValueError("the low-rank node kernel has no batch_shape")
    rel_eps = 1e-10 if x.dtype == torch.float64 else 1e-5
    features = network.transform_input(x)[0]  # (C, N) after the layers applied to the input itself
    q = features.mT / features.shape[0] ** 0.5  # K0 = X X^T / C
    t = None
    for layer in network.layers:
        if isinstance(layer, Conv) and all(k == 1 for k in layer.kernel_size) and all(s == 1 for s in layer.stride) \
                and all(p == (0, 0) for p in layer.padding):
            w = weight_var[layer.index if weight_var.numel() > 1 else 0]
            parts = [w.sqrt() * q]
            if layer.bias:
                b = bias_var[layer.index if bias_var.numel() > 1 else 0]
                parts.append(b.sqrt() * torch.ones_like(q[:, :1]))
            q = torch.cat(parts, -1)
            if ntk:  # theta' = K' + w theta
                t = q if t is None else torch.cat([q, w.sqrt() * t], -1)
        elif isinstance(layer, Aggregate):
            graph = layer.graph.to(device=q.device, dtype=q.dtype)
            q = aggregate_axis(q, graph, 0)
            t = None if t is None else aggregate_axis(t, graph, 0)
        elif isinstance(layer, Nonlinearity):
            variances = (q * q).sum(-1)
            cross = q @ q[landmarks].mT  # (N, m)
            f, fdot = layer.activation.dual(cross, variances.unsqueeze(-1), variances[landmarks].unsqueeze(0),
                                            ntk=ntk and t is not None)
            if fdot is not None:
                t = nystrom(fdot * (t @ t[landmarks].mT), landmarks, rel_eps)
            q = nystrom(f, landmarks, rel_eps)
        else:
            raise ValueError(f"the low-rank node kernel supports per-node dense layers (nn.Conv1d with kernel size 1), "
                             f"aggregations and activations, not {layer.describe()}")
    return q, t
