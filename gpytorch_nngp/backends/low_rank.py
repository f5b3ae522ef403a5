"""The node-by-node kernel of a graph network in low rank (Nystrom at every activation), for graphs too large for the
N x N matrix: the network's layers run on the low-rank representation of algebra/low_rank.py, each by its own
`low_rank` method."""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from ..algebra import Network
from ..algebra.low_rank import LowRankState


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
    state = LowRankState(features.mT / features.shape[0] ** 0.5, None, landmarks, weight_var, bias_var, ntk, rel_eps)
    for layer in network.layers:  # K0 = X X^T / C, then each layer's map
        state = layer.low_rank(state)
    return state.q, state.t
