"""NNGP and NTK kernels of convolutional, pooled, residual and normalized networks, built from torch modules."""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from gpytorch.constraints import Interval
from gpytorch.priors import Prior

from .._validation import check_call, check_inputs
from ..algebra import Network
from ..backends import BACKENDS, NetworkKernelOperator, check_backend, make_sharding, resolve_backend
from ..backends.tiling import NetworkEvaluator, architecture_matrix, paired
from .base import NetworkKernel

ARCHITECTURE_BACKENDS = tuple(b for b in BACKENDS if b != "keops")  # no KeOps formula for the layer algebra


class ArchitectureKernel(NetworkKernel):
    r"""The NNGP (or, with ntk=True, the NTK) of an infinitely wide network of any supported architecture.

    Made by :meth:`~gpytorch_nngp.NNGPKernel.from_module` / :meth:`~gpytorch_nngp.NTKKernel.from_module` from an
    ordinary torch module: the covariance of the outputs of that module as its channel and hidden widths go to
    infinity, every weight N(0, weight_var / fan_in), every bias N(0, bias_var) (NTK parametrization, as
    neural-tangents' stax).

    Inputs are GPyTorch-shaped, (..., n, C*H*W) for images (channel first, as torch flattens (C, H, W)),
    (..., n, C*L) for sequences, (..., n, d) for vectors; the output is (..., n, m), or the diagonal (..., n).

    Args:
        network: the built architecture (gpytorch_nngp.algebra.Network).
        ntk: the neural tangent kernel instead of the NNGP.
        weight_var, bias_var: initial variances (> 0, learnable): one value, or one per Linear/Conv layer when the
            network was built with per_layer=True.
        backend: "dense" (tiles concatenated into a tensor), "lazy" (a linear operator that recomputes tiles, for
            kernel matrices too large to hold with their autograd graph), "distributed" (that operator sharded by
            rows over a torch.distributed process group, or a RowSharding) or "auto" (dense while n m P_state is at
            most DENSE_MAX_ENTRIES, P_state the state entries per pair).
        weight_var_prior, bias_var_prior, weight_var_constraint, bias_var_constraint, **kwargs: as in GPyTorch.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from gpytorch_nngp import ArchitectureKernel, NNGPKernel
        >>> cnn = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        ...                     nn.Linear(8, 1))
        >>> kernel = NNGPKernel.from_module(cnn, input_shape=(1, 4, 4))
        >>> type(kernel) is ArchitectureKernel, kernel.kind
        (True, 'nngp')
        >>> kernel(torch.randn(3, 16)).shape
        torch.Size([3, 3])
    """

    def __init__(self, network: Network, ntk: bool = False, weight_var=2.0, bias_var=0.1,
                 weight_var_prior: Optional[Prior] = None, bias_var_prior: Optional[Prior] = None,
                 weight_var_constraint: Optional[Interval] = None, bias_var_constraint: Optional[Interval] = None,
                 backend: str = "auto", **kwargs):
        super().__init__(**kwargs)
        if not isinstance(network, Network):
            raise TypeError(f"network must be a gpytorch_nngp.algebra.Network, got {type(network).__name__}"
                            "; build kernels from torch modules with NNGPKernel.from_module")
        if isinstance(backend, str) and backend.lower() == "keops":
            raise ValueError("backend='keops' is not available for architecture kernels (KeOps formulas exist for "
                             f"fully connected kernels only): use one of {', '.join(map(repr, ARCHITECTURE_BACKENDS))}")
        self.network, self.ntk, self.backend = network, bool(ntk), check_backend(backend, ARCHITECTURE_BACKENDS)
        self.sharding = make_sharding(self.backend)
        self._init_variances((*self.batch_shape, network.num_parameters), weight_var, bias_var, weight_var_prior,
                             bias_var_prior, weight_var_constraint, bias_var_constraint)
        if self.has_lengthscale and (len(network.input_shape) > 1 or network.graphs is not None):
            # One length scale per input channel: GPyTorch checks ard_num_dims against the input's columns (C * P
            # here), so the count lives in `length_scales` only.
            if self.length_scales != network.input_shape[0]:
                raise ValueError(f"ard_num_dims={self.length_scales}: the network's input has {network.input_shape[0]}"
                                 " channels, and its kernel has one length scale per input channel")
            self.ard_num_dims = None

    @classmethod
    def from_module(cls, module: torch.nn.Module, input_shape: Sequence[int], ntk: bool = False,
                    weight_var=2.0, bias_var=0.1, per_layer: bool = False, **kwargs) -> ArchitectureKernel:
        """The kernel of `module`'s infinite-width limit, for inputs of `input_shape` ((d,), (C, L) or (C, H, W)).
        per_layer: one learnable (weight_var, bias_var) per Linear/Conv layer. See NNGPKernel.from_module."""
        from ..frontend.translate import network_from_module  # the front end sits above the kernels

        return cls(network_from_module(module, input_shape, per_layer), ntk, weight_var, bias_var, **kwargs)

    # -- evaluation (the template is NetworkKernel.forward) ----------------------------------------------------
    def _check_call(self, x1, x2) -> None:
        check_call(self.active_dims, self.batch_shape, x1, x2)
        for name, x in (("x1", x1), ("x2", x2)):
            features = x.shape[-1] if isinstance(x, torch.Tensor) and x.dim() else None
            if self.active_dims is not None and features is not None:
                features = len(self.active_dims)  # GPyTorch selects these columns before forward
            if isinstance(x, torch.Tensor) and (x.dim() < 2 or features != self.network.features):
                raise ValueError(
                    f"{name} must have shape (..., n, {self.network.features}) for input_shape "
                    f"{self.network.input_shape} (channel first, flattened"
                    + (f", after active_dims selects {len(self.active_dims)} columns" if self.active_dims is not None
                       else "") + f"), got {tuple(x.shape)}")
        if isinstance(x1, torch.Tensor) and isinstance(x2, torch.Tensor):
            check_inputs(x1, x2)
        if self.network.graphs is not None and self.active_dims is None:
            for name, x in (("x1", x1), ("x2", x2)):
                if isinstance(x, torch.Tensor):
                    self.network.graphs.check(x, name)

    def _shortcut(self, x1, x2, diag: bool):
        shared = _shared_batch(x1, x2) if not len(self.batch_shape) else None
        if shared is None:
            return None
        # One point set repeated along batch dimensions (GPyTorch's multitask and variational strategies expand
        # inputs this way): evaluate it once and repeat the result, instead of once per batch member.
        batch, base1, base2 = shared
        out = self.forward(base1, base2, diag=diag)
        return out.expand(*batch, *out.shape[-1 if diag else -2:])

    @property
    def _bounds_checkable(self) -> bool:
        return not self.network.numerical

    def _backend(self, x1, x2) -> str:
        return resolve_backend(self.backend, x1, x2, entries_per_pair=self.network.entries_per_pair)

    def _dense(self, x1, x2, x1_eq_x2: bool) -> torch.Tensor:
        return architecture_matrix(self.network, x1, x2, self.weight_var, self.bias_var, self.ntk, x1_eq_x2=x1_eq_x2)

    def _operator(self, backend: str, x1, x2) -> NetworkKernelOperator:
        return NetworkKernelOperator(x1, self.weight_var, self.bias_var, x2,
                                     evaluator=NetworkEvaluator(self.network, self.ntk), sharding=self.sharding)

    def _computes_ntk(self) -> bool:
        return self.ntk

    def _set_kind(self, kind: str) -> None:
        self.ntk = kind == "ntk"

    def _ard(self, x: torch.Tensor) -> torch.Tensor:
        """One length scale per input channel (per dimension of a flat input)."""
        shape = self.network.input_shape
        if len(shape) == 1 and self.network.graphs is None:
            return self._scale_inputs(x)
        return self._scale_inputs(x, channels=shape[0], width=math.prod(shape))

    def _diagonal(self, x1, x2, x1_eq_x2: bool) -> torch.Tensor:
        return paired(self.network, x1, x2, self.weight_var, self.bias_var, self.ntk, x1_eq_x2=x1_eq_x2)

    def extra_repr(self) -> str:
        return f"{'NTK' if self.ntk else 'NNGP'}, input_shape={self.network.input_shape}, {self.network.describe()}"


def _shared_batch(x1: torch.Tensor, x2: torch.Tensor):
    """(batch, x1[0..], x2[0..]) when both inputs repeat one (n, F) set along every batch dimension; else None.

    Repeats are recognized by stride 0 (torch.expand) or size 1, and, for inputs that need no gradient, by value
    (GPyTorch's variational strategies repeat test inputs once per output with real copies). Inputs that need
    gradients are shared only when expanded, so that each tensor gets its own gradient.
    """
    batch = x1.shape[:-2]
    if not batch or x2.shape[:-2] != batch:
        return None
    first = (0,) * len(batch)
    for x in (x1, x2):
        if all(stride == 0 or size == 1 for stride, size in zip(x.stride()[:-2], batch)):
            continue
        if x.requires_grad or not torch.equal(x, x[first].expand(x.shape)):
            return None
    return batch, x1[first], x2[first]
