"""Gaussian expectations of arbitrary elementwise functions by a Hermite (Mehler) series.

For (u, v) ~ N(0, [[k11, k12], [k12, k22]]) with correlation c = k12 / sqrt(k11 k22), Mehler's formula
gives the separable expansion

    E[f(u) g(v)] = sum_k a_k b_k c^k,   a_k = E[f(sqrt(k11) z) he_k(z)],  b_k = E[g(sqrt(k22) z) he_k(z)]

with he_k = He_k / sqrt(k!) the orthonormal probabilists' Hermite polynomials and z ~ N(0, 1).
The coefficients are per point (they only need that point's variance), so an n x m kernel costs
O((n + m) Q K) for the coefficients plus O(n m K) for the series, with Q quadrature nodes and K terms.

Kinked functions (ReLU-like) or steep ones (tanh at variance 10+) have slowly decaying coefficients,
so a truncated series is poor near |c| = 1. By Parseval the tail mass of each point is known exactly,
separately for even and odd k: T_even = E[f_even^2] - sum_{even k <= K} a_k^2 (and odd likewise).
We append sqrt(T x T') c^{K+1} and sqrt(T x T') c^{K+2} (each for its parity), which makes the series
exact at c = +-1 for equal points and cuts the error near |c| = 1 about tenfold (measured in
benchmarks/numerical_activations.py).

1-D expectations use composite Simpson quadrature on [-12, 12] with an odd node count, so z = 0 (the
kink of ReLU-like functions) is a node and each half is integrated at fourth order.
"""
from __future__ import annotations

import math
from functools import lru_cache

import torch

QUAD_HALF_WIDTH = 12.0


@lru_cache(maxsize=16)
def _nodes_and_projection(num_nodes: int, max_degree: int, dtype: torch.dtype, device_str: str):
    """Simpson nodes z (Q,), weights w (Q,) for N(0,1), and P (Q, K+1) with P[q, k] = w_q he_k(z_q)."""
    if num_nodes % 4 != 1:
        raise ValueError("num_nodes must be 1 mod 4 so that z = 0 is a Simpson node with even panels on each side")
    z = torch.linspace(-QUAD_HALF_WIDTH, QUAD_HALF_WIDTH, num_nodes, dtype=torch.float64)
    h = z[1] - z[0]
    simpson = torch.ones(num_nodes, dtype=torch.float64)
    simpson[1:-1:2] = 4.0
    simpson[2:-1:2] = 2.0
    w = simpson * h / 3 * torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    he = torch.empty(num_nodes, max_degree + 1, dtype=torch.float64)
    he[:, 0] = 1.0
    if max_degree >= 1:
        he[:, 1] = z
    for k in range(1, max_degree):
        he[:, k + 1] = (z * he[:, k] - math.sqrt(k) * he[:, k - 1]) / math.sqrt(k + 1)
    proj = w[:, None] * he
    device = torch.device(device_str)
    return z.to(dtype=dtype, device=device), w.to(dtype=dtype, device=device), proj.to(dtype=dtype, device=device)


def hermite_coefficients(values: torch.Tensor, num_nodes: int, max_degree: int):
    """Coefficients and parity energies of functions sampled on the quadrature nodes.

    values: (..., Q) samples f(z_q). Returns a (..., K+1) with a_k = E[f he_k], and the energies
    (..., 2) of the even and odd parts, E[((f(z) +- f(-z)) / 2)^2].
    """
    _, w, proj = _nodes_and_projection(num_nodes, max_degree, values.dtype, str(values.device))
    coeffs = values @ proj
    flipped = values.flip(-1)
    even = 0.5 * (values + flipped)
    odd = 0.5 * (values - flipped)
    energies = torch.stack(((even * even) @ w, (odd * odd) @ w), dim=-1)
    return coeffs, energies


def choose_degree(coeffs: torch.Tensor, energies: torch.Tensor, tol: float, step: int = 8) -> int:
    """Smallest K (a multiple of `step`, at most the available degree) with relative tail < tol everywhere."""
    with torch.no_grad():
        total = energies.sum(-1).clamp_min(torch.finfo(coeffs.dtype).tiny)
        captured = (coeffs * coeffs).cumsum(-1)
        tail = ((total.unsqueeze(-1) - captured) / total.unsqueeze(-1)).flatten(0, -2).amax(0) if coeffs.dim() > 1 else (
            (total - captured) / total
        )
        max_degree = coeffs.shape[-1] - 1
        for degree in range(step, max_degree, step):
            if tail[degree] < tol:
                return degree
        return max_degree


def with_tail(coeffs: torch.Tensor, energies: torch.Tensor, degree: int) -> torch.Tensor:
    """Truncate to `degree` and append the two parity tails as coefficients of c^{K+1}, c^{K+2}."""
    from .safe_math import safe_sqrt

    kept = coeffs[..., : degree + 1]
    squares = kept * kept
    even_captured = squares[..., 0::2].sum(-1)
    odd_captured = squares[..., 1::2].sum(-1)
    tail_even = safe_sqrt(energies[..., 0] - even_captured)
    tail_odd = safe_sqrt(energies[..., 1] - odd_captured)
    # degree + 1 has the parity opposite to degree.
    if (degree + 1) % 2 == 0:
        extra = (tail_even, tail_odd)
    else:
        extra = (tail_odd, tail_even)
    return torch.cat((kept, extra[0].unsqueeze(-1), extra[1].unsqueeze(-1)), dim=-1)


class _PairPolynomial(torch.autograd.Function):
    """out = sum_j a_j b_j c^j, evaluated by Horner in place; backward in O(size of out) memory.

    c: (..., n, m); a: (..., n, 1, J); b: (..., 1, m, J) (any shapes broadcasting to c + (J,)).
    """

    @staticmethod
    def forward(ctx, c, a, b):
        num_terms = a.shape[-1]
        out = (a[..., -1] * b[..., -1]).expand(torch.broadcast_shapes(c.shape, a.shape[:-1], b.shape[:-1])).clone()
        for j in range(num_terms - 2, -1, -1):
            out.mul_(c).addcmul_(a[..., j], b[..., j])
        ctx.save_for_backward(c, a, b)
        return out

    @staticmethod
    def backward(ctx, grad):
        c, a, b = ctx.saved_tensors
        num_terms = a.shape[-1]
        grad_c = grad_a = grad_b = None
        if ctx.needs_input_grad[0]:
            # d/dc sum_j a_j b_j c^j = sum_{j>=1} j a_j b_j c^{j-1}, by Horner again.
            deriv = (a[..., -1] * b[..., -1] * (num_terms - 1)).expand_as(grad).clone()
            for j in range(num_terms - 2, 0, -1):
                deriv.mul_(c).add_(a[..., j] * b[..., j] * j)
            grad_c = (grad * deriv).sum_to_size(c.shape) if num_terms > 1 else torch.zeros_like(c)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            ga = []
            gb = []
            weighted = grad.clone()  # grad * c^j
            for j in range(num_terms):
                if j > 0:
                    weighted.mul_(c)
                if ctx.needs_input_grad[1]:
                    ga.append((weighted * b[..., j]).sum_to_size(a.shape[:-1]))
                if ctx.needs_input_grad[2]:
                    gb.append((weighted * a[..., j]).sum_to_size(b.shape[:-1]))
            grad_a = torch.stack(ga, -1) if ga else None
            grad_b = torch.stack(gb, -1) if gb else None
        return grad_c, grad_a, grad_b


def pair_polynomial(c: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return _PairPolynomial.apply(c, a, b)
