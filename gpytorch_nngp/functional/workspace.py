"""Buffer reuse for evaluations without autograd, kept out of the kernel math.

On a CPU, allocating a fresh n x m tensor costs as much as several arithmetic passes over it, so an inference
evaluation that runs many blocks of the same shape keeps to a handful of buffers. The maps (the fully connected
recursion, the layers of the algebra) ask a `Workspace` for buffers and give back what they no longer need; whether
a buffer is recycled or new is the workspace's business. Evaluations with autograd pass no workspace (None): the maps
then work out of place, so that every intermediate autograd saved stays as it was.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, List, Optional, Sequence

import torch


class Workspace:
    """A pool of free tensors for one evaluation (one device, one dtype in practice), and the tensors that must not
    be overwritten while a branch of the network still needs them (a residual's skip path)."""

    def __init__(self, shrink: bool = False):
        """shrink: requests may be served by the front of a larger free tensor (the shrinking row blocks of a
        triangle reuse the first block's buffers). Such a view never comes back to the pool, so a workspace whose
        requests vary in shape (the layers of an architecture) must not shrink."""
        self.shrink = shrink
        self._free: List[torch.Tensor] = []
        self._protected: set = set()

    def take(self, like: torch.Tensor, shape: Optional[Sequence[int]] = None) -> torch.Tensor:
        """A tensor of `shape` (default like.shape) with like's dtype and device; contents undefined.

        A free tensor of exactly that shape if there is one; for a shrinking workspace else a view of the front of
        a larger free one; else a new contiguous tensor.
        """
        shrink = self.shrink
        shape = torch.Size(like.shape if shape is None else shape)
        fits = [i for i, t in enumerate(self._free) if t.dtype == like.dtype and t.device == like.device
                and t.numel() >= shape.numel()]
        for i in fits:
            if self._free[i].shape == shape:
                return self._free.pop(i)
        if fits and shrink:
            return self._free.pop(fits[0]).view(-1)[:shape.numel()].view(shape)
        return torch.empty(shape, dtype=like.dtype, device=like.device)

    def give(self, *tensors: Optional[torch.Tensor]) -> None:
        """Returns tensors their owner no longer needs to the pool (None, views and protected tensors are skipped)."""
        for t in tensors:
            if t is not None and t.is_contiguous() and t._base is None and id(t) not in self._protected and \
                    not any(t is f for f in self._free):
                self._free.append(t)

    def writable(self, t: Optional[torch.Tensor]) -> bool:
        """Whether a map may overwrite t in place (it is not protected by an enclosing branch)."""
        return t is not None and id(t) not in self._protected

    @contextmanager
    def protect(self, *tensors: Optional[torch.Tensor]) -> Iterator[None]:
        """Within the block, the tensors are neither overwritten nor recycled (a skip path still needs them)."""
        added = {id(t) for t in tensors if t is not None} - self._protected
        self._protected |= added
        try:
            yield
        finally:
            self._protected -= added
