"""A torch stand-in for pykeops' LazyTensor, with the operations and semantics the KeOps backend's formulas use.

The formula builder (backends.keops.keops_kernel) only combines LazyTensors with arithmetic, `|` (scalar product
over the last dimension), relu, rsqrt, atan2 and asin, then multiplies the result with `@`. Given this class in
place of LazyTensor, the same builder produces an ordinary (..., n, m, 1) torch tensor: the formulas for every
activation, depth and NTK flag can be checked against the dense recursion, values and autograd gradients, in
milliseconds and without compiling anything. KeOps' own semantics are kept where they differ from torch's:
rsqrt(0) = 0 (torch gives inf), which the arc-cosine formulas rely on for a zero gradient at |c| = 1.
"""
from __future__ import annotations

import torch


class TorchLazyTensor:
    """Wraps a tensor shaped like a KeOps variable: (..., n, 1, D) for i, (..., 1, m, D) for j, (D,) parameters."""

    def __init__(self, tensor):
        self.t = tensor.t if isinstance(tensor, TorchLazyTensor) else tensor

    @staticmethod
    def _value(other):
        return other.t if isinstance(other, TorchLazyTensor) else other

    def __add__(self, other):
        return TorchLazyTensor(self.t + self._value(other))

    __radd__ = __add__

    def __sub__(self, other):
        return TorchLazyTensor(self.t - self._value(other))

    def __rsub__(self, other):
        return TorchLazyTensor(self._value(other) - self.t)

    def __mul__(self, other):
        return TorchLazyTensor(self.t * self._value(other))

    __rmul__ = __mul__

    def __truediv__(self, other):
        return TorchLazyTensor(self.t / self._value(other))

    def __neg__(self):
        return TorchLazyTensor(-self.t)

    def __or__(self, other):  # KeOps' scalar product over the last dimension
        return TorchLazyTensor((self.t * self._value(other)).sum(-1, keepdim=True))

    def relu(self):
        return TorchLazyTensor(torch.relu(self.t))

    def rsqrt(self):  # KeOps: rsqrt(0) = 0, with a zero (not NaN) gradient there
        positive = self.t > 0
        safe = torch.where(positive, self.t, torch.ones_like(self.t))
        return TorchLazyTensor(torch.where(positive, safe.rsqrt(), torch.zeros_like(self.t)))

    def atan2(self, other):
        return TorchLazyTensor(torch.atan2(self.t, self._value(other)))

    def asin(self):
        return TorchLazyTensor(torch.asin(self.t))

    def __matmul__(self, rhs):  # the reduction sum_j K_ij rhs_j
        return self.t.squeeze(-1) @ rhs
