"""Evaluation of architecture kernels (algebra/) in tiles under a memory budget.

A pair of 28 x 28 images carries 784 state entries below a flatten readout and 614,656 below a pooling layer; a
kernel matrix never holds n x m of them at once. Both sides' per-position variances are computed once per point set
(O(n P^2) below pooling), then the matrix is evaluated in tiles of rows and columns whose state fits the budget.

- `architecture_matrix`: the whole (..., n, m) matrix (the dense backend), with autograd if wanted.
- `ArchitectureKernelOperator`: the lazy backend, a NetworkKernelOperator whose row blocks are such tiles.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

import torch
from linear_operator.operators import LinearOperator

from ..algebra import Network
from ..functional.workspace import Workspace
from . import budget as memory
from .distributed import RowSharding
from .lazy import NetworkKernelOperator, chunked_pairs

# Live state tensors per entry of a tile: a few without autograd; with autograd about a dozen per layer are saved.
_LIVE_NO_GRAD = 8
_LIVE_PER_LAYER_GRAD = 12


def tile_pairs(network: Network, itemsize: int, with_grad: bool, budget: Optional[int] = None, device=None) -> int:
    """How many (x1, x2) pairs one tile may hold within `budget` bytes (at least 1); by default the device's block
    bytes with autograd, its tile bytes without (backends/budget.py)."""
    budget = budget or (memory.block_bytes(device) if with_grad else memory.tile_bytes(device))
    live = _LIVE_PER_LAYER_GRAD * len(network.layers) if with_grad else _LIVE_NO_GRAD
    return max(1, budget // (network.entries_per_pair * itemsize * live))


def architecture_matrix(network: Network, x1: torch.Tensor, x2: torch.Tensor, weight_var: torch.Tensor,
                        bias_var: torch.Tensor, ntk: bool, symmetric: bool = False, row_offset: int = 0,
                        records: Optional[Tuple[Dict, Dict]] = None, budget: Optional[int] = None,
                        diagonal: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The kernel matrix k(x1, x2), (..., n, m), evaluated in tiles.

    Args:
        network: the built architecture.
        x1, x2: (..., n, F), (..., m, F) inputs, F = prod(network.input_shape).
        weight_var, bias_var: (*batch, L) variances.
        ntk: the NTK, else the NNGP.
        symmetric: x1 are rows row_offset.. of x2 (the same point set): the entries of a point with itself get
            correlation exactly 1.
        records: both sides' records (Network.records), if already computed.
        budget: bytes of state per tile (default: see tile_pairs).
        diagonal: with symmetric, the kernel diagonal of the whole point set x2 (diag=True), if already computed.
    """
    with_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (x1, x2, weight_var, bias_var))
    if records is None:
        v2 = network.records(x2, weight_var, bias_var)
        v1 = (network.take(v2, slice(row_offset, row_offset + x1.shape[-2])) if symmetric
              else network.records(x1, weight_var, bias_var))
        records = (v1, v2)
    n, m = x1.shape[-2], x2.shape[-2]
    pairs = tile_pairs(network, x1.element_size(), with_grad, budget, x1.device)
    cols = min(m, pairs)
    rows = max(1, min(n, pairs // cols))
    tiles = []
    out = None
    workspace = None if with_grad else Workspace()  # buffers shared by all tiles
    for r in range(0, n, rows):
        r_end = min(n, r + rows)
        row_tiles = []
        v1 = network.take(records[0], slice(r, r_end))
        for c in range(0, m, cols):
            c_end = min(m, c + cols)
            same = (row_offset + r, c) if symmetric else None
            tile = network.matrix(x1[..., r:r_end, :], x2[..., c:c_end, :], weight_var, bias_var, ntk,
                                  (v1, network.take(records[1], slice(c, c_end))), same_points=same,
                                  workspace=workspace)
            if with_grad:
                row_tiles.append(tile)
                continue
            if out is None:
                out = torch.empty(*tile.shape[:-2], n, m, dtype=tile.dtype, device=tile.device)
            out[..., r:r_end, c:c_end] = tile
        if with_grad:
            tiles.append(torch.cat(row_tiles, dim=-1) if len(row_tiles) > 1 else row_tiles[0])
    if with_grad:
        out = torch.cat(tiles, dim=-2) if len(tiles) > 1 else tiles[0]
    if symmetric:
        out = _with_diagonal(network, out, x1, weight_var, bias_var, ntk, row_offset, m, diagonal)
    return out


def _with_diagonal(network, out, x1, weight_var, bias_var, ntk, row_offset, m, diagonal=None):
    """out with the entries of a point with itself (rows row_offset.. of one point set of m) taken from the diagonal
    pass, which diag=True returns: vectorized transcendental functions round differently in a matrix than along a
    diagonal, and the two must agree to the bit. One pass per call, not per tile."""
    first, last = max(row_offset, 0), min(row_offset + x1.shape[-2], m)
    if first >= last:
        return out
    rows = torch.arange(first, last, device=out.device)
    if diagonal is not None:
        own = diagonal[..., first:last]
    else:
        own = network.paired(x1[..., rows - row_offset, :], x1[..., rows - row_offset, :], weight_var, bias_var,
                             ntk, same_points=True)
    index = (Ellipsis, rows - row_offset, rows)
    if out.requires_grad or own.requires_grad:
        out = out.clone()
    out[index] = own
    return out


class ArchitectureKernelOperator(NetworkKernelOperator):
    """The (..., n, m) kernel matrix of an architecture, evaluated in row blocks of tiles (lazy backend).

    Products keep a no-grad copy of the matrix while it fits in cache_bytes, else recompute the blocks; gradients
    recompute one block at a time with autograd (NetworkKernelOperator's machinery).

    Args:
        x1: (..., n, F) inputs of the rows; x2: (..., m, F) of the columns, or None for a symmetric operator.
        weight_var, bias_var: (*batch, L) variances.
        network, ntk: the architecture, and whether this is its NTK.
        cache_bytes: keep the matrix (its upper-triangle blocks when symmetric; with a sharding, this process's
            blocks) when that is at most this large; None: the device's budget (backends/budget.py).
        sharding: a RowSharding (backends/distributed.py): evaluate only this process's rows, or None.
    """

    def __init__(self, x1: torch.Tensor, weight_var: torch.Tensor, bias_var: torch.Tensor,
                 x2: Optional[torch.Tensor] = None, *, network: Network, ntk: bool,
                 cache_bytes: Optional[int] = None, sharding: Optional[RowSharding] = None):
        args = (x1, weight_var, bias_var) if x2 is None else (x1, weight_var, bias_var, x2)
        LinearOperator.__init__(self, *args, network=network, ntk=ntk, cache_bytes=cache_bytes, sharding=sharding)
        self.symmetric = x2 is None
        self.x1, self.x2 = x1, (x1 if x2 is None else x2)
        self.weight_var, self.bias_var = weight_var, bias_var
        self.network, self.ntk = network, ntk
        self.cache_bytes = cache_bytes
        self.sharding = sharding
        self._dense_cache = None
        self._records: Dict[torch.device, Tuple[Dict, Dict]] = {}  # both sides' records, per device
        self._diagonals: Dict[torch.device, torch.Tensor] = {}  # a symmetric operator's diagonal, per device

    def _like(self, x1, x2, sharding=None):
        sharding = self.sharding if sharding is None else (None if sharding == "none" else sharding)
        return type(self)(x1, self.weight_var, self.bias_var, x2, network=self.network, ntk=self.ntk,
                          cache_bytes=self.cache_bytes, sharding=sharding)

    def _batch(self):
        return torch.broadcast_shapes(self.x1.shape[:-2], self.x2.shape[:-2], self.weight_var.shape[:-1],
                                      self.bias_var.shape[:-1])

    def _block_size(self, with_grad: bool) -> int:
        batch = math.prod(self._batch()) if len(self._batch()) else 1
        pairs = tile_pairs(self.network, self.x1.element_size(), with_grad, device=self.x1.device) // batch
        return max(1, pairs // max(self.x2.shape[-2], 1))

    def _rows(self, start, stop, x1, x2, weight_var, bias_var, workspace=None, col_start=0):
        records = diagonal = None
        if not torch.is_grad_enabled() or not any(t.requires_grad for t in (x1, x2, weight_var, bias_var)):
            if x1.device not in self._records:  # inference: both sides' records once for all blocks
                v2 = self.network.records(x2, weight_var, bias_var)
                v1 = v2 if self.symmetric else self.network.records(x1, weight_var, bias_var)
                self._records[x1.device] = (v1, v2)
            v1, v2 = self._records[x1.device]
            records = (self.network.take(v1, slice(start, stop)), self.network.take(v2, slice(col_start, None)))
            if self.symmetric:  # the entries of a point with itself: one diagonal pass for all blocks
                if x1.device not in self._diagonals:
                    self._diagonals[x1.device] = self.network.paired(x1, x1, weight_var, bias_var, self.ntk,
                                                                     same_points=True)
                diagonal = self._diagonals[x1.device][..., col_start:]
        return architecture_matrix(self.network, x1[..., start:stop, :], x2[..., col_start:, :], weight_var, bias_var,
                                   self.ntk, symmetric=self.symmetric, row_offset=start - col_start,
                                   records=records, diagonal=diagonal)

    def _forward_mode_applies(self, wanted) -> bool:
        """Architecture kernels have no forward-mode variance derivative: their gradients go through autograd."""
        return False

    def _expand_batch(self, batch_shape):
        # Repeat this operator (one evaluation) rather than evaluating expanded inputs once per batch member.
        return LinearOperator._expand_batch(self, batch_shape)

    def _diagonal(self) -> torch.Tensor:
        if self.x1.shape[-2] != self.x2.shape[-2]:
            raise RuntimeError("the diagonal of a non-square kernel operator is undefined")
        out = self.network.paired(self.x1, self.x2, self.weight_var, self.bias_var, self.ntk,
                                  same_points=self.symmetric)
        return out.expand(self.shape[:-1])

    def _get_indices(self, row_index, col_index, *batch_indices):
        if batch_indices or self.weight_var.dim() > 1:
            return LinearOperator._get_indices(self, row_index, col_index, *batch_indices)
        # a pair holds its two inputs and, while propagated, a few state tensors
        numbers = 2 * self.network.features + _LIVE_NO_GRAD * self.network.entries_per_pair
        return chunked_pairs(lambda a, b: self.network.paired(a, b, self.weight_var, self.bias_var, self.ntk),
                             self.x1, self.x2, row_index, col_index, numbers_per_pair=numbers)
