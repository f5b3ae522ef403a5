"""Row-block ("lazy") backend: a linear_operator whose products and gradients never hold n x m autograd graphs.

Autograd through the dense recursion keeps about a dozen n x m intermediates per layer: 50,000 points would need
hundreds of GB. Here the kernel matrix is evaluated in blocks of rows without autograd:

- matmul: K @ rhs block by block. While the full matrix fits in `cache_bytes` it is evaluated once (no graph) and
  reused by every later product of the same operator (CG/Lanczos multiply many times per training step);
  otherwise each product recomputes the blocks (memory O(block x m)).
- gradients wrt the hyperparameters and inputs (`_bilinear_derivative`, what GPyTorch's solves, log-determinants
  and matmuls call in their backward): for each block, recompute K_block with autograd and backpropagate
  sum(K_block * (U_block V^T)), so the graph is one block deep.
- diagonal: the O(n) diagonal recursion.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from linear_operator.operators import LinearOperator

from ..functional.activations import Activation
from ..functional.recursion import fully_connected_recursion, input_gram_diag, take_buffer

# Bytes of autograd intermediates allowed per block in the backward pass (about a dozen block x m tensors per
# layer are saved) and per block in the forward pass.
BLOCK_BYTES = 256 * 2 ** 20
DEFAULT_CACHE_BYTES = 12 * 2 ** 30


def _block_rows(m: int, batch: int, itemsize: int, depth: int, with_grad: bool) -> int:
    per_row = m * batch * itemsize * ((12 * max(depth, 1) + 4) if with_grad else 6)
    return max(1, BLOCK_BYTES // max(per_row, 1))


def kernel_rows(x1_rows, x2, weight_var, bias_var, depth, activation, ntk, diagonal_offset=None, workspace=None):
    """Kernel entries k(x1_rows, x2), (..., b, m), by the dense recursion.

    diagonal_offset: when x1_rows are rows offset.. of x2 itself (a block of a symmetric matrix), the entries
    (i, offset + i) are the same point twice: their input Gram is set to the variance computed the same way as
    the variances, so that k12 == k11 == k22 bitwise there (|c| = 1 exactly, safe gradients).
    """
    d = x2.shape[-1]
    no_grad = not torch.is_grad_enabled() or not any(t.requires_grad for t in (x1_rows, x2, weight_var, bias_var))
    if no_grad and workspace is not None and x1_rows.dim() == 2 and x2.dim() == 2:
        # Inference: write the Gram into a recycled buffer, and let the recursion overwrite it.
        buffer = take_buffer(workspace, x1_rows, (x1_rows.shape[0], x2.shape[0]))
        gram = torch.matmul(x1_rows, x2.transpose(-1, -2), out=buffer).div_(d)
    else:
        gram = x1_rows @ x2.transpose(-1, -2) / d
    var1 = (x1_rows * x1_rows).sum(-1, keepdim=True) / d
    var2 = ((x2 * x2).sum(-1) / d).unsqueeze(-2)
    if diagonal_offset is not None:
        rows = torch.arange(x1_rows.shape[-2], device=gram.device)
        cols = rows + diagonal_offset
        diag_values = var2[..., 0, :].index_select(-1, cols)
        gram[..., rows, cols] = diag_values  # gram is a fresh tensor; its producer (a division) keeps no output
        var1 = diag_values.unsqueeze(-1)
    k, theta = fully_connected_recursion(gram, var1, var2, depth, activation, weight_var, bias_var, ntk=ntk,
                                         workspace=workspace, consume_gram=workspace is not None)
    if ntk and workspace is not None and k is not theta and k.shape == theta.shape:
        workspace.append(k)
    return theta if ntk else k


class NetworkKernelOperator(LinearOperator):
    """The (..., n, m) kernel matrix of a fully connected network, evaluated in row blocks.

    x1: (..., n, d); x2: (..., m, d); weight_var, bias_var: (*batch, 1, 1). depth, activation, ntk as in the
    kernels. symmetric: x1 and x2 are the same points (the diagonal is then exact, see kernel_rows).
    cache_bytes: evaluate and keep the full matrix (without autograd) when it is at most this large.
    """

    def __init__(self, x1, x2, weight_var, bias_var, *, depth: int, activation: Activation, ntk: bool,
                 symmetric: bool = False, cache_bytes: int = DEFAULT_CACHE_BYTES):
        super().__init__(x1, x2, weight_var, bias_var, depth=depth, activation=activation, ntk=ntk,
                         symmetric=symmetric, cache_bytes=cache_bytes)
        self.x1, self.x2 = x1, x2
        self.weight_var, self.bias_var = weight_var, bias_var
        self.depth, self.activation, self.ntk = depth, activation, ntk
        self.symmetric = symmetric
        self.cache_bytes = cache_bytes
        self._dense_cache: Optional[torch.Tensor] = None

    # -- shape -------------------------------------------------------------------------------------------------
    def _batch(self):
        return torch.broadcast_shapes(self.x1.shape[:-2], self.x2.shape[:-2], self.weight_var.shape[:-2],
                                      self.bias_var.shape[:-2])

    def _size(self):
        return torch.Size(self._batch() + (self.x1.shape[-2], self.x2.shape[-2]))

    def _transpose_nonbatch(self):
        return type(self)(self.x2, self.x1, self.weight_var, self.bias_var, depth=self.depth,
                          activation=self.activation, ntk=self.ntk, symmetric=self.symmetric,
                          cache_bytes=self.cache_bytes)

    # -- evaluation --------------------------------------------------------------------------------------------
    def _rows(self, start, stop, x1, x2, weight_var, bias_var, workspace=None):
        offset = start if self.symmetric else None
        return kernel_rows(x1[..., start:stop, :], x2, weight_var, bias_var, self.depth, self.activation,
                           self.ntk, diagonal_offset=offset, workspace=workspace)

    def _blocks(self, with_grad: bool):
        n, m = self.x1.shape[-2], self.x2.shape[-2]
        batch = math.prod(self._batch()) if len(self._batch()) else 1
        step = _block_rows(m, batch, self.x1.element_size(), self.depth, with_grad)
        return [(start, min(n, start + step)) for start in range(0, n, step)]

    def _dense_no_grad(self) -> Optional[torch.Tensor]:
        """The full matrix without autograd, kept while it fits in cache_bytes (else None)."""
        if self._dense_cache is None and self.shape.numel() * self.x1.element_size() <= self.cache_bytes:
            with torch.no_grad():
                out = torch.empty(self.shape, dtype=self.x1.dtype, device=self.x1.device)
                workspace = []  # blocks share their buffers: fresh n x m allocations cost as much as the arithmetic
                for start, stop in self._blocks(with_grad=False):
                    block = self._rows(start, stop, self.x1, self.x2, self.weight_var, self.bias_var, workspace)
                    out[..., start:stop, :] = block
                    workspace.append(block)
            self._dense_cache = out
        return self._dense_cache

    def _matmul(self, rhs: torch.Tensor) -> torch.Tensor:
        # Gradients reach the hyperparameters through _bilinear_derivative (GPyTorch's autograd functions call it),
        # so the product itself is computed without a graph.
        dense = self._dense_no_grad()
        if dense is not None:
            return dense @ rhs
        with torch.no_grad():
            out = None
            workspace = []
            for start, stop in self._blocks(with_grad=False):
                block = self._rows(start, stop, self.x1, self.x2, self.weight_var, self.bias_var, workspace)
                part = block @ rhs
                workspace.append(block)
                if out is None:
                    out = torch.empty(part.shape[:-2] + (self.x1.shape[-2], part.shape[-1]), dtype=part.dtype,
                                      device=part.device)
                out[..., start:stop, :] = part
        return out

    def _bilinear_derivative(self, left_vecs: torch.Tensor, right_vecs: torch.Tensor):
        """d/d(x1, x2, weight_var, bias_var) of sum(left^T K right), one block of rows at a time."""
        args = (self.x1, self.x2, self.weight_var, self.bias_var)
        wanted = [a.requires_grad for a in args]
        if not any(wanted):
            return (None,) * 4
        leaves = [a.detach().requires_grad_(w) for a, w in zip(args, wanted)]
        grads = [torch.zeros_like(a) if w else None for a, w in zip(leaves, wanted)]
        with torch.enable_grad():
            for start, stop in self._blocks(with_grad=True):
                block = self._rows(start, stop, *leaves)
                weights = left_vecs[..., start:stop, :] @ right_vecs.transpose(-1, -2)
                targets = [leaf for leaf, w in zip(leaves, wanted) if w]
                parts = iter(torch.autograd.grad((block * weights).sum(), targets, allow_unused=True))
                for i, w in enumerate(wanted):
                    if w:
                        g = next(parts)
                        if g is not None:
                            grads[i] = grads[i] + g
        return tuple(grads)

    def _diagonal(self) -> torch.Tensor:
        if self.x1.shape[-2] != self.x2.shape[-2]:
            raise RuntimeError("the diagonal of a non-square kernel operator is undefined")
        wv, bv = self.weight_var.squeeze(-1), self.bias_var.squeeze(-1)
        if self.symmetric:
            var = input_gram_diag(self.x1, self.x1)
            k, theta = fully_connected_recursion(var, var, var, self.depth, self.activation, wv, bv, self.ntk)
        else:
            k, theta = fully_connected_recursion(
                input_gram_diag(self.x1, self.x2), input_gram_diag(self.x1, self.x1),
                input_gram_diag(self.x2, self.x2), self.depth, self.activation, wv, bv, self.ntk)
        out = theta if self.ntk else k
        return out.expand(self.shape[:-1])

    def to_dense(self) -> torch.Tensor:
        if not torch.is_grad_enabled() or not any(
                t.requires_grad for t in (self.x1, self.x2, self.weight_var, self.bias_var)):
            dense = self._dense_no_grad()
            if dense is not None:
                return dense
        blocks = [self._rows(start, stop, self.x1, self.x2, self.weight_var, self.bias_var)
                  for start, stop in self._blocks(with_grad=True)]
        return torch.cat(blocks, dim=-2).expand(self.shape)

    def _get_indices(self, row_index, col_index, *batch_indices):
        """Entries k(x1[row_index], x2[col_index]) elementwise (broadcast indices), by the diagonal recursion."""
        x1 = self.x1.expand(*self._batch(), *self.x1.shape[-2:]) if len(self._batch()) else self.x1
        x2 = self.x2.expand(*self._batch(), *self.x2.shape[-2:]) if len(self._batch()) else self.x2
        a = x1[(*batch_indices, row_index)]
        b = x2[(*batch_indices, col_index)]
        wv = self.weight_var.expand(*self._batch(), 1, 1) if len(self._batch()) else self.weight_var
        bv = self.bias_var.expand(*self._batch(), 1, 1) if len(self._batch()) else self.bias_var
        wv = wv[(*batch_indices, 0, 0)] if batch_indices else wv.reshape(())
        bv = bv[(*batch_indices, 0, 0)] if batch_indices else bv.reshape(())
        k, theta = fully_connected_recursion(
            input_gram_diag(a, b), input_gram_diag(a, a), input_gram_diag(b, b), self.depth, self.activation,
            wv, bv, self.ntk)
        return theta if self.ntk else k

    def _getitem(self, row_index, col_index, *batch_indices):
        """Slices of rows/columns (and batch) give another operator on the selected points."""
        if not all(isinstance(i, slice) for i in batch_indices) or not isinstance(row_index, (slice, torch.Tensor)) \
                or not isinstance(col_index, (slice, torch.Tensor)):
            return super()._getitem(row_index, col_index, *batch_indices)
        if batch_indices:
            return super()._getitem(row_index, col_index, *batch_indices)
        same_rows = self.symmetric and isinstance(row_index, slice) and row_index == col_index
        return type(self)(self.x1[..., row_index, :], self.x2[..., col_index, :], self.weight_var,
                          self.bias_var, depth=self.depth, activation=self.activation, ntk=self.ntk,
                          symmetric=same_rows, cache_bytes=self.cache_bytes)

    def _expand_batch(self, batch_shape):
        return type(self)(
            self.x1.expand(*batch_shape, *self.x1.shape[-2:]), self.x2.expand(*batch_shape, *self.x2.shape[-2:]),
            self.weight_var, self.bias_var, depth=self.depth, activation=self.activation, ntk=self.ntk,
            symmetric=self.symmetric, cache_bytes=self.cache_bytes)
