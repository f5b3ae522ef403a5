"""Autograd functions whose gradients stay finite where the textbook ones blow up.

The arc-cosine kernels use theta = arccos(c) and sqrt(k11 k22 - k12^2). Both have an infinite
derivative at |c| = 1 (identical, parallel or antiparallel inputs), although the kernel itself is
smooth there or has a kink whose natural (symmetric) subgradient is zero. Autograd through
`torch.acos`/`torch.sqrt` would give inf or NaN; these functions give the analytic derivative
where it exists and zero where the input is exactly degenerate.
"""
from __future__ import annotations

import math

import torch


def _sum_to(grad: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reduce a broadcast gradient back to the shape of the input it belongs to."""
    return grad.sum_to_size(like.shape) if grad.shape != like.shape else grad


class _SafeSqrt(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        out = x.clamp_min(0).sqrt()
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad):
        (out,) = ctx.saved_tensors
        return torch.where(out > 0, grad / (2 * out).clamp_min(torch.finfo(out.dtype).tiny), torch.zeros_like(grad))


def safe_sqrt(x: torch.Tensor) -> torch.Tensor:
    """sqrt(max(x, 0)) with gradient 0 (instead of inf) at x <= 0."""
    return _SafeSqrt.apply(x)


def products_overflow(k11: torch.Tensor, k22: torch.Tensor) -> bool:
    """Whether k11 k22 may overflow the dtype (float32 past about 1e19): then sqrt_gap rescales."""
    big = torch.maximum(k11.detach().abs().max(), k22.detach().abs().max())
    return bool(big > math.sqrt(torch.finfo(k11.dtype).max) / 4)


def rescaled_sqrt_gap(k12, k11, k22):
    """sqrt(max(k11 k22 - k12^2, 0)) for variances whose products overflow: each side is scaled by a power of two
    near its variance (exact in floating point) before the products, and the result scaled back. Equal inputs still
    give exactly 0."""
    h1 = torch.frexp(k11).exponent // 2
    h2 = torch.frexp(k22).exponent // 2
    a, b, c = torch.ldexp(k11, -2 * h1), torch.ldexp(k22, -2 * h2), torch.ldexp(k12, -(h1 + h2))
    return torch.ldexp(torch.mul(a, b).sub_(torch.mul(c, c)).clamp_min_(0).sqrt_(), h1 + h2)


def sqrt_gap(k12, k11, k22):
    """s = sqrt(max(k11 k22 - k12^2, 0)) (the determinant of the pair covariance, square-rooted), and a buffer
    shaped like k12 that the caller may reuse.

    Both products are rounded separately (no fused multiply-add), so the gap is exactly 0 on the diagonal. Where
    the products would overflow, they are formed after an exact rescaling (rescaled_sqrt_gap).
    """
    squared = torch.mul(k12, k12)
    if products_overflow(k11, k22):
        return rescaled_sqrt_gap(k12, k11, k22), squared
    return torch.mul(k11, k22).sub_(squared).clamp_min_(0).sqrt_(), squared


def _angle_parts(k12, k11, k22):
    """s = sqrt(k11 k22 - k12^2) >= 0 and theta = atan2(s, k12) in [0, pi]."""
    s, _ = sqrt_gap(k12, k11, k22)
    return s, torch.atan2(s, k12)


def _angle_grads(grad_theta, k12, k11, k22, s):
    """Gradients of theta = arccos(k12 / sqrt(k11 k22)), zero where s == 0 (|c| = 1).

    d theta = -(dk12 - k12/2 (dk11/k11 + dk22/k22)) / s.
    """
    g = torch.where(s > 0, grad_theta / torch.where(s > 0, s, torch.ones_like(s)), torch.zeros_like(s))
    g12 = -g
    gk = g * k12 * 0.5
    return g12, gk / k11, gk / k22


class _ShiftedRootDeterminant(torch.autograd.Function):
    @staticmethod
    def forward(ctx, k12, k11, k22, b: float):
        if products_overflow(k11, k22):
            r = torch.hypot(rescaled_sqrt_gap(k12, k11, k22).mul_(b), (1 + b * (k11 + k22)).sqrt())
        else:  # in place, one n x m buffer: b^2 max(k11 k22 - k12^2, 0) + b k11 + b k22 + 1
            r = torch.mul(k11, k22).sub_(k12 * k12).clamp_min_(0).mul_(b * b)
            r = r.add_(k11, alpha=b).add_(k22, alpha=b).add_(1).sqrt_()
        ctx.b = b
        ctx.save_for_backward(k12, k11, k22, r)
        return r

    @staticmethod
    def backward(ctx, grad):
        k12, k11, k22, r = ctx.saved_tensors
        b, g = ctx.b, grad / r
        return (_sum_to(-b * b * g * k12, k12), _sum_to(0.5 * b * g * (1 + b * k22), k11),
                _sum_to(0.5 * b * g * (1 + b * k11), k22), None)


def shifted_root_determinant(k12: torch.Tensor, k11: torch.Tensor, k22: torch.Tensor, b: float) -> torch.Tensor:
    """sqrt((1 + b k11)(1 + b k22) - b^2 k12^2) >= 1, broadcast like k12 (b > 0).

    Computed as hypot(b sqrt(k11 k22 - k12^2), sqrt(1 + b (k11 + k22))): a sum of non-negative terms, so large
    variances neither cancel (the plain difference keeps a few digits in float32 at variances of 1e6) nor overflow.
    The erf and GELU duals are built on it.
    """
    return _ShiftedRootDeterminant.apply(k12, k11, k22, float(b))


class _SafeAngle(torch.autograd.Function):
    @staticmethod
    def forward(ctx, k12, k11, k22):
        s, theta = _angle_parts(k12, k11, k22)
        ctx.save_for_backward(k12, k11, k22, s)
        return theta

    @staticmethod
    def backward(ctx, grad):
        k12, k11, k22, s = ctx.saved_tensors
        g12, g11, g22 = _angle_grads(grad, k12, k11, k22, s)
        return _sum_to(g12, k12), _sum_to(g11, k11), _sum_to(g22, k22)


def safe_angle(k12: torch.Tensor, k11: torch.Tensor, k22: torch.Tensor) -> torch.Tensor:
    """theta = arccos(k12 / sqrt(k11 k22)) computed as atan2, with a finite gradient at |c| = 1.

    Shapes broadcast: k12 (..., n, m), k11 (..., n, 1), k22 (..., 1, m) (or all (..., n) for diagonals).
    """
    return _SafeAngle.apply(k12, k11, k22)


class _ABReLUDual(torch.autograd.Function):
    """(F, Fdot) of phi(x) = a x (x < 0), b x (x >= 0); see activations.LeakyReLU for the formulas.

    Backward uses Price's theorem, dF/dk12 = Fdot, and homogeneity, dF/dk11 = (F - k12 Fdot) / (2 k11)
    = A s / (2 k11) with A = (a - b)^2 / (2 pi), so no large terms cancel near |c| = 1.
    """

    @staticmethod
    def forward(ctx, k12, k11, k22, a: float, b: float):
        # Written with few large allocations: on CPU a fresh n x n tensor costs several in-place passes.
        return _abrelu_forward(ctx, k12, k11, k22, a, b)

    @staticmethod
    def backward(ctx, grad_f, grad_fdot):
        k12, k11, k22, s, fdot = ctx.saved_tensors
        amp = ctx.amp
        g12 = torch.zeros_like(k12) if grad_f is None else grad_f * fdot
        half_amp_s = s * (0.5 * amp)
        g11 = 0 if grad_f is None else grad_f * half_amp_s / k11
        g22 = 0 if grad_f is None else grad_f * half_amp_s / k22
        if grad_fdot is not None and amp != 0:
            t12, t11, t22 = _angle_grads(grad_fdot * (-amp), k12, k11, k22, s)
            g12, g11, g22 = g12 + t12, g11 + t11, g22 + t22
        zeros = torch.zeros_like
        g11 = zeros(k11) if isinstance(g11, int) else _sum_to(g11, k11)
        g22 = zeros(k22) if isinstance(g22, int) else _sum_to(g22, k22)
        return _sum_to(g12, k12), g11, g22, None, None


def abrelu_dual(k12, k11, k22, a: float, b: float):
    return _ABReLUDual.apply(k12, k11, k22, float(a), float(b))


def abrelu_dual_into(k12, k11, k22, a: float, b: float, buffers):
    """abrelu_dual without autograd, writing (F, Fdot) into the two given buffers shaped like k12."""
    return _abrelu_forward(None, k12, k11, k22, float(a), float(b), buffers)


def _abrelu_forward(ctx, k12, k11, k22, a: float, b: float, buffers=None):
    """F and Fdot of the ABReLU dual; with buffers (two tensors shaped like k12, no autograd) nothing is allocated:
    F lands in buffers[0] and Fdot in buffers[1]."""
    amp = (a - b) ** 2 / (2 * torch.pi)
    if buffers is None:
        s, buf = sqrt_gap(k12, k11, k22)
        theta = torch.atan2(s, k12)
    elif products_overflow(k11, k22):
        buf, theta = buffers
        s = buf.copy_(rescaled_sqrt_gap(k12, k11, k22))
        torch.atan2(s, k12, out=theta)
    else:
        buf, theta = buffers
        # k11 k22 and k12^2 are rounded separately (no fused multiply-add): the gap is exactly 0 on the diagonal.
        s = torch.mul(k11, k22, out=buf).sub_(torch.mul(k12, k12, out=theta)).clamp_min_(0).sqrt_()
        torch.atan2(s, k12, out=theta)
    fdot = theta.mul_(-amp).add_((a * a + b * b) / 2)  # ((a^2+b^2) pi - (a-b)^2 theta) / (2 pi)
    if buffers is not None:
        return s.mul_(amp).addcmul_(fdot, k12), fdot  # s is buffers[0]: F overwrites it
    ctx.amp = amp
    if any(ctx.needs_input_grad[:3]):
        ctx.save_for_backward(k12, k11, k22, s, fdot)
    return torch.mul(s, amp, out=buf).addcmul_(fdot, k12), fdot
