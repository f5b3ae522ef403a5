"""The kernel between the nodes of one graph: the infinite-width limit of a graph network's node outputs (GNNGP)."""
from __future__ import annotations

from typing import Optional, Union

import torch
from gpytorch.constraints import Interval
from gpytorch.priors import Prior
from linear_operator.operators import LowRankRootLinearOperator, MatmulLinearOperator

from ..backends.low_rank import low_rank_factors
from .base import NetworkKernel


class GraphNodeKernel(NetworkKernel):
    r"""The NNGP (or, with ntk=True, the NTK) between the nodes of one graph: k(i, j) is the covariance of the
    outputs at nodes i and j of an infinitely wide graph network run on the whole graph (Niu et al. 2023, GNNGP;
    transductive node classification and regression).

    The network is an ordinary torch module on the graph as one input of shape (1, d, N): per-node dense layers
    (nn.Conv1d(c_in, c_out, 1)), activations and gpytorch_nngp.Aggregate(adjacency) layers, ending at the nodes (no
    pooling), e.g. a two-layer GCN nn.Sequential(Aggregate(A), nn.Conv1d(d, 64, 1), nn.ReLU(), Aggregate(A),
    nn.Conv1d(64, 1, 1)) with A = graphs.normalized_adjacency(adjacency).

    Inputs are node indices, (..., n, 1) floats holding integers (GPyTorch's (n, d) convention with d = 1).

    Evaluation: the exact N x N covariance of all nodes (the aggregation couples every node to its neighbours, so
    no entry is computed alone), O(N^2) memory and O(N^2 (E / N) depth) time with a sparse adjacency, cached while
    the variances do not change and no gradient is wanted; or, with `landmarks`, a rank-r factor through Nystrom
    steps at the activations (backends/low_rank.py), O(N r) memory, for graphs of hundreds of thousands of nodes.

    Args:
        module: the graph network (see above).
        features: (N, d) node features.
        ntk: the NTK instead of the NNGP.
        weight_var, bias_var: initial variances (> 0, learnable), one value or one per Conv layer (per_layer).
        landmarks: None (exact), a number m of landmark nodes drawn uniformly without replacement (seeded), or an
            index tensor of landmark nodes.
        per_layer: one (weight_var, bias_var) per Conv layer.
        weight_var_prior, bias_var_prior, weight_var_constraint, bias_var_constraint, **kwargs: as in GPyTorch.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from gpytorch_nngp import Aggregate, GraphNodeKernel
        >>> from gpytorch_nngp.graphs import normalized_adjacency
        >>> ring = torch.roll(torch.eye(5), 1, dims=1)
        >>> a = normalized_adjacency(ring + ring.T)
        >>> gcn = nn.Sequential(Aggregate(a), nn.Conv1d(2, 16, 1), nn.ReLU(), Aggregate(a), nn.Conv1d(16, 1, 1))
        >>> kernel = GraphNodeKernel(gcn, features=torch.randn(5, 2))
        >>> nodes = torch.arange(5.0)[:, None]
        >>> kernel(nodes).shape
        torch.Size([5, 5])
    """

    def __init__(self, module: torch.nn.Module, features: torch.Tensor, ntk: bool = False, weight_var=2.0,
                 bias_var=0.1, landmarks: Optional[Union[int, torch.Tensor]] = None, per_layer: bool = False,
                 weight_var_prior: Optional[Prior] = None, bias_var_prior: Optional[Prior] = None,
                 weight_var_constraint: Optional[Interval] = None, bias_var_constraint: Optional[Interval] = None,
                 **kwargs):
        super().__init__(**kwargs)
        if not isinstance(features, torch.Tensor) or features.dim() != 2 or not features.is_floating_point():
            raise ValueError(f"features must be a floating point (N, d) tensor of node features, got "
                             f"{tuple(features.shape) if isinstance(features, torch.Tensor) else type(features)}")
        if not torch.isfinite(features).all():
            raise ValueError("features contains NaN or inf")
        nodes, dim = features.shape
        from ..frontend.translate import network_from_module  # the front end sits above the kernels

        self.network = network_from_module(module, (dim, nodes), per_layer, spatial_output=True)
        self.ntk, self.nodes = bool(ntk), nodes
        # One input, (d, N) channel first. Not a buffer: GPyTorch indexes and expands every buffer along the batch
        # dimensions (kernel[i], expand_batch), and every batch member shares the graph; _apply moves it.
        self.features = features.mT.reshape(1, -1).clone()
        if landmarks is not None:
            if isinstance(landmarks, int) and not isinstance(landmarks, bool):
                if not 1 <= landmarks <= nodes:
                    raise ValueError(f"landmarks must be between 1 and the {nodes} nodes, got {landmarks}")
                landmarks = torch.randperm(nodes, generator=torch.Generator().manual_seed(0))[:landmarks].sort()[0]
            landmarks = torch.as_tensor(landmarks).long()
            if landmarks.dim() != 1 or landmarks.numel() == 0 or landmarks.min() < 0 or landmarks.max() >= nodes:
                raise ValueError(f"landmarks must be a count or a 1-d tensor of node indices in [0, {nodes})")
        self.landmarks = landmarks
        self._init_variances((*self.batch_shape, self.network.num_parameters), weight_var, bias_var,
                             weight_var_prior, bias_var_prior, weight_var_constraint, bias_var_constraint)
        if self.has_lengthscale:  # one length scale per node feature; the inputs are node indices (one column)
            if self.length_scales != dim:
                raise ValueError(f"ard_num_dims={self.length_scales}: the nodes have {dim} features, one length "
                                 "scale each")
            self.ard_num_dims = None
        self._cache = None

    def _apply(self, fn, *args, **kwargs):
        self._cache = None
        self.features = fn(self.features)
        return super()._apply(fn, *args, **kwargs)

    def _computes_ntk(self) -> bool:
        return self.ntk

    def _set_kind(self, kind: str) -> None:
        self.ntk, self._cache = kind == "ntk", None

    # -- the whole graph -----------------------------------------------------------------------------------------
    def _features(self, dtype) -> torch.Tensor:
        """The graph as one input row (1, d N), each feature divided by its length scale under ARD."""
        x = self.features.to(dtype)
        if not self.has_lengthscale:
            return x
        return self._scale_inputs(x, channels=self.length_scales, width=x.shape[-1])

    def node_covariance(self) -> torch.Tensor:
        """The exact kernel between all nodes, (*batch_shape, N, N)."""
        wv, bv = self.weight_var, self.bias_var
        hyper = [wv, bv] + ([self.lengthscale] if self.has_lengthscale else [])
        caching = not torch.is_grad_enabled() or not any(h.requires_grad for h in hyper)
        key = tuple(h.detach().clone() for h in hyper)
        if caching and self._cache is not None and self._cache[0] == "exact" and all(
                a.shape == b.shape and torch.equal(a, b) for a, b in zip(self._cache[1], key)):
            return self._cache[2]
        x = self._features(wv.dtype)
        out = self.network.paired(x, x, wv, bv, self.ntk, x1_eq_x2=True)[..., 0, :, :]
        if caching:
            self._cache = ("exact", key, out)
        return out

    def node_factor(self) -> torch.Tensor:
        """The low-rank factor Q (N, r) with kernel ~ Q Q^T (needs `landmarks`)."""
        if self.landmarks is None:
            raise ValueError("node_factor needs landmarks (the low-rank form); node_covariance is the exact kernel")
        wv, bv = self.weight_var, self.bias_var
        if len(self.batch_shape):
            raise ValueError("the low-rank node kernel has no batch_shape")
        q, t = low_rank_factors(self.network, self._features(wv.dtype), wv.reshape(-1), bv.reshape(-1),
                                self.landmarks.to(self.features.device), self.ntk)
        return t if self.ntk else q

    # -- GPyTorch ------------------------------------------------------------------------------------------------
    def _indices(self, x: torch.Tensor, name: str) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() < 2 or x.shape[-1] != 1:
            raise ValueError(f"{name} must be node indices of shape (..., n, 1), got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        if not torch.isfinite(x).all() or not torch.equal(x, x.round()):
            raise ValueError(f"{name} must hold integer node indices")
        if x.numel() and (x.min() < 0 or x.max() >= self.nodes):
            raise ValueError(f"{name} has node indices outside [0, {self.nodes}): min {x.min().item():g}, max "
                             f"{x.max().item():g}")
        return x[..., 0].long()

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, diag: bool = False, last_dim_is_batch: bool = False,
                **params):
        """k(node i, node j) for node indices x1 (..., n, 1), x2 (..., m, 1): (..., n, m), or (..., n) with diag."""
        self._refuse_last_dim_is_batch(last_dim_is_batch)
        i, j = self._indices(x1, "x1"), self._indices(x2, "x2")
        if self.landmarks is not None:
            q = self.node_factor()
            a, b = q[i], q[j]
            if diag:
                return (a * b).sum(-1)
            if torch.equal(i, j):
                return LowRankRootLinearOperator(a)
            return MatmulLinearOperator(a, b.mT)
        return _entries(self.node_covariance(), i, j, diag)

    def extra_repr(self) -> str:
        form = "exact" if self.landmarks is None else f"low rank, {len(self.landmarks)} landmarks"
        return f"{'NTK' if self.ntk else 'NNGP'}, {self.nodes} nodes, {form}, {self.network.describe()}"


def _entries(k: torch.Tensor, i: torch.Tensor, j: torch.Tensor, diag: bool) -> torch.Tensor:
    """Entries (i_p, j_q) of the node covariance k (*batch, N, N) for node indices i (*batch, n), j (*batch, m),
    batch by batch: (*batch, n, m), or (*batch, n) for the pairs (i_p, j_p) with diag. (Plain advanced indexing would
    pair every batch member of k with every batch member of the indices.)"""
    batch = torch.broadcast_shapes(k.shape[:-2], i.shape[:-1], j.shape[:-1])
    nodes = k.shape[-1]
    k = k.expand(*batch, nodes, nodes)
    i, j = i.expand(*batch, i.shape[-1]), j.expand(*batch, j.shape[-1])
    rows = k.gather(-2, i.unsqueeze(-1).expand(*batch, i.shape[-1], nodes))  # (*batch, n, N)
    if diag:
        return rows.gather(-1, j.unsqueeze(-1)).squeeze(-1)
    return rows.gather(-1, j.unsqueeze(-2).expand(*batch, i.shape[-1], j.shape[-1]))
