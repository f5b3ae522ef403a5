"""The finite neural tangent kernel of a trained network as a GPyTorch kernel.

k(x, x') = J(x) J(x')^T / prior_precision, J the Jacobian of the network output with respect to its parameters
at their current values: the prior covariance of the linearized network f_lin under theta ~ N(0, I / delta)
(Khan et al. 2019, DNN2GP; Maddox et al. 2021 use it to adapt a trained network to a new task with a GP).
"""
from __future__ import annotations

from typing import Optional, Union

import torch
from gpytorch.constraints import Positive
from gpytorch.kernels import Kernel
from linear_operator.operators import LinearOperator

from .._validation import PRECISION, check_call, check_choice, check_inputs, check_positive
from .linearize import EXPLICIT_BYTES, LinearizedNetwork
from .operator import FiniteNTKOperator

MODES = ("auto", "explicit", "operator")


class FiniteNTKKernel(Kernel):
    """k(x, x') = J(x) J(x')^T / prior_precision, the finite NTK of a network at its current weights.

    Args:
        model: a torch.nn.Module mapping (n, d) inputs to (n, 1) / (n,) outputs (or pick a column with `output`).
            Its weights are fixed: they are not parameters of the kernel.
        output: the output column to use, for a network with several.
        prior_precision: delta > 0, learnable (the kernel's scale is 1 / delta).
        mode: "explicit" Jacobians (n x P, small models), "operator" (Jacobian-vector products through
            FiniteNTKOperator, any size; GPyTorch then uses CG / Lanczos), or "auto" (explicit while both inputs'
            Jacobians fit in 1 GiB).
        chunk_size: rows per batched network evaluation.
        prior_precision_prior, prior_precision_constraint: as in GPyTorch.
        **kwargs: GPyTorch Kernel arguments (batch_shape, active_dims, ...).

    Inputs (..., n, d) in the model's dtype; batch dimensions are flattened into one network call (explicit
    Jacobians). Output (..., n, m), or (..., n) with diag=True.
    """

    has_lengthscale = False

    def __init__(self, model: torch.nn.Module, output: Optional[int] = None, prior_precision: float = 1.0,
                 mode: str = "auto", chunk_size: int = 1024, prior_precision_prior=None,
                 prior_precision_constraint=None, **kwargs):
        super().__init__(**kwargs)
        self.mode = check_choice("mode", mode, MODES)
        prior_precision = check_positive("prior_precision", prior_precision, PRECISION)
        # A plain attribute (not a submodule), so GP optimizers never see the network's weights.
        self.__dict__["network"] = LinearizedNetwork(model, output=output, chunk_size=chunk_size)
        self.register_parameter("raw_prior_precision",
                                torch.nn.Parameter(torch.zeros(*self.batch_shape, 1, 1, dtype=self.network.dtype)))
        self.register_constraint("raw_prior_precision", prior_precision_constraint or Positive())
        if prior_precision_prior is not None:
            self.register_prior("prior_precision_prior", prior_precision_prior, lambda m: m.prior_precision,
                                lambda m, v: m._set_prior_precision(v))
        self._set_prior_precision(prior_precision)

    @property
    def prior_precision(self) -> torch.Tensor:
        return self.raw_prior_precision_constraint.transform(self.raw_prior_precision)

    @prior_precision.setter
    def prior_precision(self, value):
        self._set_prior_precision(check_positive("prior_precision", value, PRECISION))

    def _set_prior_precision(self, value):
        value = torch.as_tensor(value).to(self.raw_prior_precision)
        self.initialize(raw_prior_precision=self.raw_prior_precision_constraint.inverse_transform(value))

    def _use_operator(self, n_points: int, batched: bool) -> bool:
        if self.mode == "operator":
            if batched or len(self.batch_shape):
                raise ValueError("mode='operator' needs inputs (n, d) and a kernel without batch_shape; "
                                 "use mode='explicit'")
            return True
        if self.mode == "explicit" or batched or len(self.batch_shape):
            return False
        return n_points * self.network.num_params * self.network.dtype.itemsize > EXPLICIT_BYTES

    @staticmethod
    def _require_single_output(count: int) -> None:
        if count != 1:
            raise ValueError(f"the model has {count} outputs: pass output=<index> to FiniteNTKKernel")

    def _jacobian(self, x: torch.Tensor) -> torch.Tensor:
        """(..., n, d) -> (..., n, P) for the single output."""
        jac = self.network.jacobian(x.reshape(-1, x.shape[-1]))
        self._require_single_output(jac.shape[1])
        return jac[:, 0].reshape(*x.shape[:-1], -1)

    def __call__(self, x1, x2=None, diag=False, last_dim_is_batch=False, **params):
        check_call(self.active_dims, self.batch_shape, x1, x1 if x2 is None else x2)
        return super().__call__(x1, x2, diag=diag, last_dim_is_batch=last_dim_is_batch, **params)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, diag: bool = False, last_dim_is_batch: bool = False,
                **params) -> Union[torch.Tensor, LinearOperator]:
        """J(x1) J(x2)^T / prior_precision (..., n, m) (an operator in operator mode), or its diagonal (..., n)."""
        if last_dim_is_batch:
            raise ValueError("FiniteNTKKernel does not support last_dim_is_batch=True")
        check_inputs(x1, x2)
        for name, x in (("x1", x1), ("x2", x2)):
            self.network.check_inputs(x, name)
        scale = self.prior_precision.reciprocal()  # (*batch_shape, 1, 1)
        if diag:
            if x1.shape == x2.shape and torch.equal(x1, x2):
                flat = self.network.kernel_diagonal(x1.reshape(-1, x1.shape[-1]))
                self._require_single_output(flat.shape[-1])
                values = flat.reshape(*x1.shape[:-1])
            else:
                values = (self._jacobian(x1) * self._jacobian(x2)).sum(-1)
            return values * scale.squeeze(-1)
        batched = x1.dim() > 2 or x2.dim() > 2
        if self._use_operator(x1.shape[-2] + x2.shape[-2], batched):
            op = FiniteNTKOperator(x1, x2, network=self.network)
            self._require_single_output(op.num_outputs)
            return op * scale.reshape(())
        j1 = self._jacobian(x1)
        j2 = j1 if x2 is x1 else self._jacobian(x2)
        return (j1 @ j2.mT) * scale
