"""Evaluation of architecture kernels (algebra/) in tiles under a memory budget.

A pair of 28 x 28 images carries 784 state entries below a flatten readout and 614,656 below a pooling layer; a
kernel matrix never holds n x m of them at once. Both sides' per-position variances are computed once per point set
(O(n P^2) below pooling), then the matrix is evaluated in tiles of rows and columns whose state fits the budget.

- `architecture_matrix`: the whole (..., n, m) matrix (the dense backend), with autograd if wanted.
- `NetworkEvaluator`: the lazy backend's evaluator (a NetworkKernelOperator whose row blocks are such tiles).
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

import torch

from ..algebra import Network
from ..functional.workspace import Workspace
from . import budget as memory
from .evaluators import Evaluator, chunked_pairs

# Live state tensors per entry of a tile: a few without autograd; with autograd about a dozen per layer are saved.
_LIVE_NO_GRAD = 8
_LIVE_PER_LAYER_GRAD = 12


def tile_pairs(network: Network, itemsize: int, with_grad: bool, budget: Optional[int] = None, device=None) -> int:
    """How many (x1, x2) pairs one tile may hold within `budget` bytes (at least 1); by default the device's block
    bytes with autograd, its tile bytes without (backends/budget.py)."""
    budget = budget or (memory.block_bytes(device) if with_grad else memory.tile_bytes(device))
    live = _LIVE_PER_LAYER_GRAD * len(network.layers) if with_grad else _LIVE_NO_GRAD
    return max(1, budget // (network.entries_per_pair * itemsize * live))


def points_per_chunk(network: Network, x: torch.Tensor) -> int:
    """Points whose own states (records, diagonal) are propagated at once: an autograd tile's worth of pairs, with
    or without autograd, so that every diagonal pass cuts the points alike (a vectorized transcendental function
    may round a value differently in another position of its vector: diag=True must equal the matrix diagonal)."""
    return tile_pairs(network, x.element_size(), True, device=x.device)


def own_records(network: Network, x: torch.Tensor, weight_var, bias_var):
    """Network.records of the points x, a chunk of points at a time (points_per_chunk)."""
    return network.records(x, weight_var, bias_var, points_per_chunk(network, x))


def paired(network: Network, x1: torch.Tensor, x2: torch.Tensor, weight_var, bias_var, ntk: bool,
           x1_eq_x2: bool = False) -> torch.Tensor:
    """Network.paired, a chunk of points at a time (points_per_chunk): every path that computes a kernel diagonal
    goes through here, so that all of them cut the points the same way."""
    return network.paired(x1, x2, weight_var, bias_var, ntk, x1_eq_x2, points_per_chunk(network, x1))


def architecture_matrix(network: Network, x1: torch.Tensor, x2: torch.Tensor, weight_var: torch.Tensor,
                        bias_var: torch.Tensor, ntk: bool, x1_eq_x2: bool = False, row_offset: int = 0,
                        records: Optional[Tuple[Dict, Dict]] = None, budget: Optional[int] = None,
                        diagonal: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The kernel matrix k(x1, x2), (..., n, m), evaluated in tiles.

    Args:
        network: the built architecture.
        x1, x2: (..., n, F), (..., m, F) inputs, F = prod(network.input_shape).
        weight_var, bias_var: (*batch, L) variances.
        ntk: the NTK, else the NNGP.
        x1_eq_x2: x1 are rows row_offset.. of x2 (the same point set): the entries of a point with itself get
            correlation exactly 1.
        records: both sides' records (Network.records), if already computed.
        budget: bytes of state per tile (default: see tile_pairs).
        diagonal: with symmetric, the kernel diagonal of the whole point set x2 (diag=True), if already computed.
    """
    with_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (x1, x2, weight_var, bias_var))
    if records is None:
        v2 = own_records(network, x2, weight_var, bias_var)
        v1 = (network.take(v2, slice(row_offset, row_offset + x1.shape[-2])) if x1_eq_x2
              else own_records(network, x1, weight_var, bias_var))
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
            offsets = (row_offset + r, c) if x1_eq_x2 else None
            tile = network.matrix(x1[..., r:r_end, :], x2[..., c:c_end, :], weight_var, bias_var, ntk,
                                  (v1, network.take(records[1], slice(c, c_end))), offsets=offsets,
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
    if x1_eq_x2:
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
        points = x1[..., rows - row_offset, :]
        own = paired(network, points, points, weight_var, bias_var, ntk, x1_eq_x2=True)
    index = (Ellipsis, rows - row_offset, rows)
    if out.requires_grad or own.requires_grad:
        out = out.clone()
    out[index] = own
    return out


class NetworkEvaluator(Evaluator):
    """Any architecture of the layer algebra, for NetworkKernelOperator (the lazy backend): row blocks of tiles.

    Without autograd both sides' records and a symmetric operator's diagonal are computed once per operator and
    device (kept in the operator's scratch), and the blocks' tiles share a Workspace; with autograd each block is
    recomputed with its graph. There is no forward-mode variance derivative: gradients go through autograd.
    """

    variance_axes = 1
    expand_by_repeat = True

    def __init__(self, network: Network, ntk: bool):
        self.network, self.ntk = network, ntk

    def key(self):
        return ("network", id(self.network), self.ntk)

    def rows_per_block(self, op, with_grad: bool) -> int:
        batch = math.prod(op.batch) if len(op.batch) else 1
        pairs = tile_pairs(self.network, op.x1.element_size(), with_grad, device=op.x1.device) // batch
        return max(1, pairs // max(op.x2.shape[-2], 1))

    def rows(self, op, start, stop, x1, x2, weight_var, bias_var, workspace=None, col_start=0):
        records = diagonal = None
        if not torch.is_grad_enabled() or not any(t.requires_grad for t in (x1, x2, weight_var, bias_var)):
            cached = op.scratch.setdefault("records", {})
            if x1.device not in cached:  # inference: both sides' records once for all blocks
                v2 = own_records(self.network, x2, weight_var, bias_var)
                v1 = v2 if op.x1_eq_x2 else own_records(self.network, x1, weight_var, bias_var)
                cached[x1.device] = (v1, v2)
            v1, v2 = cached[x1.device]
            records = (self.network.take(v1, slice(start, stop)), self.network.take(v2, slice(col_start, None)))
            if op.x1_eq_x2:  # the entries of a point with itself: one diagonal pass for all blocks
                diagonals = op.scratch.setdefault("diagonal", {})
                if x1.device not in diagonals:
                    diagonals[x1.device] = paired(self.network, x1, x1, weight_var, bias_var, self.ntk,
                                                  x1_eq_x2=True)
                diagonal = diagonals[x1.device][..., col_start:]
        return architecture_matrix(self.network, x1[..., start:stop, :], x2[..., col_start:, :], weight_var, bias_var,
                                   self.ntk, x1_eq_x2=op.x1_eq_x2, row_offset=start - col_start,
                                   records=records, diagonal=diagonal)

    def diagonal(self, op) -> torch.Tensor:
        return paired(self.network, op.x1, op.x2, op.weight_var, op.bias_var, self.ntk, x1_eq_x2=op.x1_eq_x2)

    def get_indices(self, op, row_index, col_index, *batch_indices):
        if batch_indices or op.weight_var.dim() > 1:
            return None  # linear_operator's generic indexing
        # a pair holds its two inputs and, while propagated, a few state tensors
        numbers = 2 * self.network.features + _LIVE_NO_GRAD * self.network.entries_per_pair
        return chunked_pairs(lambda a, b: self.network.paired(a, b, op.weight_var, op.bias_var, self.ntk),
                             op.x1, op.x2, row_index, col_index, numbers_per_pair=numbers)
