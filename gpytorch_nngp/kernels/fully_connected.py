"""NNGP and NTK kernels of fully connected networks as GPyTorch kernels."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from gpytorch.constraints import Interval
from gpytorch.priors import Prior

from .._validation import check_call, check_depth, check_inputs
from ..algebra.mlp import fully_connected_recursion, input_grams, paired_kernel
from ..backends import (
    FullyConnectedEvaluator,
    KeOpsNetworkKernelOperator,
    NetworkKernelOperator,
    check_backend,
    check_keops_activation,
    make_sharding,
    resolve_backend,
)
from ..functional.activations import Activation, Numerical, get_activation
from .architecture import ArchitectureKernel
from .base import NetworkKernel


class _GramCache:
    """Keeps the hyperparameter-independent input Grams <x1, x2>/d for the last few input pairs.

    A hyperparameter step then costs O(n m depth) instead of O(n m d). Entries hold private copies of the
    inputs and are matched by value (O(n d)), so in-place edits of the inputs can never return a stale Gram.
    """

    def __init__(self, size: int = 2):
        self.size = size
        self.entries = []

    def clear(self):
        self.entries = []

    def get(self, x1: torch.Tensor, x2: torch.Tensor, x1_eq_x2: bool):
        if x1.requires_grad or x2.requires_grad or torch.is_inference_mode_enabled():
            return input_grams(x1, x2, x1_eq_x2)
        for i, (c1, c2, sym, grams) in enumerate(self.entries):
            if sym == x1_eq_x2 and _same(x1, c1) and (x1_eq_x2 or _same(x2, c2)):
                self.entries.insert(0, self.entries.pop(i))
                return grams
        grams = input_grams(x1, x2, x1_eq_x2)
        self.entries.insert(0, (x1.detach().clone(), None if x1_eq_x2 else x2.detach().clone(), x1_eq_x2, grams))
        del self.entries[self.size:]
        return grams


def _same(x: torch.Tensor, cached: torch.Tensor) -> bool:
    return x.shape == cached.shape and x.dtype == cached.dtype and x.device == cached.device and torch.equal(x, cached)


class _FullyConnectedKernel(NetworkKernel):
    """Shared machinery of NNGPKernel and NTKKernel."""

    _ntk = False

    def __init__(
        self,
        depth: int,
        activation="relu",
        weight_var=2.0,
        bias_var=0.1,
        weight_var_prior: Optional[Prior] = None,
        bias_var_prior: Optional[Prior] = None,
        weight_var_constraint: Optional[Interval] = None,
        bias_var_constraint: Optional[Interval] = None,
        backend: str = "auto",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.backend = check_backend(backend)
        self.sharding = make_sharding(self.backend)
        self.depth = check_depth(depth)
        self.activation: Activation = get_activation(activation)
        if self.backend == "keops":
            check_keops_activation(self.activation)
            if len(self.batch_shape):
                raise ValueError(f"backend='keops' does not support batch_shape (got {tuple(self.batch_shape)}): "
                                 "use backend='lazy' for batched kernels, or one kernel per batch member")
        self._init_variances((*self.batch_shape, 1, 1), weight_var, bias_var, weight_var_prior, bias_var_prior,
                             weight_var_constraint, bias_var_constraint)
        self._gram_cache = _GramCache()

    # -- evaluation (the template is NetworkKernel.forward) ----------------------------------------------------
    def _check_call(self, x1, x2) -> None:
        def as_2d(x):
            return x.unsqueeze(-1) if isinstance(x, torch.Tensor) and x.dim() == 1 else x

        a, b = as_2d(x1), as_2d(x2)
        check_call(self.active_dims, self.batch_shape, a, b)
        if self.active_dims is not None and isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
            if a.dim() >= 1 and b.dim() >= 1 and a.shape[-1] == b.shape[-1]:
                a, b = a.index_select(-1, self.active_dims), b.index_select(-1, self.active_dims)
        check_inputs(a, b)

    @property
    def _bounds_checkable(self) -> bool:
        return not isinstance(self.activation, Numerical)

    def _backend(self, x1, x2) -> str:
        return resolve_backend(self.backend, x1, x2, self.activation, batched=len(self.batch_shape) > 0)

    def _dense(self, x1, x2, x1_eq_x2: bool) -> torch.Tensor:
        gram, var1, var2 = self._gram_cache.get(x1, x2, x1_eq_x2)
        k, theta = fully_connected_recursion(gram, var1, var2, self.depth, self.activation, self.weight_var,
                                             self.bias_var, ntk=self._ntk, x1_eq_x2=x1_eq_x2)
        return theta if self._ntk else k

    def _operator(self, backend: str, x1, x2) -> NetworkKernelOperator:
        operator = KeOpsNetworkKernelOperator if backend == "keops" else NetworkKernelOperator
        return operator(x1, self.weight_var, self.bias_var, x2, evaluator=self._evaluator(),
                        sharding=self.sharding if backend == "distributed" else None)

    def _computes_ntk(self) -> bool:
        return self._ntk

    def _set_kind(self, kind: str) -> None:
        self.__class__ = NTKKernel if kind == "ntk" else NNGPKernel
        self._gram_cache = _GramCache()

    def _evaluator(self) -> FullyConnectedEvaluator:
        return FullyConnectedEvaluator(self.depth, self.activation, self._ntk)

    def _diagonal(self, x1, x2, x1_eq_x2: bool) -> torch.Tensor:
        """k(x1_i, x2_i), (..., n)."""
        return paired_kernel(x1, x2, self.weight_var.squeeze(-1), self.bias_var.squeeze(-1), self.depth,
                             self.activation, self._ntk, x1_eq_x2=x1_eq_x2)

    # -- housekeeping -----------------------------------------------------------------------------
    def _apply(self, fn, *args, **kwargs):
        self._gram_cache.clear()
        return super()._apply(fn, *args, **kwargs)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_gram_cache"] = _GramCache()
        return state

    def extra_repr(self) -> str:
        return f"depth={self.depth}, activation={self.activation!r}"

    @classmethod
    def from_module(cls, module: torch.nn.Module, input_shape: Sequence[int], weight_var=2.0, bias_var=0.1,
                    per_layer: bool = False, **kwargs):
        """The kernel of the infinite-width limit of an ordinary torch module.

        Channel and hidden widths are ignored (they go to infinity); every weight is N(0, weight_var / fan_in) and
        every bias N(0, bias_var), NTK parametrization. Supported: nn.Sequential, nn.Linear, nn.Conv1d/2d (zero or
        circular padding, any stride), nn.ConvTranspose1d/2d, nn.AvgPool1d/2d, nn.AdaptiveAvgPool1d/2d(1),
        nn.Flatten, nn.LayerNorm without affine parameters, nn.Identity, nn.Dropout (the identity: evaluation mode),
        gpytorch_nngp.Residual, gpytorch_nngp.Parallel, gpytorch_nngp.SelfAttention, and the activation modules
        (gpytorch_nngp.frontend.translate.SUPPORTED lists them all).

        Args:
            module: the network, e.g. nn.Sequential(nn.Conv2d(1, 64, 3, padding=1), nn.ReLU(), nn.Flatten(),
                nn.Linear(64 * 8 * 8, 10)).
            input_shape: one input's shape, channel first: (C, H, W), (C, L) or (d,). Kernel inputs are then
                (..., n, C*H*W), as torch flattens such tensors.
            weight_var, bias_var: initial variances, learnable.
            per_layer: one learnable (weight_var, bias_var) per Linear/Conv layer instead of one shared pair.
            **kwargs: backend, priors, constraints, batch_shape, active_dims.

        Returns:
            A fully connected kernel of this class for a plain MLP (Linear layers with biases, one activation,
            shared variances), which keeps its fast paths (input Gram cache, KeOps); else an ArchitectureKernel.

        Raises:
            ValueError: a module without an infinite-width limit (named, with the nearest supported one), or an
                input_shape the layers do not fit.
        """
        from ..frontend.factory import kernel_from_module  # the front end sits above the kernels

        return kernel_from_module(module, input_shape, cls._ntk, weight_var, bias_var, per_layer,
                                  fully_connected=cls, **kwargs)


class _KindClass(type):
    """The class of NNGPKernel and NTKKernel: isinstance(k, NNGPKernel) (or NTKKernel) is true for every kernel
    that class makes, the fully connected ones (its own instances) and those of other architectures that its
    from_module returns (ArchitectureKernel instances, the class both kinds of those come from, of that kind)."""

    def __instancecheck__(cls, obj) -> bool:
        if type.__instancecheck__(cls, obj):
            return True
        kind = cls.__dict__.get("_class_kind")  # NNGPKernel and NTKKernel themselves, not their subclasses
        return kind is not None and type.__instancecheck__(ArchitectureKernel, obj) and obj.kind == kind


class NNGPKernel(_FullyConnectedKernel, metaclass=_KindClass):
    r"""NNGP kernel of a fully connected network (Lee et al. 2018).

    The covariance of the outputs of an infinitely wide network with `depth` hidden layers, weights
    N(0, weight_var / fan_in), biases N(0, bias_var), and elementwise `activation`:

        K^0 = weight_var <x, x'> / d + bias_var,   K^l = weight_var E[phi(u) phi(v)] + bias_var.

    Equal to neural-tangents' ``stax.serial(*[Dense(W_std=sqrt(weight_var), b_std=sqrt(bias_var)), act] * depth,
    Dense(...))`` NNGP kernel.

    Output scale: for positively homogeneous activations (relu, leaky_relu, abs, identity) weight_var already is
    one. As bias_var -> 0, s K(weight_var) = K(s^(1/(L+1)) weight_var), for the NTK too. A ScaleKernel around the
    kernel is then a nearly redundant parameter along which L-BFGS (BoTorch's fit_gpytorch_mll) wanders, with
    several times more evaluations for the same fit (benchmarks/bo_surrogate_fit.py). For saturating activations
    (erf, tanh, ...) a ScaleKernel does add freedom.

    Args:
        depth: number of hidden layers L (L nonlinearities, L + 1 dense layers); 0 is a linear model.
        activation: a name (gpytorch_nngp.activations.NAMES: "relu", "erf", "gelu", "tanh", ...), an Activation from
            gpytorch_nngp.activations, or any elementwise torch callable.
        weight_var, bias_var: initial variances sigma_w^2, sigma_b^2 (> 0; learnable, positive-constrained).
        weight_var_prior, bias_var_prior, weight_var_constraint, bias_var_constraint: as in GPyTorch.
        backend: "auto", "dense", "lazy", "keops" or "distributed" (rows sharded over the ranks of the default
            torch.distributed process group), or a RowSharding (gpytorch_nngp.backends.ProcessGroupSharding(group,
            timeout), DeviceSharding(devices)); see gpytorch_nngp.backends.
        **kwargs: batch_shape, active_dims, ... (GPyTorch Kernel arguments).

    Inputs (..., n, d); output (..., n, m) or the diagonal (..., n).

    .. math::

        K^0(x, x') = \sigma_w^2 \langle x, x' \rangle / d + \sigma_b^2, \qquad
        K^l(x, x') = \sigma_w^2 \, \mathbb{E}_{(u, v) \sim N(0, K^{l-1})}[\phi(u) \phi(v)] + \sigma_b^2,

    with :math:`\sigma_w^2` = weight_var, :math:`\sigma_b^2` = bias_var and the kernel :math:`K^L`.

    Example:
        >>> import torch
        >>> from gpytorch_nngp import NNGPKernel
        >>> kernel = NNGPKernel(depth=3, activation="relu", weight_var=2.0, bias_var=0.1)
        >>> x = torch.randn(10, 4)
        >>> kernel(x).shape, kernel(x, diag=True).shape
        (torch.Size([10, 10]), torch.Size([10]))
        >>> kernel.kind, kernel.weight_var.item()
        ('nngp', 2.0)
    """

    _ntk = False
    _class_kind = "nngp"


class NTKKernel(_FullyConnectedKernel, metaclass=_KindClass):
    r"""Neural tangent kernel of a fully connected network (Jacot et al. 2018), NTK parametrization.

    Theta^0 = K^0, Theta^l = K^l + weight_var E[phi'(u) phi'(v)] Theta^{l-1}; equal to neural-tangents' NTK of the
    same ``stax.serial`` network. Same arguments as :class:`NNGPKernel`.

    .. math::

        \Theta^0 = K^0, \qquad
        \Theta^l = K^l + \sigma_w^2 \, \mathbb{E}_{(u, v) \sim N(0, K^{l-1})}[\phi'(u) \phi'(v)] \, \Theta^{l-1}.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from gpytorch_nngp import NTKKernel
        >>> kernel = NTKKernel(depth=2, activation="erf")
        >>> kernel(torch.randn(6, 3)).shape
        torch.Size([6, 6])
        >>> cnn = nn.Sequential(nn.Conv1d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(40, 1))
        >>> cnn_kernel = NTKKernel.from_module(cnn, input_shape=(1, 5))
        >>> isinstance(cnn_kernel, NTKKernel), cnn_kernel(torch.randn(3, 5)).shape
        (True, torch.Size([3, 3]))
    """

    _ntk = True
    _class_kind = "ntk"
