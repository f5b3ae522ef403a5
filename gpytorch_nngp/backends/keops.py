"""KeOps backend: the network kernel as a symbolic KeOps LazyTensor, O(n + m) memory, for GPUs.

K @ rhs is a KeOps reduction sum_j K_ij rhs_j compiled from the fully connected program (algebra/flat.py), and its
gradients wrt the inputs, weight_var and bias_var come from KeOps' own autograd -- no n x m matrix exists at any
point. The per-point variances of every layer are O(n) and computed in torch; only the cross term k12 and the NTK
term live in KeOps.

Closed-form activations only (KeOps has no erf/tanh and the numerical path needs per-point series): ReLU,
LeakyReLU/ABReLU, abs, identity, erf, sign. On a CPU, KeOps compiles with g++ and is far slower than the dense and
row-block backends (docs/design.md, "Traps in the dependencies"); "auto" picks it only for CUDA tensors.

At |c| = 1 the arc-cosine kernels need sqrt(k11 k22 - k12^2) = 0 with a zero gradient. KeOps computes <x, x'> in
its own summation order, so identical points can leave a gap of a few ulps: gaps below 1e-12 (float64) / 1e-6
(float32) of k11 k22 are treated as 0 (s = g rsqrt(g) with KeOps' rsqrt(0) = 0 then also has gradient 0).
"""
from __future__ import annotations

from linear_operator.operators import LinearOperator

from ..algebra.network import mlp_program
from ..functional.activations import Activation
from .lazy import NetworkKernelOperator

try:  # pykeops is optional (the keops extra); every other backend works without it
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


def keops_kernel(x1, x2, weight_var, bias_var, depth, activation, ntk):
    """The kernel matrix as a KeOps LazyTensor (..., n, m) (symbolic): the fully connected program's KeOps form
    (algebra/flat.py). weight_var, bias_var: one-element tensors."""
    if not KEOPS_AVAILABLE:
        raise ImportError("backend='keops' needs pykeops: pip install \"gpytorch_nngp[keops]\" (or use backend='lazy')")
    if weight_var.numel() != 1 or bias_var.numel() != 1:
        raise ValueError("the KeOps backend supports kernels without batch_shape; use backend='lazy' for batched "
                         "kernels")
    return mlp_program(depth, activation).keops(x1, x2, weight_var, bias_var, ntk, LazyTensor)


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
