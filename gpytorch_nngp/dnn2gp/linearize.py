"""A trained network linearized at its weights: outputs, Jacobians, and Jacobian products through torch.func.

f_lin(x; theta) = f(x; theta*) + J(x) (theta - theta*), with J(x) = d f(x; theta) / d theta at theta* (C x P for
C outputs and P parameters). The finite neural tangent kernel is J(x) J(x')^T (Jacot et al. 2018); DNN2GP
(Khan et al. 2019) scales it by the prior variance 1 / delta.

Only parameters with requires_grad=True are linearized (freeze a layer to leave it out). The model runs in its
current mode with the parameters and buffers it holds at construction: call model.eval() first for dropout or
batch-norm layers.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
from torch.func import functional_call, jacrev, jvp, vjp, vmap

Params = Dict[str, torch.Tensor]

# Layers whose output in training mode is random or depends on the other points of the batch.
_MODE_DEPENDENT = (torch.nn.modules.dropout._DropoutNd, torch.nn.modules.batchnorm._NormBase)

# Per-point Jacobians are built this many bytes at a time (kernel diagonals of large models).
JACOBIAN_BLOCK_BYTES = 256 * 2 ** 20
# "auto" modes (DNN2GP, FiniteNTKKernel) keep explicit Jacobians while they fit in this many bytes.
EXPLICIT_BYTES = 2 ** 30


class LinearizedNetwork:
    """A network as a function of its parameters at their current values: outputs, Jacobians, JVPs and VJPs.

    Args:
        model: a torch.nn.Module mapping inputs (n, ...) to outputs (n, C) or (n,).
        output: keep only this output column (a scalar-output network for a single-output kernel).
        chunk_size: rows per batched evaluation (memory ~ chunk_size x the network's activations, times the number
            of vectors multiplied at once).

    Raises:
        TypeError: model is not a torch.nn.Module.
        ValueError: a bad chunk_size, or no parameter with requires_grad.
    """

    def __init__(self, model: torch.nn.Module, output: Optional[int] = None, chunk_size: int = 1024):
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
        self.model = model
        self.output = output
        self.chunk_size = chunk_size
        self.params: Params = {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}
        if not self.params:
            raise ValueError("model has no parameters with requires_grad=True: nothing to linearize")
        self.buffers = {name: b.detach() for name, b in model.named_buffers()}
        self.num_params = sum(p.numel() for p in self.params.values())
        self.dtype = next(iter(self.params.values())).dtype
        self._stochastic = [(name, m) for name, m in model.named_modules() if isinstance(m, _MODE_DEPENDENT)]
        self.check_mode()

    def check_mode(self) -> None:
        """Raises ValueError while a dropout or normalization layer of the model is in training mode: the network is
        then random (dropout) or couples the points of a batch (batch statistics), not the function to linearize."""
        training = [f"{name or 'model'} ({type(m).__name__})" for name, m in self._stochastic if m.training]
        if training:
            raise ValueError(f"the model is in training mode, where {', '.join(training)} "
                             f"{'makes' if len(training) == 1 else 'make'} its output random or batch-dependent: "
                             "call model.eval() before linearizing it")

    def check_inputs(self, x, name: str = "x") -> None:
        """Inputs (n, ...) must be a finite tensor of the parameters' dtype (no silent casts)."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor of shape (n, ...), got {type(x).__name__}")
        if x.dim() < 1 or x.shape[0] == 0:
            raise ValueError(f"{name} must have shape (n, ...) with n >= 1, got shape {tuple(x.shape)}")
        if x.dtype != self.dtype:
            raise TypeError(f"{name} has dtype {x.dtype} but the model's parameters are {self.dtype}; convert one "
                            f"of them (model.to({x.dtype}) or {name}.to({self.dtype}))")
        if not torch.isfinite(x).all():
            raise ValueError(f"{name} contains NaN or infinite values")

    # -- the network as a function of its parameters -----------------------------------------------------------
    def _apply(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        self.check_mode()
        out = functional_call(self.model, (params, self.buffers), (x,))
        if out.dim() == 1:
            out = out.unsqueeze(-1)
        if out.dim() != 2 or out.shape[0] != x.shape[0]:
            raise ValueError(f"model must map inputs (n, ...) to outputs (n, C) or (n,); for inputs of shape "
                             f"{tuple(x.shape)} it returned {tuple(out.shape)}")
        if self.output is not None:
            if not -out.shape[1] <= self.output < out.shape[1]:
                raise ValueError(f"output={self.output} but the model has {out.shape[1]} outputs")
            out = out[:, self.output:self.output + 1] if self.output >= 0 else out[:, self.output].unsqueeze(-1)
        return out

    def _chunks(self, n: int):
        return [(start, min(n, start + self.chunk_size)) for start in range(0, n, self.chunk_size)]

    def num_outputs(self, x: torch.Tensor) -> int:
        with torch.no_grad():
            return self._apply(self.params, x[:1]).shape[-1]

    def outputs(self, x: torch.Tensor) -> torch.Tensor:
        """f(x; theta*) (n, C), without a graph."""
        with torch.no_grad():
            return torch.cat([self._apply(self.params, x[a:b]) for a, b in self._chunks(x.shape[0])])

    # -- explicit Jacobians ------------------------------------------------------------------------------------
    def _point_jacobians(self, x: torch.Tensor) -> Params:
        """Per-point Jacobians of a few points x (b, ...): a dict of (b, C, *param.shape)."""
        def one_point(params, xi):
            return self._apply(params, xi.unsqueeze(0))[0]

        return vmap(jacrev(one_point), in_dims=(None, 0))(self.params, x)

    def jacobian_rows(self, x: torch.Tensor) -> int:
        """Points per batch of per-point Jacobians: at most chunk_size and JACOBIAN_BLOCK_BYTES of Jacobians."""
        per_point = self.num_outputs(x) * self.num_params * self.dtype.itemsize
        return max(1, min(self.chunk_size, JACOBIAN_BLOCK_BYTES // per_point))

    def jacobian(self, x: torch.Tensor) -> torch.Tensor:
        """J(x) (n, C, P), parameters flattened in named_parameters order. Memory n C P: small models only."""
        rows = self.jacobian_rows(x)
        out = None
        for a in range(0, x.shape[0], rows):
            jac = self._point_jacobians(x[a:a + rows])
            block = torch.cat([jac[name].flatten(2) for name in self.params], dim=-1)
            if out is None:  # filled in place: no second n x C x P copy from a final concatenation
                out = torch.empty((x.shape[0],) + block.shape[1:], dtype=block.dtype, device=block.device)
            out[a:a + block.shape[0]] = block
        return out

    def unflatten(self, vector: torch.Tensor) -> Params:
        """(..., P), parameters in the order of jacobian() -> a parameter-shaped dict with the same leading dims."""
        out, start = {}, 0
        for name, p in self.params.items():
            out[name] = vector[..., start:start + p.numel()].reshape(*vector.shape[:-1], *p.shape)
            start += p.numel()
        return out

    # -- matrix-free products ----------------------------------------------------------------------------------
    def vjp(self, x: torch.Tensor, cotangents: torch.Tensor) -> Params:
        """sum_i J(x_i)^T v_i for t stacked cotangents (t, n, C): a dict of (t, *param.shape)."""
        total = None
        for a, b in self._chunks(x.shape[0]):
            _, pullback = vjp(lambda params, rows=x[a:b]: self._apply(params, rows), self.params)
            (part,) = vmap(pullback)(cotangents[:, a:b])
            total = part if total is None else {k: total[k] + part[k] for k in total}
        return total

    def jvp(self, x: torch.Tensor, tangents: Params) -> torch.Tensor:
        """J(x) u for t stacked parameter tangents (a dict of (t, *param.shape)): (t, n, C)."""
        def push(tangent, rows):
            return jvp(lambda params: self._apply(params, rows), (self.params,), (tangent,))[1]

        return torch.cat([vmap(push, in_dims=(0, None))(tangents, x[a:b]) for a, b in self._chunks(x.shape[0])],
                         dim=1)

    def kernel_diagonal(self, x: torch.Tensor) -> torch.Tensor:
        """The per-point blocks J(x_i) J(x_i)^T (n, C, C), from the Jacobians of a few points at a time
        (JACOBIAN_BLOCK_BYTES), so no n x P matrix is formed."""
        rows = self.jacobian_rows(x)
        blocks = []
        for a in range(0, x.shape[0], rows):
            b = min(x.shape[0], a + rows)
            jac = self._point_jacobians(x[a:b])
            blocks.append(sum(j.flatten(2) @ j.flatten(2).mT for j in jac.values()))
        return torch.cat(blocks)
