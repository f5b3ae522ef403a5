"""The learnable weight and bias variances shared by the network kernels."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from gpytorch.constraints import Interval, Positive
from gpytorch.kernels import Kernel
from gpytorch.priors import Prior

from .._validation import check_positive_variance


class NetworkVariances(Kernel):
    """A GPyTorch Kernel with positive-constrained `weight_var` and `bias_var` parameters of a given shape.

    weight_var: sigma_w^2 (weights ~ N(0, weight_var / fan_in)); bias_var: sigma_b^2 (biases ~ N(0, bias_var)).
    """

    has_lengthscale = False

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
        value = value.to(raw).expand(raw.shape) if value.numel() == 1 else value.to(raw).view(raw.shape)
        self.initialize(**{f"raw_{name}": getattr(self, f"raw_{name}_constraint").inverse_transform(value)})
