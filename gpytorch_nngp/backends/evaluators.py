"""What the kernel operator (lazy.py) evaluates: one evaluator per kind of kernel.

`NetworkKernelOperator` owns everything about blocks, caches, products, gradients and sharding, for any kernel; an
evaluator says how to compute that kernel's entries: rows of the matrix, the rows a block may hold, the diagonal,
scattered entries, and optionally a faster derivative wrt the variances. Two evaluators exist: this module's
`FullyConnectedEvaluator` (the fully connected recursion, with its input Gram and forward-mode fast paths) and
`NetworkEvaluator` (backends/tiling.py: any architecture of the layer algebra, in tiles).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import torch

from ..algebra.mlp import fully_connected_recursion, input_grams, paired_kernel
from ..algebra.network import mlp_program
from ..functional.activations import Activation
from . import budget


@dataclass(frozen=True)
class Operands:
    """What an evaluator gets of its operator (the two are one-way: the operator asks, the evaluator computes from
    these): the inputs and variances, whether x1 is x2 (one point set, so a point's entry with itself is its
    variance), the batch shape, a dictionary for what the evaluator keeps per operator (records, the diagonal), and
    for forward-mode gradients the operator's plan of blocks, its device placement and its block weights."""

    x1: torch.Tensor
    x2: torch.Tensor
    weight_var: torch.Tensor
    bias_var: torch.Tensor
    x1_eq_x2: bool
    batch: torch.Size
    scratch: dict
    gradient_blocks: Callable = None  # () -> [(start, stop, col_start, triangle, device)]
    on: Callable = None  # (device, tensors) -> the tensors on that device
    block_weights: Callable = None  # (left, right, start, stop, col_start, triangle) -> the block's weights


class Evaluator:
    """The kernel-specific half of NetworkKernelOperator. `variance_axes`: trailing axes of weight_var and bias_var
    after their batch shape ((*batch, 1, 1) for the fully connected kernel, (*batch, L) for architectures). Every
    method takes the operator's Operands, never the operator."""

    variance_axes = 2
    expand_by_repeat = False  # _expand_batch repeats the operator (one evaluation) instead of expanding the inputs

    def key(self) -> tuple:
        """What identifies the kernel (for sharing a cached matrix between operators)."""
        raise NotImplementedError

    def rows(self, op, start, stop, x1, x2, weight_var, bias_var, workspace=None, col_start=0) -> torch.Tensor:
        """k(x1[start:stop], x2[col_start:]), (..., stop - start, m - col_start); col_start <= start when symmetric."""
        raise NotImplementedError

    def rows_per_block(self, op, with_grad: bool) -> int:
        raise NotImplementedError

    def diagonal(self, op) -> torch.Tensor:
        raise NotImplementedError

    def get_indices(self, op, row_index, col_index, *batch_indices) -> Optional[torch.Tensor]:
        """Entries by index, or None for linear_operator's generic indexing."""
        raise NotImplementedError

    def forward_mode_applies(self, op, wanted) -> bool:
        """Whether variance_derivative can give the wanted gradients (else autograd through recomputed blocks)."""
        return False

    def variance_derivative(self, op, left_vecs, right_vecs, wanted):
        raise NotImplementedError


def _block_rows(m: int, batch: int, itemsize: int, depth: int, with_grad: bool, device=None) -> int:
    """Rows per block within the budget's block bytes: with autograd about a dozen block x m tensors per layer are
    saved, without it a handful of recycled buffers live."""
    per_row = m * batch * itemsize * ((12 * max(depth, 1) + 4) if with_grad else 6)
    return max(1, budget.block_bytes(device) // max(per_row, 1))


def kernel_rows(x1_rows, x2, weight_var, bias_var, depth, activation, ntk, diagonal_offset=None, workspace=None):
    """Kernel entries k(x1_rows, x2), (..., b, m), by the dense recursion.

    diagonal_offset: when x1_rows are rows offset.. of x2 itself (a block of a symmetric matrix), the entries
    (i, offset + i) are the same point twice: their input Gram is set to the variance computed the same way as
    the variances, so that k12 == k11 == k22 bitwise there (|c| = 1 exactly, safe gradients).
    """
    no_grad = not torch.is_grad_enabled() or not any(t.requires_grad for t in (x1_rows, x2, weight_var, bias_var))
    # Inference: the Gram goes into a recycled buffer, which the recursion then overwrites.
    out = (workspace.take(x1_rows, (x1_rows.shape[0], x2.shape[0]))
           if no_grad and workspace is not None and x1_rows.dim() == 2 and x2.dim() == 2 else None)
    gram, var1, var2 = input_grams(x1_rows, x2, out=out, diagonal_offset=diagonal_offset)
    k, theta = fully_connected_recursion(gram, var1, var2, depth, activation, weight_var, bias_var, ntk=ntk,
                                         workspace=workspace, consume_gram=workspace is not None)
    if ntk and workspace is not None and k is not theta and k.shape == theta.shape:
        workspace.give(k)
    return theta if ntk else k


# Input rows gathered at once by chunked_pairs: 2^24 numbers (64 MiB in float32) per side.
PAIR_CHUNK_NUMBERS = 2 ** 24


def chunked_pairs(paired, x1: torch.Tensor, x2: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,
                  numbers_per_pair: int) -> torch.Tensor:
    """paired(x1[rows], x2[cols]) -> (k,) for broadcastable index tensors (unbatched x1 (n, d), x2 (m, d)), shaped
    like the broadcast indices, in chunks of about PAIR_CHUNK_NUMBERS / numbers_per_pair pairs (numbers_per_pair:
    what one pair holds at once, its gathered inputs and its state).

    GPyTorch's pivoted-Cholesky preconditioner asks for 15 whole rows at once: 15 n pairs, whose gathered inputs
    alone would be 2.35 GB per side at n = 50,000, d = 784.
    """
    rows, cols = torch.broadcast_tensors(rows, cols)
    flat_rows, flat_cols = rows.reshape(-1), cols.reshape(-1)
    step = max(1, PAIR_CHUNK_NUMBERS // max(numbers_per_pair, 1))
    out = torch.cat([paired(x1[flat_rows[i:i + step]], x2[flat_cols[i:i + step]])
                     for i in range(0, flat_rows.numel(), step)]) if flat_rows.numel() else \
        paired(x1[flat_rows], x2[flat_cols])
    return out.reshape(rows.shape)


class FullyConnectedEvaluator(Evaluator):
    """The fully connected kernel (depth hidden layers, an activation; NNGP or NTK) for NetworkKernelOperator."""

    def __init__(self, depth: int, activation: Activation, ntk: bool):
        self.depth, self.activation, self.ntk = depth, activation, ntk

    def key(self) -> Tuple:
        return ("fully connected", repr(self.activation), self.depth, self.ntk)

    def rows(self, op, start, stop, x1, x2, weight_var, bias_var, workspace=None, col_start=0):
        offset = start - col_start if op.x1_eq_x2 else None
        return kernel_rows(x1[..., start:stop, :], x2[..., col_start:, :], weight_var, bias_var, self.depth,
                           self.activation, self.ntk, diagonal_offset=offset, workspace=workspace)

    def rows_per_block(self, op, with_grad: bool) -> int:
        batch = math.prod(op.batch) if len(op.batch) else 1
        return _block_rows(op.x2.shape[-2], batch, op.x1.element_size(), self.depth, with_grad, op.x1.device)

    def diagonal(self, op) -> torch.Tensor:
        return paired_kernel(op.x1, op.x2, op.weight_var.squeeze(-1), op.bias_var.squeeze(-1), self.depth,
                             self.activation, self.ntk, x1_eq_x2=op.x1_eq_x2)

    def get_indices(self, op, row_index, col_index, *batch_indices):
        """Entries k(x1[row_index], x2[col_index]) elementwise (broadcast indices), by the diagonal recursion."""
        batch = op.batch
        x1 = op.x1.expand(*batch, *op.x1.shape[-2:]) if len(batch) else op.x1
        x2 = op.x2.expand(*batch, *op.x2.shape[-2:]) if len(batch) else op.x2
        wv = op.weight_var.expand(*batch, 1, 1) if len(batch) else op.weight_var
        bv = op.bias_var.expand(*batch, 1, 1) if len(batch) else op.bias_var
        wv = wv[(*batch_indices, 0, 0)] if batch_indices else wv.reshape(())
        bv = bv[(*batch_indices, 0, 0)] if batch_indices else bv.reshape(())
        if batch_indices:
            a, b = x1[(*batch_indices, row_index)], x2[(*batch_indices, col_index)]
            return paired_kernel(a, b, wv, bv, self.depth, self.activation, self.ntk)
        rows, cols = torch.broadcast_tensors(row_index, col_index)
        unique_rows, row_at = torch.unique(rows.reshape(-1), return_inverse=True)
        unique_cols, col_at = torch.unique(cols.reshape(-1), return_inverse=True)
        if unique_rows.numel() * unique_cols.numel() <= 4 * rows.numel():
            # Whole rows (GPyTorch's pivoted Cholesky asks for 15 at once): the block of the distinct rows and
            # columns through one Gram product, instead of n d products per row.
            block = self._index_block(op, unique_rows, unique_cols, wv, bv)
            return block[row_at, col_at].reshape(rows.shape)
        return chunked_pairs(lambda a, b: paired_kernel(a, b, wv, bv, self.depth, self.activation, self.ntk),
                             x1, x2, rows, cols, numbers_per_pair=2 * x1.shape[-1])

    def _index_block(self, op, rows, cols, weight_var, bias_var):
        """k(x1[rows], x2[cols]) for distinct sorted indices, (len(rows), len(cols)), in blocks of rows. A point with
        itself (a symmetric operator's i == j) gets its variance as Gram entry, as on the matrix's diagonal."""
        step = max(1, 2 ** 22 // max(cols.numel(), 1))
        blocks = []
        for start in range(0, rows.numel(), step):
            r = rows[start:start + step]
            gram, var1, var2 = input_grams(op.x1[r], op.x2[cols])
            if op.x1_eq_x2:
                gram = torch.where(r.unsqueeze(-1) == cols, var1.expand_as(gram), gram)
            k, theta = fully_connected_recursion(gram, var1, var2, self.depth, self.activation, weight_var, bias_var,
                                                 ntk=self.ntk)
            blocks.append(theta if self.ntk else k)
        return torch.cat(blocks, dim=-2)

    def forward_mode_applies(self, op, wanted) -> bool:
        """An unbatched kernel whose activation has forward-mode derivatives (Activation.dual_tangents); the
        inputs' gradients (wanted when ARD length scales scale them) come from the same pass."""
        return (self.activation.has_tangents and op.weight_var.numel() == 1 and op.bias_var.numel() == 1
                and op.x1.dim() == 2 and op.x2.dim() == 2)

    def variance_derivative(self, op, left_vecs, right_vecs, wanted):
        """The bilinear derivative wrt (x1, weight_var, bias_var[, x2]) by forward mode, block by block and without
        a graph (FlatProgram.tangents): about half the time of recomputing each block with autograd. The sums stay
        on the device (one transfer at the end, no host synchronization per block).

        Inputs: the gram x1 x2^T / d and the variances |x|^2 / d of a block are its only dependence on the inputs,
        so with G, h1, h2 the block's partials wrt them (contracted with the block's weights),
        dL/dx1 = (G x2 + 2 h1 x1) / d and dL/dx2 = (G^T x1 + 2 h2 x2) / d (both on x1 for a symmetric operator)."""
        w, b = op.weight_var.item(), op.bias_var.item()
        program = mlp_program(self.depth, self.activation)
        inputs = wanted[0] or (len(wanted) == 4 and wanted[3])
        grad_w = grad_b = torch.zeros((), dtype=op.weight_var.dtype, device=op.weight_var.device)
        grad_x1 = torch.zeros_like(op.x1) if inputs else None
        grad_x2 = (grad_x1 if op.x1_eq_x2 else torch.zeros_like(op.x2)) if inputs else None
        d = op.x1.shape[-1]
        with torch.no_grad():
            for start, stop, col, triangle, device in op.gradient_blocks():
                x1, x2, left, right = op.on(device, (op.x1, op.x2, left_vecs, right_vecs))
                offset = start - col if op.x1_eq_x2 else None
                rows, cols = x1[start:stop], x2[col:]
                gram, var1, var2 = input_grams(rows, cols, diagonal_offset=offset)
                weights = op.block_weights(left, right, start, stop, col, triangle)
                parts = program.tangents(gram, var1, var2, w, b, self.ntk, weights, inputs=inputs)
                grad_w, grad_b = grad_w + parts[0].to(grad_w.device), grad_b + parts[1].to(grad_b.device)
                if inputs:
                    g, h1, h2 = parts[2:]
                    one = (g @ cols).addcmul_(rows, h1.unsqueeze(-1), value=2.0).div_(d)
                    two = (g.mT @ rows).addcmul_(cols, h2.unsqueeze(-1), value=2.0).div_(d)
                    grad_x1[start:stop] += one.to(grad_x1.device)
                    grad_x2[col:] += two.to(grad_x2.device)
        out = [grad_x1, grad_w.expand_as(op.weight_var).clone(), grad_b.expand_as(op.bias_var).clone()]
        if len(wanted) == 4:
            out.append(grad_x2)
        return tuple(g if want else None for g, want in zip(out, wanted))
