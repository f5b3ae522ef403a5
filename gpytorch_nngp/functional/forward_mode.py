"""Forward-mode derivatives of the ABReLU dual maps, without autograd (the activation's half of the flat program's
tangent pass, algebra/flat.py)."""
from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch


def abrelu_dual_tangents(k12: torch.Tensor, k11: torch.Tensor, k22: torch.Tensor, d12: List[torch.Tensor],
                         d11: List[torch.Tensor], d22: List[torch.Tensor], a: float, b: float, ntk: bool
                         ) -> Tuple[torch.Tensor, torch.Tensor, List[torch.Tensor], Optional[List[torch.Tensor]]]:
    """F, Fdot and their directional derivatives along each tangent (dk12, dk11, dk22) = (d12[p], d11[p], d22[p]).

    The arc-cosine partials (Cho & Saul 2009), with s = sqrt(k11 k22 - k12^2), theta = atan2(s, k12),
    amp = (a - b)^2 / (2 pi):

        dF/dk12 = Fdot,   dF/dk11 = amp s / (2 k11),   dF/dk22 = amp s / (2 k22),
        dFdot   = -amp dtheta = amp (dk12 - k12 (dk11 / (2 k11) + dk22 / (2 k22))) / s   (taken as 0 where s = 0,
                  as the autograd path does: there the bracket vanishes too).

    Args:
        k12 (n, m), k11 (n, 1), k22 (1, m): the pre-activation state (or all (n,) / (n, 1) for variances).
        d12, d11, d22: one tangent per direction, broadcasting like the state.
        ntk: also the derivatives of Fdot.

    Returns:
        F, Fdot, [dF per direction], [dFdot per direction] or None.
    """
    amp = (a - b) ** 2 / (2 * math.pi)
    c0 = (a * a + b * b) / 2
    s = torch.mul(k11, k22).sub_(k12 * k12).clamp_min_(0).sqrt_()  # no fused multiply-add: exact 0 at |c| = 1
    fdot = torch.atan2(s, k12).mul_(-amp).add_(c0)
    amp_s = s.mul_(amp)
    f = torch.addcmul(amp_s, fdot, k12)
    half1, half2 = 0.5 / k11, 0.5 / k22
    ratios = [d11[p] * half1 + d22[p] * half2 for p in range(len(d12))]  # dk11/(2 k11) + dk22/(2 k22)
    dfdot = None
    if ntk:
        inv_s = torch.where(amp_s > 0, amp_s, math.inf).reciprocal_().mul_(amp * amp)  # amp / s, 0 where s = 0
        dfdot = [torch.addcmul(d12[p], k12, ratios[p], value=-1.0).mul_(inv_s) for p in range(len(d12))]
    df = [(r.mul_(amp_s) if r.shape == amp_s.shape else r * amp_s).addcmul_(fdot, d) for r, d in zip(ratios, d12)]
    return f, fdot, df, dfdot
