"""Row-block ("lazy") backend: a linear_operator whose products and gradients never hold n x m autograd graphs.

Autograd through the dense recursion keeps about a dozen n x m intermediates per layer: 50,000 points would need
hundreds of GB. Here the kernel matrix is evaluated in blocks of rows without autograd:

- symmetric operators (k(x, x)) evaluate only the upper triangle: each block of rows starts at its own first column,
  and the part right of the diagonal block stands in for its mirror image below it. Evaluation, products and
  gradients then cost half of the whole matrix.
- matmul: K @ rhs block by block. While the matrix fits in the cache budget (backends/budget.py) it is evaluated once
  (no graph) and reused by every later product of the same operator (CG/Lanczos multiply many times per training
  step); a symmetric operator keeps only its upper-triangle blocks (half the memory), whose products add their
  mirror images. Otherwise each product recomputes the blocks (memory O(block x m)).
- gradients wrt the hyperparameters and inputs (`_bilinear_derivative`, what GPyTorch's solves, log-determinants
  and matmuls call in their backward): for each block, recompute K_block with autograd and backpropagate
  sum(K_block * (U_block V^T)), so the graph is one block deep.
- diagonal: the O(n) diagonal recursion.
- sharding (backends/distributed.py): with a RowSharding, this process evaluates only its own rows (its rank's share,
  or one share per device); products gather the shares, gradients are summed over the processes.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from linear_operator.operators import LinearOperator

from ..functional.workspace import Workspace
from . import budget, shared_cache
from .distributed import RowSharding
from .evaluators import Evaluator, Operands


class NetworkKernelOperator(LinearOperator):
    """The (..., n, m) kernel matrix of a network kernel, evaluated in row blocks: one operator for every kernel,
    which `evaluator` computes (backends/evaluators.py: the fully connected kernel, or any architecture).

    Args:
        x1: (..., n, d) inputs of the rows.
        weight_var, bias_var: the variances, (*batch, 1, 1) for the fully connected kernel, (*batch, L) for an
            architecture (evaluator.variance_axes).
        x2: (..., m, d) inputs of the columns, or None for a symmetric operator on x1 alone. The diagonal of a
            symmetric operator is then exact (|c| = 1, see input_grams), and its representation holds the
            points once, so gradients reach them through one tensor.
        evaluator: what the kernel is and how its entries are computed.
        cache_bytes: evaluate and keep the matrix (without autograd) when what is kept is at most this large (the
            upper triangle of a symmetric operator; with a sharding, this process's blocks); None: the budget of
            the device (backends/budget.py).
        sharding: a RowSharding (backends/distributed.py): evaluate only this process's rows, or None.
    """

    def __init__(self, x1: torch.Tensor, weight_var: torch.Tensor, bias_var: torch.Tensor,
                 x2: Optional[torch.Tensor] = None, *, evaluator: Evaluator, cache_bytes: Optional[int] = None,
                 sharding: Optional[RowSharding] = None):
        args = (x1, weight_var, bias_var) if x2 is None else (x1, weight_var, bias_var, x2)
        super().__init__(*args, evaluator=evaluator, cache_bytes=cache_bytes, sharding=sharding)
        self.x1_eq_x2 = x2 is None
        self.x1, self.x2 = x1, (x1 if x2 is None else x2)
        self.weight_var, self.bias_var = weight_var, bias_var
        self.evaluator = evaluator
        self.cache_bytes = cache_bytes
        self.sharding = sharding
        self._dense_cache = None
        self.scratch: dict = {}  # what the evaluator keeps for this operator (per-device records, the diagonal)

    def _like(self, x1, x2, sharding=None):
        """An operator of the same network and variances on other points (x2 None: symmetric on x1), with the same
        sharding unless one is given ("none" for an unsharded one)."""
        sharding = self.sharding if sharding is None else (None if sharding == "none" else sharding)
        return type(self)(x1, self.weight_var, self.bias_var, x2, evaluator=self.evaluator,
                          cache_bytes=self.cache_bytes, sharding=sharding)

    def _operands(self) -> Operands:
        """What the evaluator gets of this operator (evaluators.Operands)."""
        return Operands(self.x1, self.x2, self.weight_var, self.bias_var, self.x1_eq_x2, self._batch(), self.scratch,
                        self._gradient_blocks, self._on, self._block_weights)

    # -- shape -------------------------------------------------------------------------------------------------
    def _batch(self):
        axes = self.evaluator.variance_axes
        return torch.broadcast_shapes(self.x1.shape[:-2], self.x2.shape[:-2], self.weight_var.shape[:-axes],
                                      self.bias_var.shape[:-axes])

    def _size(self):
        return torch.Size(self._batch() + (self.x1.shape[-2], self.x2.shape[-2]))

    def _transpose_nonbatch(self):
        if self.x1_eq_x2:  # K^T = K, and the cached matrix is kept
            return self
        return self._like(self.x2, self.x1)

    # -- evaluation --------------------------------------------------------------------------------------------
    def _rows(self, start, stop, x1, x2, weight_var, bias_var, workspace=None, col_start=0):
        """k(x1[start:stop], x2[col_start:]), (..., stop - start, m - col_start); col_start <= start when symmetric."""
        return self.evaluator.rows(self._operands(), start, stop, x1, x2, weight_var, bias_var, workspace, col_start)

    def _block_size(self, with_grad: bool) -> int:
        """Rows per block, for blocks of all m columns."""
        return self.evaluator.rows_per_block(self._operands(), with_grad)

    def _blocks(self, with_grad: bool, triangle: bool = False, rows: Optional[Tuple[int, int]] = None):
        """(start, stop, col_start) of each block of rows (all rows, or rows = [first, last)): all columns, or with
        triangle (a symmetric operator) the upper triangle, columns from start on."""
        first, last = rows or (0, self.x1.shape[-2])
        step = self._block_size(with_grad)
        return [(start, min(last, start + step), start if triangle else 0) for start in range(first, last, step)]

    def _parts(self):
        """(start, stop, device) of the rows this process evaluates: all of them unless sharded (a symmetric
        operator's shares hold equal parts of the upper triangle)."""
        n = self.x1.shape[-2]
        return self.sharding.parts(n, triangle=self.x1_eq_x2) if self.sharding is not None else [(0, n, None)]

    def _on(self, device, tensors):
        """The tensors on `device` (None: where they are); differentiable copies."""
        return [t if device is None or t is None or t.device == device else t.to(device) for t in tensors]

    def _block_weights(self, left_vecs, right_vecs, start, stop, col_start, triangle: bool):
        """The weights of block k(x1[start:stop], x2[col_start:]) in sum(left^T K right): left_i . right_j, and for
        a triangle block also right_i . left_j, the weight of the mirrored entry k_ji = k_ij. The diagonal block
        holds both entries of its pairs itself, so there the sum is halved."""
        weights = left_vecs[..., start:stop, :] @ right_vecs[..., col_start:, :].mT
        if triangle:
            weights.add_(right_vecs[..., start:stop, :] @ left_vecs[..., col_start:, :].mT)
            weights[..., :, :stop - start].mul_(0.5)
        return weights

    def _keeps_blocks(self) -> bool:
        """Whether the cache holds blocks (a symmetric operator's upper triangle, a sharded operator's own blocks)
        rather than the whole matrix."""
        return self.x1_eq_x2 or self.sharding is not None

    def _cache_fits(self) -> bool:
        """Whether what this process keeps fits in the cache budget: the whole matrix, or its blocks."""
        if not self._keeps_blocks():
            entries = self.shape.numel()
        else:
            batch = self.shape.numel() // max(self.shape[-2] * self.shape[-1], 1)
            entries = batch * sum((stop - start) * (self.shape[-1] - col)
                                  for start, stop, col, _ in self._local_block_ranges())
        limit = self.cache_bytes if self.cache_bytes is not None else budget.cache_bytes(self.x1.device)
        return entries * self.x1.element_size() <= limit

    def _dense_no_grad(self):
        """The matrix without autograd, kept while it fits in the cache budget (else None): the full (..., n, m)
        tensor, or shared_cache.CachedBlocks (see _keeps_blocks and _local_blocks)."""
        if self._dense_cache is None and self._cache_fits():
            self._dense_cache = shared_cache.find(self)
            if self._dense_cache is None:
                self._dense_cache = self._evaluate_cache()
                shared_cache.keep(self, self._dense_cache)
        return self._dense_cache

    def _evaluate_cache(self):
        if self._keeps_blocks():
            return shared_cache.CachedBlocks(self._evaluate_blocks(keep=True))
        out = torch.empty(self.shape, dtype=self.x1.dtype, device=self.x1.device)
        for start, stop, col, _, block in self._evaluate_blocks():
            out[..., start:stop, col:] = block
        return out

    def _assemble(self, blocks) -> torch.Tensor:
        """The full matrix from upper-triangle blocks (their mirror images below the diagonal blocks)."""
        batch = blocks[0][-1].shape[:-2] if blocks else self._batch()
        out = torch.empty(*batch, *self.shape[-2:], dtype=self.x1.dtype, device=self.x1.device)
        for start, stop, col, _, block in blocks:
            out[..., start:stop, col:] = block
            if self.x1_eq_x2:
                out[..., stop:, start:stop] = block[..., stop - start:].mT
        return out

    def _matmul(self, rhs: torch.Tensor) -> torch.Tensor:
        """K @ rhs (..., m, t) -> (..., n, t), without an n x m graph: where gradients are wanted, the backward
        pass is _bilinear_derivative (block by block) and K^T @ grad."""
        if torch.is_grad_enabled() and (rhs.requires_grad or any(t.requires_grad for t in self._args)):
            return _BlockwiseMatmul.apply(self, rhs, *self._args)
        return self._matmul_no_grad(rhs)

    def _local_block_ranges(self):
        """(start, stop, col_start, part index) of this process's blocks: its rows (upper triangle if symmetric)."""
        return [(start, stop, col, i) for i, (first, last, _) in enumerate(self._parts())
                for start, stop, col in self._blocks(with_grad=False, triangle=self.x1_eq_x2, rows=(first, last))]

    def _local_blocks(self):
        """(start, stop, col_start, part index, block) of a sharded operator's blocks: the cached ones, or evaluated
        one at a time (_evaluate_blocks)."""
        cached = self._dense_no_grad()
        return cached if cached is not None else self._evaluate_blocks()

    def _evaluate_blocks(self, keep: bool = False):
        """Yields (start, stop, col_start, part index, block) for this process's blocks, evaluated without autograd,
        each on its part's device. The blocks share recycled buffers (fresh n x m allocations cost as much as the
        arithmetic), so each is valid until the next is asked for; keep: copies that may be stored."""
        parts = self._parts()
        with torch.no_grad():
            workspace, device = Workspace(shrink=True), "none yet"
            for start, stop, col, i in self._local_block_ranges():
                if parts[i][2] != device:
                    workspace, device = Workspace(shrink=True), parts[i][2]
                    x1, x2, weight_var, bias_var = self._on(device, (self.x1, self.x2, self.weight_var, self.bias_var))
                block = self._rows(start, stop, x1, x2, weight_var, bias_var, workspace, col)
                yield start, stop, col, i, (block.clone() if keep else block)
                workspace.give(block)

    def _sharded_matmul(self, rhs: torch.Tensor) -> torch.Tensor:
        """This process's blocks times rhs, then the sharding's collective. A symmetric operator's blocks are its
        share of the upper triangle: each adds its product to its own rows and its mirror image's to the rows below,
        and the partial products are summed over the processes. Otherwise each part's rows are gathered."""
        parts = self._parts()
        on = [rhs if device is None else rhs.to(device) for _, _, device in parts]
        n, t = self.x1.shape[-2], rhs.shape[-1]
        batch = torch.broadcast_shapes(self._batch(), rhs.shape[:-2])  # every rank's, also one without rows
        if self.x1_eq_x2:
            partial = [r.new_zeros(*batch, n, t) for r in on]
            for start, stop, col, i, block in self._local_blocks():
                self._add_block_product(partial[i], start, stop, col, block, on[i])
            return self.sharding.reduce_sum(partial, check=rhs)
        pieces = [[r.new_zeros(*batch, 0, t)] for r in on]
        for *_, i, block in self._local_blocks():
            pieces[i].append(block @ on[i])
        return self.sharding.gather([torch.cat(p, dim=-2) for p in pieces], n, check=rhs)

    def _matmul_no_grad(self, rhs: torch.Tensor) -> torch.Tensor:
        if self.sharding is not None:
            return self._sharded_matmul(rhs)
        dense = self._dense_no_grad()
        if dense is not None and not isinstance(dense, shared_cache.CachedBlocks):
            return dense @ rhs
        out = rhs.new_zeros(*torch.broadcast_shapes(self._batch(), rhs.shape[:-2]), self.x1.shape[-2], rhs.shape[-1])
        for start, stop, col, _, block in (dense if dense is not None else self._evaluate_blocks()):
            self._add_block_product(out, start, stop, col, block, rhs)
        return out

    def _add_block_product(self, out, start, stop, col, block, rhs):
        """out += the product of block k(x1[start:stop], x2[col:]) with rhs (..., m, t); for a symmetric operator's
        triangle block, also its mirror image's, which lands in the rows below the block."""
        out[..., start:stop, :] += block @ rhs[..., col:, :]
        if self.x1_eq_x2:  # (rhs^T block)^T reads the block row by row, faster than block^T @ rhs on a CPU
            out[..., stop:, :] += (rhs[..., start:stop, :].mT @ block[..., stop - start:]).mT

    def _bilinear_derivative(self, left_vecs: torch.Tensor, right_vecs: torch.Tensor):
        """d/d(representation) of sum(left^T K right), one block of rows at a time; left (..., n, t), right
        (..., m, t). Returns one gradient (or None) per tensor of the representation (x1, weight_var, bias_var
        [, x2])."""
        wanted = [a.requires_grad for a in self._args]
        if not any(wanted):
            return (None,) * len(wanted)
        operands = self._operands()
        if left_vecs.dim() == 2 and right_vecs.dim() == 2 and self.evaluator.forward_mode_applies(operands, wanted):
            grads = self.evaluator.variance_derivative(operands, left_vecs, right_vecs, wanted)
        else:
            grads = self._autograd_derivative(left_vecs, right_vecs, wanted)
        if self.sharding is not None:  # each process has its own rows' part: the sum over processes
            grads = tuple(self.sharding.all_reduce(list(grads), check=(left_vecs, right_vecs)))
        return grads

    def _gradient_blocks(self):
        """(start, stop, col_start, triangle, device) of the blocks whose derivatives this process adds up: all
        rows, or with a sharding this process's; the upper triangle only of a symmetric operator."""
        return [(start, stop, col, self.x1_eq_x2, device) for first, last, device in self._parts()
                for start, stop, col in self._blocks(with_grad=True, triangle=self.x1_eq_x2, rows=(first, last))]

    def _autograd_derivative(self, left_vecs, right_vecs, wanted):
        """The bilinear derivative by autograd through one recomputed block at a time."""
        leaves = [a.detach().requires_grad_(w) for a, w in zip(self._args, wanted)]
        targets = [leaf for leaf, w in zip(leaves, wanted) if w]
        grads = [torch.zeros_like(t) for t in targets]
        with torch.enable_grad():
            for start, stop, col, triangle, device in self._gradient_blocks():
                x1, weight_var, bias_var, *rest = self._on(device, leaves)
                x2 = rest[0] if rest else x1
                left, right = self._on(device, (left_vecs, right_vecs))
                block = self._rows(start, stop, x1, x2, weight_var, bias_var, col_start=col)
                weights = self._block_weights(left, right, start, stop, col, triangle)
                parts = torch.autograd.grad((block * weights).sum(), targets, allow_unused=True)
                grads = [g if part is None else g + part for g, part in zip(grads, parts)]
        grads = iter(grads)
        return tuple(next(grads) if w else None for w in wanted)

    def _diagonal(self) -> torch.Tensor:
        if self.x1.shape[-2] != self.x2.shape[-2]:
            raise RuntimeError("the diagonal of a non-square kernel operator is undefined")
        return self.evaluator.diagonal(self._operands()).expand(self.shape[:-1])

    def to_dense(self) -> torch.Tensor:
        if self.sharding is not None:  # the whole matrix is wanted: every process evaluates it (small n only)
            return self._like(self.x1, None if self.x1_eq_x2 else self.x2, sharding="none").to_dense()
        if not torch.is_grad_enabled() or not any(
                t.requires_grad for t in (self.x1, self.x2, self.weight_var, self.bias_var)):
            dense = self._dense_no_grad()
            if isinstance(dense, shared_cache.CachedBlocks):
                return self._assemble(dense).expand(self.shape)
            if dense is not None:
                return dense
        blocks = [self._rows(start, stop, self.x1, self.x2, self.weight_var, self.bias_var)
                  for start, stop, _ in self._blocks(with_grad=True)]
        return torch.cat(blocks, dim=-2).expand(self.shape)

    def _get_indices(self, row_index, col_index, *batch_indices):
        """Entries k(x1[row_index], x2[col_index]) elementwise (broadcast indices), without the matrix."""
        out = self.evaluator.get_indices(self._operands(), row_index, col_index, *batch_indices)
        return super()._get_indices(row_index, col_index, *batch_indices) if out is None else out

    def _getitem(self, row_index, col_index, *batch_indices):
        """Slices of rows/columns (and batch) give another operator on the selected points."""
        if not all(isinstance(i, slice) for i in batch_indices) or not isinstance(row_index, (slice, torch.Tensor)) \
                or not isinstance(col_index, (slice, torch.Tensor)):
            return super()._getitem(row_index, col_index, *batch_indices)
        if batch_indices:
            return super()._getitem(row_index, col_index, *batch_indices)
        same_rows = self.x1_eq_x2 and isinstance(row_index, slice) and row_index == col_index
        return self._like(self.x1[..., row_index, :], None if same_rows else self.x2[..., col_index, :])

    def _expand_batch(self, batch_shape):
        if self.evaluator.expand_by_repeat:  # repeat this operator (one evaluation), not the expanded inputs
            return LinearOperator._expand_batch(self, batch_shape)
        x1 = self.x1.expand(*batch_shape, *self.x1.shape[-2:])
        return self._like(x1, None if self.x1_eq_x2 else self.x2.expand(*batch_shape, *self.x2.shape[-2:]))


class _BlockwiseMatmul(torch.autograd.Function):
    """out = K rhs for a NetworkKernelOperator K, differentiable in rhs and in K's representation, without ever
    holding an n x m autograd graph."""

    @staticmethod
    def forward(ctx, op: NetworkKernelOperator, rhs: torch.Tensor, *representation: torch.Tensor) -> torch.Tensor:
        ctx.op = op
        ctx.save_for_backward(rhs)
        return op._matmul_no_grad(rhs)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (rhs,) = ctx.saved_tensors
        op = ctx.op
        grad_rhs = None
        if ctx.needs_input_grad[1]:
            grad_rhs = op._transpose_nonbatch()._matmul_no_grad(grad)
            grad_rhs = grad_rhs.sum_to_size(rhs.shape) if grad_rhs.shape != rhs.shape else grad_rhs
        # d <grad, K rhs> / d representation = bilinear derivative with left = grad, right = rhs.
        parts = (op._bilinear_derivative(grad, rhs) if any(ctx.needs_input_grad[2:])
                 else (None,) * (len(ctx.needs_input_grad) - 2))
        return (None, grad_rhs, *parts)
