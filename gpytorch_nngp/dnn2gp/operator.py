"""The finite NTK J(x1) J(x2)^T as a linear operator multiplied through Jacobian-vector products.

A product K v costs one vector-Jacobian product over x2 (J(x2)^T v, a parameter-sized vector per column of v) and
one Jacobian-vector product over x1, i.e. about three forward passes, and holds neither the P x P matrix nor the
n x P Jacobian: memory is P per column plus the activations of one chunk of rows. GPyTorch's conjugate
gradients and Lanczos then run on it (Maddox et al. 2021 do the same for their finite-NTK GPs).
"""
from __future__ import annotations

from typing import Sequence

import torch
from linear_operator.operators import DenseLinearOperator, LinearOperator

from .linearize import JACOBIAN_BLOCK_BYTES, LinearizedNetwork

DENSE_COLUMNS = 64  # unit vectors per product when a large operator is made dense


class FiniteNTKOperator(LinearOperator):
    """The finite NTK J(x1) J(x2)^T as a (*batch_shape, n1 C, n2 C) operator; rows and columns are point-major
    (index i C + c).

    Args:
        x1: (n1, ...) inputs of the rows; x2: (n2, ...) inputs of the columns (any shape the network takes).
        network: the linearized network (C outputs).
        batch_shape: the same matrix broadcast over these batch dimensions (what expand / unsqueeze give; the
            inputs themselves are never batched, since they are the network's inputs).
    """

    def __init__(self, x1: torch.Tensor, x2: torch.Tensor, *, network: LinearizedNetwork,
                 batch_shape: Sequence[int] = ()):
        batch_shape = torch.Size(batch_shape)
        super().__init__(x1, x2, network=network, batch_shape=batch_shape)
        self.x1, self.x2, self.network, self.operator_batch_shape = x1, x2, network, batch_shape
        self.num_outputs = network.num_outputs(x1)

    def _size(self):
        c = self.num_outputs
        return self.operator_batch_shape + torch.Size((self.x1.shape[0] * c, self.x2.shape[0] * c))

    def _like(self, x1, x2, batch_shape):
        return FiniteNTKOperator(x1, x2, network=self.network, batch_shape=batch_shape)

    def _transpose_nonbatch(self):
        return self._like(self.x2, self.x1, self.operator_batch_shape)

    def _expand_batch(self, batch_shape):
        return self._like(self.x1, self.x2, torch.Size(batch_shape))

    def _unsqueeze_batch(self, dim: int):
        shape = list(self.operator_batch_shape)
        shape.insert(dim, 1)
        return self._like(self.x1, self.x2, torch.Size(shape))

    def _getitem(self, row_index, col_index, *batch_indices):
        """Batch indices change only batch_shape; with one output, rows and columns are points and a slice or index
        tensor selects them; anything else indexes the dense matrix."""
        simple = all(isinstance(i, (int, slice)) for i in batch_indices)
        if simple:
            batch_shape = torch.empty(self.operator_batch_shape, device="meta")[batch_indices].shape
            full = slice(None, None, None)
            if row_index == full and col_index == full:
                return self._like(self.x1, self.x2, batch_shape)
            if self.num_outputs == 1 and all(isinstance(i, (slice, torch.Tensor)) for i in (row_index, col_index)):
                if not (isinstance(row_index, torch.Tensor) and isinstance(col_index, torch.Tensor)):
                    return self._like(self.x1[row_index], self.x2[col_index], batch_shape)
        return DenseLinearOperator(self.to_dense()[(*batch_indices, row_index, col_index)])

    def _matmul(self, rhs: torch.Tensor) -> torch.Tensor:
        """rhs (..., n2 C) or (..., n2 C, t): one vector-Jacobian and one Jacobian-vector product for all the
        columns of all batch entries at once."""
        vector = rhs.dim() == 1
        columns = rhs.unsqueeze(-1) if vector else rhs
        batch = torch.broadcast_shapes(columns.shape[:-2], self.operator_batch_shape)
        columns = columns.expand(*batch, *columns.shape[-2:])
        n2c, t = columns.shape[-2:]
        flat = columns.movedim(-2, 0).reshape(n2c, -1)  # (n2 C, batch x t)
        c = self.num_outputs
        cotangents = flat.mT.reshape(-1, self.x2.shape[0], c)
        products = self.network.jvp(self.x1, self.network.vjp(self.x2, cotangents))  # (batch x t, n1, C)
        out = products.reshape(products.shape[0], -1).mT.reshape(-1, *batch, t).movedim(0, -2)
        return out.squeeze(-1) if vector else out

    def _diagonal(self) -> torch.Tensor:
        if self.x1.shape != self.x2.shape or not torch.equal(self.x1, self.x2):
            raise RuntimeError("the diagonal of FiniteNTKOperator is defined for x1 == x2 only")
        diagonal = self.network.kernel_diagonal(self.x1).diagonal(dim1=-2, dim2=-1).reshape(-1)
        return diagonal.expand(*self.operator_batch_shape, diagonal.shape[-1])

    def to_dense(self) -> torch.Tensor:
        net = self.network
        jacobian_bytes = (self.x1.shape[0] + self.x2.shape[0]) * self.num_outputs * net.num_params * net.dtype.itemsize
        if jacobian_bytes <= 4 * JACOBIAN_BLOCK_BYTES:
            j1 = net.jacobian(self.x1).flatten(0, 1)
            j2 = j1 if self.x1 is self.x2 else net.jacobian(self.x2).flatten(0, 1)
            return (j1 @ j2.mT).expand(self.shape)
        # Large models: products with blocks of unit vectors, never the Jacobians.
        n2 = self.shape[-1]
        eye = torch.eye(n2, dtype=net.dtype, device=self.x1.device)
        unbatched = self._like(self.x1, self.x2, torch.Size())
        columns = [unbatched._matmul(eye[:, a:a + DENSE_COLUMNS]) for a in range(0, n2, DENSE_COLUMNS)]
        return torch.cat(columns, dim=-1).expand(self.shape)
