"""The low-rank representation of a node-level state: each layer's covariance of one graph's nodes as K ~ Q Q^T
(Niu et al., ICLR 2023, GNNGP-X), for graphs too large for the N x N matrix. Each layer says how it maps this
representation in its `low_rank` method, as it says how it maps a pair state in `apply`:

    per-node dense layer   K' = w K + b       ->  Q' = [sqrt(w) Q, sqrt(b) 1]
    aggregation            K' = A K A^T       ->  Q' = A Q                     (O(E r), sparse A)
    activation             K' = F(K)          ->  Nystrom over m landmark nodes S:
                                                  C = F(K[:, S]) (N, m) from Q Q_S^T and the variances diag(Q Q^T),
                                                  Q' = C C_SS^{-1/2}          (O(N m r))

and the NTK likewise (theta' = K' + w theta: the factors are concatenated; theta' = Fdot * theta at an activation:
Nystrom of Fdot(K[:, S]) * theta[:, S]). Nothing of size N x N is formed; the activation's Nystrom step is the
approximation (its error against the exact kernel: benchmarks/graph_kernels.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch


@dataclass
class LowRankState:
    """q (N, r): K ~ q q^T; t (N, r'): Theta ~ t t^T, or None (no NTK wanted, or before the first weighted layer);
    landmarks (m,) node indices; weight_var, bias_var (L,); rel_eps: the Nystrom steps' eigenvalue floor."""

    q: torch.Tensor
    t: Optional[torch.Tensor]
    landmarks: torch.Tensor
    weight_var: torch.Tensor
    bias_var: torch.Tensor
    ntk: bool
    rel_eps: float

    def variance(self, values: torch.Tensor, index: int) -> torch.Tensor:
        return values[index if values.numel() > 1 else 0]


def nystrom(columns: torch.Tensor, landmarks: torch.Tensor, rel_eps: float) -> torch.Tensor:
    """Q with Q Q^T = C C_SS^+ C^T for columns C (N, m) of a PSD matrix at landmark rows S: C_SS = C[S] (m, m),
    eigenvalues below rel_eps of the largest dropped."""
    block = columns[landmarks]
    block = (block + block.mT) / 2
    values, vectors = torch.linalg.eigh(block)
    keep = values > rel_eps * values.max().clamp_min(torch.finfo(values.dtype).tiny)
    return columns @ (vectors[:, keep] / values[keep].sqrt())
