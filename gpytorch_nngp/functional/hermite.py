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
geometric_tail spreads each point's missing energy over the degrees past K, geometrically at the decay rate of
its last kept coefficients of that parity, and pair_tail sums the resulting series for a pair in closed form.
This is exact at c = +-1 for equal points and far more accurate near |c| = 1 than dropping the tail or putting
it all at degree K + 1 (the comparison is benchmarks/numerical_activations.py).

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
    # Exactly symmetric nodes with z = 0 exactly in the middle (linspace leaves a 1e-16 residue there, which
    # flips sign(z) at the node where kinked functions are split, see activations.Numerical).
    half = num_nodes // 2
    h = QUAD_HALF_WIDTH / half
    z = torch.arange(-half, half + 1, dtype=torch.float64) * h
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


@lru_cache(maxsize=16)
def _coarse_weights(num_nodes: int, dtype: torch.dtype, device_str: str) -> torch.Tensor:
    """Simpson weights for N(0, 1) on every other node (step 2h): (num_nodes + 1) / 2 nodes, still z = 0 included."""
    half = num_nodes // 2
    h = 2 * QUAD_HALF_WIDTH / half
    z = torch.arange(-(half // 2), half // 2 + 1, dtype=torch.float64) * h
    simpson = torch.ones(z.numel(), dtype=torch.float64)
    simpson[1:-1:2] = 4.0
    simpson[2:-1:2] = 2.0
    w = simpson * h / 3 * torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    return w.to(dtype=dtype, device=torch.device(device_str))


def quadrature_discrepancy(values: torch.Tensor, num_nodes: int, reference=None) -> float:
    """max over points of |E[f^2] - E_2h[f^2]| / E[g^2] for samples f (..., Q) on the Simpson nodes: E on every
    node, E_2h on every other node, g = reference (default f). Rounding-level for smooth f; large once f changes
    on the scale of the node spacing."""
    _, w, _ = _nodes_and_projection(num_nodes, 0, values.dtype, str(values.device))
    squares = values * values
    fine = squares @ w
    coarse = squares[..., ::2] @ _coarse_weights(num_nodes, values.dtype, str(values.device))
    total = fine if reference is None else (reference * reference) @ w
    scale = total.abs().clamp_min(torch.finfo(values.dtype).tiny)
    return float(((fine - coarse).abs() / scale).max()) if values.numel() else 0.0


def hermite_coefficients(values: torch.Tensor, num_nodes: int, max_degree: int):
    """Coefficients and parity energies of functions sampled on the quadrature nodes.

    values: (..., Q) samples f(z_q). Returns a (..., K+1) with a_k = E[f he_k], and the energies (..., 2) of the
    even and odd parts, E[((f(z) +- f(-z)) / 2)^2].
    """
    _, w, proj = _nodes_and_projection(num_nodes, max_degree, values.dtype, str(values.device))
    coeffs = values @ proj
    return coeffs, parity_energies(values, w)


def parity_energies(values: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """(..., 2): E[f_even^2], E[f_odd^2] for samples (..., Q) on the symmetric nodes with weights w.

    E[f_even^2] = (E[f^2] + E[f(z) f(-z)]) / 2 and E[f_odd^2] = (E[f^2] - E[f(z) f(-z)]) / 2.
    """
    total = (values * values) @ w
    cross = (values * values.flip(-1)) @ w
    return torch.stack((0.5 * (total + cross), 0.5 * (total - cross)), dim=-1)


def relative_tail(coeffs: torch.Tensor, energies: torch.Tensor, total=None) -> torch.Tensor:
    """(K+1,): the largest, over points, of E[(f - f_k)^2] / total after keeping degrees <= k (total: E[f^2])."""
    with torch.no_grad():
        total = energies.sum(-1) if total is None else total
        total = total.clamp_min(torch.finfo(coeffs.dtype).tiny).unsqueeze(-1)
        tail = ((energies.sum(-1, keepdim=True) - (coeffs * coeffs).cumsum(-1)) / total).clamp_min(0)
        return tail.reshape(-1, tail.shape[-1]).amax(0)


def choose_degree(tail: torch.Tensor, tol: float, step: int = 8) -> int:
    """Smallest K (a multiple of `step`, at most the available degree) with tail[K] < tol; tail from relative_tail."""
    max_degree = tail.shape[-1] - 1
    below = (tail[step:max_degree:step] < tol).nonzero()
    return step * (int(below[0]) + 1) if below.numel() else max_degree


def geometric_tail(coeffs: torch.Tensor, energies: torch.Tensor, degree: int, window: int = 8):
    """Tail model beyond `degree`, per parity p: (t, q, powers) for
    sum_{k > K} a_k b_k c^k ~ sum_p t_p t'_p c^k_p / (1 - q_p q'_p c^2).

    For each parity the missing energy T = E_parity - sum_{k <= K} a_k^2 is exact (Parseval). We spread it over
    the degrees k_p, k_p + 2, ... geometrically, a_k^2 ~ T (1 - r) r^j, with r the decay per two degrees measured
    on the last 2 * window kept coefficients of that parity (smooth but steep functions such as tanh at variance
    30+ decay like r^k; kinks are removed beforehand, see activations.Numerical). At c = +-1 the tail is exact.
    Returns t (..., 2), q (..., 2) and the two starting powers (K + 1, K + 2).
    """
    from .safe_math import safe_sqrt

    kept = coeffs[..., : degree + 1]
    squares = kept * kept
    ts, qs, powers = [], [], []
    for power in (degree + 1, degree + 2):
        parity = power % 2
        same = squares[..., parity::2]
        missing = energies[..., parity] - same.sum(-1)
        # Below a few ulps of the total energy the "missing" mass is rounding noise: drop it (saves the n x m tail).
        noise = 16 * torch.finfo(missing.dtype).eps * energies.sum(-1).detach()
        missing = torch.where(missing.detach() > noise, missing, torch.zeros_like(missing))
        with torch.no_grad():
            if same.shape[-1] >= 2 * window:
                last = same[..., -window:].sum(-1)
                prev = same[..., -2 * window: -window].sum(-1)
                tiny = torch.finfo(prev.dtype).tiny
                ratio = torch.where(prev > 0, last / prev.clamp_min(tiny), torch.zeros_like(prev))
                r = ratio.clamp(0.0, 1.0).pow(1.0 / window).clamp_max(0.999)
            else:
                r = torch.zeros_like(missing)
        ts.append(safe_sqrt(missing * (1 - r)))
        qs.append(r.sqrt())
        powers.append(power)
    return torch.stack(ts, -1), torch.stack(qs, -1), tuple(powers)


def pair_tail(c: torch.Tensor, tail1, tail2) -> torch.Tensor:
    """sum over the two parities of t t' c^k / (1 - q q' c^2), broadcast like c (see geometric_tail)."""
    t1, q1, powers = tail1
    t2, q2, _ = tail2
    c2 = c * c
    power = c.pow(powers[0])
    out = None
    for p in range(2):
        if p == 1:
            power = power * c
        weight = t1[..., p] * t2[..., p]
        if not weight.requires_grad and not bool((weight != 0).any()):
            continue
        term = weight * power / (1 - (q1[..., p] * q2[..., p]) * c2)
        out = term if out is None else out + term
    return torch.zeros_like(c) if out is None else out


_TILE_ELEMENTS = 1 << 18  # rows per Horner tile: about 1 MB of float32, so the K passes stay in cache


def _rows(x: torch.Tensor, start: int, stop: int, lead: int = 0) -> torch.Tensor:
    """Rows start:stop of dimension -2, unless x broadcasts along it (size 1, or absent after `lead` leading dims)."""
    return x if x.dim() - lead < 2 or x.shape[-2] == 1 else x[..., start:stop, :]


def _horner(out: torch.Tensor, c: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scale=None) -> torch.Tensor:
    """out = sum_j s_j a_j b_j c^j (s_j = scale[j] or 1) for coefficient-first a (J, ...), b (J, ...), in row tiles.

    On CPU each pass over an n x m matrix is memory bound, so all J passes run on a cache-sized block of rows at a
    time, on a coefficient-first (contiguous) layout (measurements: docs/guide/benchmarks.md).
    """
    num_terms = a.shape[0]
    rows = out.shape[-2] if out.dim() >= 2 else 1
    per_row = max(1, out.numel() // max(1, rows))
    step = max(1, _TILE_ELEMENTS // per_row)
    for start in range(0, rows, step):
        stop = min(rows, start + step)
        o = _rows(out, start, stop)
        cc = _rows(c, start, stop)
        aa = _rows(a, start, stop, lead=1)
        bb = _rows(b, start, stop, lead=1)
        j = num_terms - 1
        o.copy_(aa[j] * bb[j] * (1.0 if scale is None else scale[j]))
        for j in range(num_terms - 2, -1, -1):
            o.mul_(cc)
            if scale is None:
                o.addcmul_(aa[j], bb[j])
            elif scale[j] != 0:
                o.addcmul_(aa[j], bb[j], value=scale[j])
    return out


class _PairPolynomial(torch.autograd.Function):
    """out = sum_j a_j b_j c^j, by Horner in place; backward in O(size of out) memory.

    c: (..., n, m); a: (..., n, 1, J); b: (..., 1, m, J) (any shapes broadcasting to c + (J,)).
    """

    @staticmethod
    def forward(ctx, c, a, b):
        shape = torch.broadcast_shapes(c.shape, a.shape[:-1], b.shape[:-1])
        at = a.movedim(-1, 0).contiguous()
        bt = b.movedim(-1, 0).contiguous()
        out = _horner(c.new_empty(shape), c, at, bt)
        ctx.save_for_backward(c, a, b)
        return out

    @staticmethod
    def backward(ctx, grad):
        c, a, b = ctx.saved_tensors
        num_terms = a.shape[-1]
        grad_c = grad_a = grad_b = None
        if ctx.needs_input_grad[0]:
            # d/dc sum_j a_j b_j c^j = sum_{j>=1} j a_j b_j c^{j-1}, by Horner again.
            if num_terms > 1:
                at = a[..., 1:].movedim(-1, 0).contiguous()
                bt = b[..., 1:].movedim(-1, 0).contiguous()
                deriv = _horner(grad.new_empty(grad.shape), c, at, bt, scale=list(range(1, num_terms)))
                grad_c = (grad * deriv).sum_to_size(c.shape)
            else:
                grad_c = torch.zeros_like(c)
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
