"""Forward-mode derivatives of the fully connected kernel wrt its two variances (ABReLU family), without autograd."""
from __future__ import annotations

import math
from typing import Tuple

import torch


def abrelu_variance_gradients(gram: torch.Tensor, var1: torch.Tensor, var2: torch.Tensor, depth: int, a: float,
                              b: float, weight_var: float, bias_var: float, ntk: bool,
                              weights: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """sum(dK/d weight_var * weights) and sum(dK/d bias_var * weights) for an ABReLU network, by forward mode, as
    0-d tensors on the inputs' device (no host synchronization per block).

    The derivatives of the state wrt the two variances are carried through the layers with the values, without
    autograd (no graph, a handful of block-sized tensors). The arc-cosine partials (Cho & Saul 2009), with
    s = sqrt(k11 k22 - k12^2), theta = atan2(s, k12), amp = (a - b)^2 / (2 pi):

        dF/dk12 = Fdot,   dF/dk11 = amp s / (2 k11),   dF/dk22 = amp s / (2 k22),
        dtheta  = -(dk12 - k12 (dk11 / (2 k11) + dk22 / (2 k22))) / s   (taken as 0 where s = 0, as the autograd
                  path does: there the bracket vanishes too).

    Args:
        gram (n, m), var1 (n, 1), var2 (1, m): the layer-0 state (input_grams).
        depth, a, b: the network; weight_var, bias_var: the variances (floats; unbatched kernels only).
        ntk: differentiate the NTK instead of the NNGP.
        weights (n, m): what the derivative is contracted with (U V^T in a bilinear derivative).
    """
    amp = (a - b) ** 2 / (2 * math.pi)
    c0 = (a * a + b * b) / 2
    w, bv = weight_var, bias_var
    k12 = gram * w + bv
    d12 = [gram, torch.ones_like(gram)]  # d/dw, d/db
    k11, k22 = var1 * w + bv, var2 * w + bv
    d11, d22 = [var1, torch.ones_like(var1)], [var2, torch.ones_like(var2)]
    theta_ntk = k12.clone() if ntk else None
    dtheta_ntk = [t.clone() for t in d12] if ntk else None
    for _ in range(depth):
        s = torch.mul(k11, k22).sub_(k12 * k12).clamp_min_(0).sqrt_()  # no fused multiply-add: exact 0 at |c| = 1
        fdot = torch.atan2(s, k12).mul_(-amp).add_(c0)
        amp_s = s.mul_(amp)
        f = torch.addcmul(amp_s, fdot, k12)
        half1, half2 = 0.5 / k11, 0.5 / k22
        ratios = [d11[p] * half1 + d22[p] * half2 for p in range(2)]  # dk11/(2 k11) + dk22/(2 k22), (n, m)
        if ntk:
            # amp / s, and 0 where s = 0
            inv_s = torch.where(amp_s > 0, amp_s, math.inf).reciprocal_().mul_(amp * amp)
            # dFdot = -amp dtheta = amp (dk12 - k12 ratio) / s
            dfdot = [torch.addcmul(d12[p], k12, ratios[p], value=-1.0).mul_(inv_s) for p in range(2)]
        df = [ratios[p].mul_(amp_s).addcmul_(fdot, d12[p]) for p in range(2)]
        new_k12 = f.mul(w).add_(bv)
        d12 = [f.add_(df[0], alpha=w), df[1].mul_(w).add_(1.0)]  # d(w F + b)/dw = F + w dF/dw
        d11 = [c0 * k11 + w * c0 * d11[0], w * c0 * d11[1] + 1.0]
        d22 = [c0 * k22 + w * c0 * d22[0], w * c0 * d22[1] + 1.0]
        k11, k22 = w * c0 * k11 + bv, w * c0 * k22 + bv
        if ntk:
            # theta' = k12' + w Fdot theta:  dtheta' = dk12' + [w] Fdot theta + w (dFdot theta + Fdot dtheta)
            new_dtheta = []
            for p in range(2):
                term = dfdot[p].mul_(theta_ntk).addcmul_(fdot, dtheta_ntk[p]).mul_(w).add_(d12[p])
                if p == 0:
                    term.addcmul_(fdot, theta_ntk)
                new_dtheta.append(term)
            dtheta_ntk = new_dtheta
            theta_ntk = fdot.mul_(theta_ntk).mul_(w).add_(new_k12)
        k12 = new_k12
    final = dtheta_ntk if ntk else d12
    return (final[0] * weights).sum(), (final[1] * weights).sum()
