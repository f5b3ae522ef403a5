"""KeOps backend: the network kernel as a symbolic KeOps LazyTensor, O(n + m) memory, for GPUs.

K @ rhs is a KeOps reduction sum_j K_ij rhs_j compiled from the recursion's formula, and its gradients wrt the
inputs, weight_var and bias_var come from KeOps' own autograd -- no n x m matrix exists at any point. The per-point
variances of every layer are O(n) and computed in torch; only the cross term k12 and the NTK term live in KeOps.

Closed-form activations only (KeOps has no erf/tanh and the numerical path needs per-point series): ReLU,
LeakyReLU/ABReLU, abs, identity, erf, sign. On a CPU, KeOps compiles with g++ and is far slower than the dense and
row-block backends (docs/design.md, "Traps in the dependencies"); "auto" picks it only for CUDA tensors.

At |c| = 1 the arc-cosine kernels need sqrt(k11 k22 - k12^2) = 0 with a zero gradient. KeOps computes <x, x'> in
its own summation order, so identical points can leave a gap of a few ulps: gaps below 1e-12 (float64) / 1e-6
(float32) of k11 k22 are treated as 0 (s = g rsqrt(g) with KeOps' rsqrt(0) = 0 then also has gradient 0).
"""
from __future__ import annotations

import torch
from linear_operator.operators import LinearOperator

from ..functional.activations import Activation
from ..functional.recursion import input_variances
from .lazy import NetworkKernelOperator

try:  # pykeops is a core dependency, but keep the package importable where its build is broken
    from pykeops.torch import LazyTensor

    KEOPS_AVAILABLE = True
except Exception:  # pragma: no cover - exercised only without a working pykeops
    LazyTensor = None
    KEOPS_AVAILABLE = False

def keops_supported(activation: Activation) -> bool:
    """Whether the activation has a KeOps formula (Activation.keops_dual)."""
    return activation.has_keops


def check_keops_activation(activation: Activation) -> None:
    """Raise a ValueError naming the alternatives when the KeOps backend cannot compute `activation`."""
    if not keops_supported(activation):
        raise ValueError(f"backend='keops' supports the closed-form activations (relu, leaky_relu/ABReLU, abs, "
                         f"identity, erf, sign), not {activation!r}; use backend='lazy' or 'auto'")


def layer_variances(x, weight_var, bias_var, depth, activation):
    """Per-point pre-activation variances of layers 0..depth-1, each (..., n), in torch (differentiable)."""
    wv, bv = weight_var.squeeze(-1), bias_var.squeeze(-1)
    v = wv * input_variances(x) + bv
    out = []
    for _ in range(depth):
        out.append(v)
        f, _ = activation.dual(v, v, v, False)
        v = wv * f + bv
    return out


def keops_kernel(x1, x2, weight_var, bias_var, depth, activation, ntk):
    """The kernel matrix as a KeOps LazyTensor (..., n, m) (symbolic). weight_var, bias_var: (1, 1) tensors."""
    if not KEOPS_AVAILABLE:
        raise RuntimeError("pykeops could not be imported; use backend='lazy' or 'dense'")
    if weight_var.numel() != 1 or bias_var.numel() != 1:
        raise ValueError("the KeOps backend supports kernels without batch_shape; use backend='lazy' for batched "
                         "kernels")
    rel_eps = 1e-12 if x1.dtype == torch.float64 else 1e-6
    d = x1.shape[-1]
    xi = LazyTensor(x1[..., :, None, :].contiguous())
    xj = LazyTensor(x2[..., None, :, :].contiguous())
    w = LazyTensor(weight_var.reshape(1).to(x1))
    b = LazyTensor(bias_var.reshape(1).to(x1))
    var1 = layer_variances(x1, weight_var, bias_var, depth, activation)
    var2 = layer_variances(x2, weight_var, bias_var, depth, activation)
    k12 = w * ((xi | xj) / d) + b
    theta = k12
    for layer in range(depth):
        v1 = LazyTensor(var1[layer][..., :, None, None].contiguous())
        v2 = LazyTensor(var2[layer][..., None, :, None].contiguous())
        f, fdot = activation.keops_dual(k12, v1, v2, ntk, rel_eps)
        new_k12 = w * f + b
        if ntk:  # Theta^l = K^l + weight_var Fdot Theta^{l-1} (Fdot is a number for identity and sign)
            theta = new_k12 if isinstance(fdot, float) and fdot == 0.0 else new_k12 + w * fdot * theta
        k12 = new_k12
    return theta if ntk else k12


class KeOpsNetworkKernelOperator(NetworkKernelOperator):
    """NetworkKernelOperator whose products and their gradients run through KeOps (O(n + m) memory).

    The evaluator is a FullyConnectedEvaluator. The diagonal, single entries (pivoted Cholesky) and to_dense() use the
    torch recursion as in the lazy backend.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        check_keops_activation(self.evaluator.activation)

    def _matmul(self, rhs):
        e = self.evaluator
        formula = keops_kernel(self.x1, self.x2, self.weight_var, self.bias_var, e.depth, e.activation, e.ntk)
        return formula @ rhs.contiguous()

    def _bilinear_derivative(self, left_vecs, right_vecs):
        # KeOps differentiates its reduction itself in O(n + m) memory: plain autograd through _matmul.
        return LinearOperator._bilinear_derivative(self, left_vecs, right_vecs)

    def _dense_no_grad(self):
        return None  # never hold an n x m matrix on this path
