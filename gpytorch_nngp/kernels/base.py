"""What every network kernel shares: learnable weight and bias variances, and the checks around evaluation."""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from gpytorch.constraints import GreaterThan, Interval, Positive
from gpytorch.kernels import Kernel
from gpytorch.priors import LogNormalPrior, Prior

from .._validation import check_call, check_finite_kernel, check_inputs, check_positive_variance, one_point_set


class NetworkKernel(Kernel):
    """Base of the network kernels (fully connected and architecture): a GPyTorch Kernel with positive-constrained
    `weight_var` and `bias_var` parameters of a given shape, and the checks their `forward` shares.

    weight_var: sigma_w^2 (weights ~ N(0, weight_var / fan_in)); bias_var: sigma_b^2 (biases ~ N(0, bias_var)).
    Evaluation is one template (`__call__`, `forward`), GPyTorch's habit: subclasses fill in `_backend` (which
    backend evaluates these inputs), `_dense` (the matrix), `_operator` (the lazy / KeOps / distributed operator),
    `_diagonal(x1, x2, x1_eq_x2)` (the paired kernel k(x1_i, x2_i)) and, where they differ, `_check_call`,
    `_shortcut`, `_ard` and `_bounds_checkable`.

    ARD (per-input relevance). With `ard_num_dims`, the first layer's weight for input i is drawn from
    N(0, weight_var / (fan_in l_i^2)): the kernel sees x_i / l_i, with a learnable, positive `lengthscale` of shape
    (*batch_shape, 1, ard_num_dims) in GPyTorch's convention (`lengthscale_prior`, `lengthscale_constraint`). The
    defaults are made for Bayesian optimization: the constraint is BoTorch's GreaterThan(0.025), the prior a
    LogNormal(0, sqrt(3)) centred on l = 1, where the kernel is the one without ARD (the 1 / fan_in of the NTK
    parametrization already scales with the dimension, as BoTorch's default prior does for an RBF: l_i here is
    that prior's length scale over sqrt(d); Hvarfner et al. 2024), and every length scale starts at 1. Pass
    lengthscale_prior=None for no prior. Without `ard_num_dims` there is no length scale and nothing changes.
    """

    has_lengthscale = False
    KINDS = ("nngp", "ntk")

    @property
    def kind(self) -> str:
        """Which kernel of the architecture this is, "nngp" or "ntk" (read-only: `with_kind` gives the other)."""
        return "ntk" if self._computes_ntk() else "nngp"

    def _computes_ntk(self) -> bool:
        raise NotImplementedError

    def with_kind(self, kind: str) -> NetworkKernel:
        """The kernel of the same architecture that computes `kind` ("nngp" or "ntk"), sharing this kernel's
        parameters (variances, length scales, their priors and constraints): training one trains the other. This
        kernel itself when it already computes `kind`; nothing of it changes.

        Example:
            >>> ntk = NTKKernel(2, "relu")
            >>> nngp = ntk.with_kind("nngp")
            >>> nngp.kind, nngp.raw_weight_var is ntk.raw_weight_var
            ('nngp', True)
        """
        if kind not in self.KINDS:
            raise ValueError(f"kind must be 'nngp' or 'ntk', got {kind!r}")
        if kind == self.kind:
            return self
        # A new module whose parameter, buffer and submodule dictionaries are this one's (copy.copy would not do:
        # GPyTorch's Kernel.__setstate__ makes the copy share the whole attribute dictionary, kind included).
        other = type(self).__new__(type(self))
        other.__dict__ = dict(self.__dict__)
        other._set_kind(kind)
        return other

    def _set_kind(self, kind: str) -> None:
        """On a fresh shallow copy (with_kind): make it compute `kind`, and drop caches that depend on it."""
        raise NotImplementedError

    def __init__(self, ard_num_dims: Optional[int] = None, lengthscale_prior="default",
                 lengthscale_constraint: Optional[Interval] = None, **kwargs):
        super().__init__(**kwargs)
        self._asked = {}  # name -> (the value asked for in float64, the raw parameter then): see _set_raw
        if ard_num_dims is None:
            if lengthscale_constraint is not None or lengthscale_prior not in (None, "default"):
                raise ValueError("lengthscale_prior and lengthscale_constraint need ard_num_dims (per-input length "
                                 "scales); the network kernels have no length scale without it")
            return
        if not isinstance(ard_num_dims, int) or isinstance(ard_num_dims, bool) or ard_num_dims < 1:
            raise ValueError(f"ard_num_dims must be a positive int (the number of input dimensions or channels), got "
                             f"{ard_num_dims!r}")
        self.ard_num_dims = self.length_scales = ard_num_dims
        self.has_lengthscale = True
        self.register_parameter("raw_lengthscale",
                                torch.nn.Parameter(torch.zeros(*self.batch_shape, 1, ard_num_dims)))
        self.register_constraint("raw_lengthscale", lengthscale_constraint or GreaterThan(2.5e-2))
        if lengthscale_prior == "default":
            lengthscale_prior = LogNormalPrior(0.0, math.sqrt(3.0))
        if lengthscale_prior is not None:
            if not isinstance(lengthscale_prior, Prior):
                raise TypeError(f"expected a gpytorch.priors.Prior for lengthscale_prior, got "
                                f"{type(lengthscale_prior).__name__}")
            self.register_prior("lengthscale_prior", lengthscale_prior, self._lengthscale_param,
                                self._lengthscale_closure)
        self._set_lengthscale(torch.ones(()))

    def _scale_inputs(self, x: torch.Tensor, channels: Optional[int] = None, width: Optional[int] = None):
        """x / lengthscale: per input dimension of x (..., n, d), or (channels given) per channel of the first
        `width` = channels * positions features (channel first), the rest of each row (a packed graph) unchanged."""
        if not self.has_lengthscale:
            return x
        scale = self.lengthscale
        if channels is None:
            if x.shape[-1] != self.length_scales:
                raise ValueError(f"ard_num_dims={self.length_scales} length scales for inputs with {x.shape[-1]} "
                                 "dimensions (after active_dims)")
            return x / scale
        if channels != self.length_scales:
            raise ValueError(f"ard_num_dims={self.length_scales}: this network's input has {channels} channels, and "
                             "its kernel has one length scale per input channel")
        features = x[..., :width]
        batch = torch.broadcast_shapes(features.shape[:-2], scale.shape[:-2])
        scaled = (features.reshape(*features.shape[:-1], channels, width // channels)
                  / scale.reshape(*scale.shape[:-2], 1, channels, 1)).reshape(*batch, x.shape[-2], width)
        if width == x.shape[-1]:
            return scaled
        return torch.cat([scaled, x[..., width:].expand(*batch, x.shape[-2], x.shape[-1] - width)], -1)

    # -- the evaluation template: subclasses fill in the hooks below ----------------------------------------------
    def __call__(self, x1, x2=None, diag=False, last_dim_is_batch=False, **params):
        # Validate eagerly (GPyTorch evaluates lazily and would raise a bare RuntimeError on mismatched features).
        self._check_call(x1, x1 if x2 is None else x2)
        return super().__call__(x1, x2, diag=diag, last_dim_is_batch=last_dim_is_batch, **params)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, diag: bool = False, last_dim_is_batch: bool = False,
                **params):
        """Kernel matrix (..., n, m) (a tensor, or a linear operator for the lazy, KeOps and distributed backends),
        or its diagonal (..., n) with diag=True. Inputs (..., n, d), (..., m, d) (GPyTorch may call forward
        directly, as ScaleKernel does, so the inputs are checked here too; a finite check is remembered per
        tensor, so it is paid once)."""
        self._refuse_last_dim_is_batch(last_dim_is_batch)
        check_inputs(x1, x2)
        shortcut = self._shortcut(x1, x2, diag)
        if shortcut is not None:
            return shortcut
        x1_eq_x2 = one_point_set(x1, x2)
        if self.has_lengthscale:  # ARD: the kernel of the scaled inputs (one point set stays one)
            x1 = self._ard(x1)
            x2 = x1 if x1_eq_x2 else self._ard(x2)
        if diag:
            return self._checked_diagonal(x1, x2)
        backend = self._backend(x1, x2)
        if backend != "dense" and self._bounds_checkable:
            self._check_bounded(x1, x2, x1_eq_x2)
        if backend == "dense":
            return check_finite_kernel(self._dense(x1, x2, x1_eq_x2), x1, x2)
        if backend == "distributed":
            self.sharding.check_same(x1=x1, x2=x2, weight_var=self.weight_var, bias_var=self.bias_var)
        return self._operator(backend, x1, None if x1_eq_x2 else x2)

    def _check_call(self, x1, x2) -> None:
        """Checks of the inputs before GPyTorch's lazy evaluation (shapes, features, dtypes)."""
        check_call(self.active_dims, self.batch_shape, x1, x2)

    def _shortcut(self, x1, x2, diag: bool):
        """A result computed another way (None: go on with the template)."""
        return None

    def _ard(self, x: torch.Tensor) -> torch.Tensor:
        return self._scale_inputs(x)

    @property
    def _bounds_checkable(self) -> bool:
        """Whether an operator's inputs are checked by their own kernel values first (a numerical activation checks
        its variances itself, and its diagonal would cost a second setup)."""
        return True

    def _backend(self, x1, x2) -> str:
        raise NotImplementedError

    def _dense(self, x1, x2, x1_eq_x2: bool) -> torch.Tensor:
        raise NotImplementedError

    def _operator(self, backend: str, x1, x2):
        raise NotImplementedError

    def _diagonal(self, x1: torch.Tensor, x2: torch.Tensor, x1_eq_x2: bool) -> torch.Tensor:
        raise NotImplementedError

    def _refuse_last_dim_is_batch(self, last_dim_is_batch: bool) -> None:
        if last_dim_is_batch:
            raise ValueError(
                f"{type(self).__name__} does not support last_dim_is_batch=True (deprecated in GPyTorch): the network "
                "kernel mixes all input dimensions; use batch_shape or separate kernels instead")

    def _checked_diagonal(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        """forward(diag=True): the paired kernel, after checking both sides have as many points."""
        if x1.shape[-2] != x2.shape[-2]:
            raise ValueError(f"diag=True needs x1 and x2 with the same number of points, got {x1.shape[-2]} "
                             f"and {x2.shape[-2]}")
        return check_finite_kernel(self._diagonal(x1, x2, one_point_set(x1, x2)), x1, x2)

    def _check_bounded(self, x1: torch.Tensor, x2: torch.Tensor, x1_eq_x2: bool) -> None:
        """Before returning an operator that is evaluated later, block by block: both sides' own kernel values are
        finite, which bounds every entry (|k12| <= sqrt(k11 k22))."""
        with torch.no_grad():
            for x in (x1,) if x1_eq_x2 else (x1, x2):
                check_finite_kernel(self._diagonal(x, x, True), x)

    def _init_variances(self, shape: Sequence[int], weight_var, bias_var, weight_var_prior: Optional[Prior] = None,
                        bias_var_prior: Optional[Prior] = None, weight_var_constraint: Optional[Interval] = None,
                        bias_var_constraint: Optional[Interval] = None):
        weight_var = check_positive_variance("weight_var", weight_var)
        bias_var = check_positive_variance("bias_var", bias_var)
        self.register_parameter("raw_weight_var", torch.nn.Parameter(torch.zeros(*shape)))
        self.register_parameter("raw_bias_var", torch.nn.Parameter(torch.zeros(*shape)))
        self.register_constraint("raw_weight_var", weight_var_constraint or Positive())
        self.register_constraint("raw_bias_var", bias_var_constraint or Positive())
        for name, prior in (("weight_var", weight_var_prior), ("bias_var", bias_var_prior)):
            if prior is not None:
                if not isinstance(prior, Prior):
                    raise TypeError(f"expected a gpytorch.priors.Prior for {name}_prior, got {type(prior).__name__}")
                self.register_prior(
                    f"{name}_prior", prior, lambda m, n=name: getattr(m, n), lambda m, v, n=name: m._set_var(n, v)
                )
        self._set_var("weight_var", weight_var)
        self._set_var("bias_var", bias_var)

    @property
    def weight_var(self) -> torch.Tensor:
        """Weight variance sigma_w^2 (weights ~ N(0, weight_var / fan_in))."""
        return self.raw_weight_var_constraint.transform(self.raw_weight_var)

    @weight_var.setter
    def weight_var(self, value):
        self._set_var("weight_var", value)

    @property
    def bias_var(self) -> torch.Tensor:
        """Bias variance sigma_b^2 (biases ~ N(0, bias_var))."""
        return self.raw_bias_var_constraint.transform(self.raw_bias_var)

    @bias_var.setter
    def bias_var(self, value):
        self._set_var("bias_var", value)

    def _set_var(self, name: str, value):
        value = check_positive_variance(name, value)
        raw = getattr(self, f"raw_{name}")
        if value.numel() not in (1, raw.numel()):
            raise ValueError(f"{name} must be one value or {raw.numel()} values (shape {tuple(raw.shape)}), got shape "
                             f"{tuple(value.shape)}")
        self._set_raw(name, value)

    def _set_lengthscale(self, value):
        value = torch.as_tensor(value)
        self._set_raw("lengthscale", value if torch.is_floating_point(value) else value.double())

    def _set_raw(self, name: str, value: torch.Tensor) -> None:
        """Sets raw_<name> from the value asked for, and remembers that value (float64) until the raw parameter
        changes: a kernel built in float32 and moved to float64 before any optimizer step (or any assignment) then
        holds the variances the user wrote, not their float32 roundings (see _apply)."""
        raw = getattr(self, f"raw_{name}")
        exact = value.detach().to(device=raw.device, dtype=torch.float64)
        value = value.to(raw)
        value = value.view(raw.shape) if value.numel() == raw.numel() else value.expand(raw.shape)
        self.initialize(**{f"raw_{name}": getattr(self, f"raw_{name}_constraint").inverse_transform(value)})
        self._asked[name] = (exact, getattr(self, f"raw_{name}").detach().clone())

    def _apply(self, fn, *args, **kwargs):
        """nn.Module._apply (.double(), .to(dtype), .cuda()), then the values asked for set again in the new dtype
        for every raw parameter nothing has changed since they were set. Without this, Python floats would pass
        through float32 at construction: weight_var=1.5 read back 1.500000034710427 after .double(), so float64
        kernels were 1e-7 off neural-tangents instead of 1e-15."""
        asked = self._asked
        untouched = [name for name, (_, then) in asked.items()
                     if getattr(self, f"raw_{name}").shape == then.shape
                     and torch.equal(getattr(self, f"raw_{name}").detach(), then)]
        out = super()._apply(fn, *args, **kwargs)
        for name in list(asked):
            if name in untouched:
                self._set_raw(name, asked[name][0])  # (_set_raw moves the value to the raw parameter)
            else:
                del asked[name]  # trained or loaded since: the parameter is the truth now
        return out
