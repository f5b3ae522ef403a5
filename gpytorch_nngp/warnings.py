"""Warnings of gpytorch_nngp, to filter or to turn into errors:

    warnings.filterwarnings("error", category=gpytorch_nngp.warnings.AccuracyWarning)
"""
from __future__ import annotations

from gpytorch.utils.warnings import NumericalWarning

__all__ = ["AccuracyWarning"]


class AccuracyWarning(NumericalWarning):
    """A kernel value computed numerically (an activation without a closed form) may be inaccurate: its series or
    quadrature does not resolve the activation at the variances it meets. GPyTorch's NumericalWarning, specialized."""
