"""Evaluation backends for the network kernels, and the automatic choice between them.

- "dense": the whole matrix as a tensor (input Gram cached). Fastest for small and medium n; with autograd it
  keeps about a dozen n x m intermediates per layer.
- "lazy": a linear_operator (NetworkKernelOperator) evaluated in row blocks: products reuse a no-grad copy of the
  matrix while it fits in memory, gradients recompute one block at a time. For large n on CPU.
- "keops": a KeOps LazyTensor formula (KeOpsNetworkKernelOperator): O(n + m) memory, closed-form activations
  only, for GPUs (on a CPU KeOps compiles with g++ and runs far slower than "lazy").
- "distributed": a NetworkKernelOperator sharded by rows over the ranks of the default torch.distributed process
  group (backends/distributed.py); a RowSharding instance (ProcessGroupSharding(group, timeout), DeviceSharding(
  devices)) in place of the name chooses the group, the timeout, or several devices inside one process.
- "auto": dense up to DENSE_MAX_ENTRIES = n x m entries; beyond that keops for CUDA tensors with a closed-form
  activation and no batch_shape, else lazy.
"""
from __future__ import annotations

import torch

from . import keops
from .budget import memory_budget
from .distributed import DeviceSharding, ProcessGroupSharding, RowSharding, make_sharding
from .evaluators import FullyConnectedEvaluator, kernel_rows
from .keops import KEOPS_AVAILABLE, KeOpsNetworkKernelOperator, check_keops_activation, keops_supported
from .lazy import NetworkKernelOperator

BACKENDS = ("auto", "dense", "lazy", "keops", "distributed")
# 2900 x 2900 entries: with autograd through a depth-3 recursion the dense path then holds ~1.5 GB (float32).
DENSE_MAX_ENTRIES = 2900 * 2900


def check_backend(backend, choices=BACKENDS):
    """The backend name in lower case, or a RowSharding itself. Raises ValueError naming the choices."""
    if isinstance(backend, RowSharding):
        return backend
    if not isinstance(backend, str) or backend.lower() not in choices:
        raise ValueError(f"backend must be one of {', '.join(repr(b) for b in choices)} or a RowSharding "
                         f"(gpytorch_nngp.backends.ProcessGroupSharding / DeviceSharding), got {backend!r}")
    if backend.lower() == "keops" and not keops.KEOPS_AVAILABLE:
        raise ImportError("backend='keops' needs pykeops, an optional dependency: pip install \"gpytorch_nngp[keops]\" "
                          "(or use backend='lazy', the same O(n) memory without compiled formulas)")
    return backend.lower()


def resolve_backend(backend: str, x1: torch.Tensor, x2: torch.Tensor, activation=None, batched: bool = False,
                    entries_per_pair: int = 1) -> str:
    """The backend that evaluates a kernel matrix.

    Args:
        backend: "auto", "dense", "lazy" or "keops" (checked by check_backend).
        x1, x2: (..., n, d), (..., m, d) inputs.
        activation: the kernel's Activation (KeOps has closed forms only).
        batched: the kernel has a batch_shape (KeOps has none).
        entries_per_pair: state entries a pair of points carries (1 for fully connected networks, P or P^2 for
            architecture kernels, which have no KeOps formula: pass activation=None).

    Returns:
        "dense", "lazy", "keops" or "distributed" (also for a RowSharding): the one asked for, or for "auto"
        dense up to DENSE_MAX_ENTRIES = n m entries_per_pair, then keops for CUDA tensors with a KeOps formula, else
        lazy.
    """
    if isinstance(backend, RowSharding):
        return "distributed"
    if backend != "auto":
        return backend
    if x1.shape[-2] * x2.shape[-2] * entries_per_pair <= DENSE_MAX_ENTRIES:
        return "dense"
    if x1.is_cuda and KEOPS_AVAILABLE and not batched and activation is not None and keops_supported(activation):
        return "keops"
    return "lazy"


__all__ = ["BACKENDS", "DENSE_MAX_ENTRIES", "DeviceSharding", "FullyConnectedEvaluator", "KeOpsNetworkKernelOperator",
           "NetworkKernelOperator",
           "ProcessGroupSharding", "RowSharding", "check_backend", "check_keops_activation", "kernel_rows",
           "keops_supported", "make_sharding", "memory_budget", "resolve_backend"]
