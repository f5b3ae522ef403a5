"""The finite NTK J(x1) J(x2)^T as a linear operator multiplied through Jacobian-vector products.

A product K v costs one vector-Jacobian product over x2 (J(x2)^T v, a parameter-sized vector per column of v) and
one Jacobian-vector product over x1, i.e. about three forward passes, and holds neither the P x P matrix nor the
n x P Jacobian: memory is P per column plus the activations of one chunk of rows. GPyTorch's conjugate
gradients and Lanczos then run on it (Maddox et al. 2021 do the same for their finite-NTK GPs).
"""
from __future__ import annotations

import torch
from linear_operator.operators import LinearOperator

from .linearize import JACOBIAN_BLOCK_BYTES, LinearizedNetwork

DENSE_COLUMNS = 64  # unit vectors per product when a large operator is made dense


class FiniteNTKOperator(LinearOperator):
    """(n1 C, n2 C) operator for x1 (n1, ...), x2 (n2, ...) and a network with C outputs; rows and columns are
    point-major (index i C + c)."""

    def __init__(self, x1: torch.Tensor, x2: torch.Tensor, *, network: LinearizedNetwork):
        super().__init__(x1, x2, network=network)
        self.x1, self.x2, self.network = x1, x2, network
        self.num_outputs = network.num_outputs(x1)

    def _size(self):
        c = self.num_outputs
        return torch.Size((self.x1.shape[0] * c, self.x2.shape[0] * c))

    def _transpose_nonbatch(self):
        return FiniteNTKOperator(self.x2, self.x1, network=self.network)

    def _matmul(self, rhs: torch.Tensor) -> torch.Tensor:
        vector = rhs.dim() == 1
        columns = rhs.unsqueeze(-1) if vector else rhs
        if columns.dim() != 2:
            raise ValueError(f"FiniteNTKOperator multiplies (n C,) or (n C, t) tensors, got {tuple(rhs.shape)}")
        t, c = columns.shape[-1], self.num_outputs
        cotangents = columns.mT.reshape(t, self.x2.shape[0], c)
        products = self.network.jvp(self.x1, self.network.vjp(self.x2, cotangents))  # (t, n1, C)
        out = products.reshape(t, -1).mT
        return out.squeeze(-1) if vector else out

    def _diagonal(self) -> torch.Tensor:
        if self.x1.shape != self.x2.shape or not torch.equal(self.x1, self.x2):
            raise RuntimeError("the diagonal of FiniteNTKOperator is defined for x1 == x2 only")
        return self.network.kernel_diagonal(self.x1).diagonal(dim1=-2, dim2=-1).reshape(-1)

    def to_dense(self) -> torch.Tensor:
        net = self.network
        jacobian_bytes = (self.x1.shape[0] + self.x2.shape[0]) * self.num_outputs * net.num_params * net.dtype.itemsize
        if jacobian_bytes <= 4 * JACOBIAN_BLOCK_BYTES:
            j1 = net.jacobian(self.x1).flatten(0, 1)
            j2 = j1 if self.x1 is self.x2 else net.jacobian(self.x2).flatten(0, 1)
            return j1 @ j2.mT
        # Large models: products with blocks of unit vectors, never the Jacobians.
        n2 = self.shape[-1]
        eye = torch.eye(n2, dtype=net.dtype, device=self.x1.device)
        return torch.cat([self._matmul(eye[:, a:a + DENSE_COLUMNS]) for a in range(0, n2, DENSE_COLUMNS)], dim=-1)
