"""Argument checks of the predict functions: kernel matrices, initial outputs, dtypes, training data; each failure
names the argument."""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch


def _check_matrix(name: str, value, shape: Tuple[Optional[int], ...], like: torch.Tensor, symmetric: bool = False):
    """A kernel matrix argument, checked: a floating point tensor (or array) of `like`'s dtype, of `shape` (None: any
    size, e.g. (None, n) for a test-train kernel of n training points), with finite entries, and symmetric to
    sqrt(eps) of its largest entry where `symmetric` (then returned symmetrized, so that no solver depends on which
    triangle it reads). Moved to like's device. Raises ValueError naming `name`."""
    expected = "(" + ", ".join("m" if s is None else str(s) for s in shape) + ")"
    if not isinstance(value, torch.Tensor):
        try:
            value = torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(f"{name} must be a tensor of shape {expected}, got {type(value).__name__}") from None
    if value.dim() != len(shape) or any(s is not None and s != v for s, v in zip(shape, value.shape)):
        raise ValueError(f"{name} must have shape {expected}, got {tuple(value.shape)}")
    if not torch.is_floating_point(value):
        raise ValueError(f"{name} must be a floating point tensor, got dtype {value.dtype}")
    if value.dtype != like.dtype:
        raise ValueError(f"{name} is {value.dtype} but y_train is {like.dtype}: pass them in one dtype (e.g. "
                         f"{name}.to({like.dtype}) or y_train.to({value.dtype}))")
    value = value.to(like.device)
    finite = torch.isfinite(value)
    if not bool(finite.all()):
        bad = (~finite).nonzero()
        raise ValueError(f"{name} has {bad.shape[0]} NaN or infinite entries (the first at {tuple(bad[0].tolist())}): "
                         "a kernel matrix must be finite")
    if symmetric and value.numel():
        scale = value.abs().max()
        gap = (value - value.mT).abs().max()
        if bool(gap > math.sqrt(torch.finfo(value.dtype).eps) * scale):
            raise ValueError(f"{name} is not symmetric: entries (i, j) and (j, i) differ by up to {float(gap):.3g} "
                             f"(its largest entry is {float(scale):.3g}); a training kernel k(X, X) is symmetric")
        value = (value + value.mT) / 2
    return value


def _check_outputs(name: str, value, shape: Tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """Initial outputs (a number or a tensor broadcastable to `shape`) as a tensor of that shape in like's dtype;
    ValueError naming `name` for NaN/inf or a shape that does not broadcast."""
    if isinstance(value, torch.Tensor) and torch.is_floating_point(value) and value.dtype != like.dtype:
        raise ValueError(f"{name} is {value.dtype} but y_train is {like.dtype}: pass them in one dtype")
    tensor = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    try:
        tensor = tensor.expand(*shape)
    except RuntimeError:
        raise ValueError(f"{name} must broadcast to shape {tuple(shape)}, got shape {tuple(tensor.shape)}") from None
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"{name} contains NaN or inf")
    return tensor


def _kernel_dtype(kernel) -> Optional[torch.dtype]:
    """The floating dtype a network kernel computes in (its variances'), or None if it has no parameters."""
    for tensor in kernel.parameters():
        if torch.is_floating_point(tensor):
            return tensor.dtype
    return None


def _check_dtypes(kernel, **tensors) -> None:
    """ValueError naming the tensors (x_train, y_train, x_test) whose dtype differs from the kernel's."""
    dtype = _kernel_dtype(kernel)
    wrong = {name: t.dtype for name, t in tensors.items() if t is not None and dtype is not None and t.dtype != dtype}
    if wrong:
        listed = ", ".join(f"{name} is {d}" for name, d in wrong.items())
        cast = "double()" if dtype == torch.float64 else "float()" if dtype == torch.float32 else f"to({dtype})"
        raise ValueError(f"{listed}, but the kernel computes in {dtype}: convert them ({', '.join(wrong)}.{cast}) or "
                         f"the kernel (kernel.to({next(iter(wrong.values()))}))")


def _check_training(x_train, y_train, learning_rate, diag_reg):
    if not isinstance(y_train, torch.Tensor) or y_train.dim() != 2 or not torch.is_floating_point(y_train):
        raise ValueError("y_train must be a floating point tensor of shape (n, k) (k outputs share the kernel), got "
                         f"{tuple(y_train.shape) if isinstance(y_train, torch.Tensor) else type(y_train).__name__}")
    if not torch.isfinite(y_train).all():
        raise ValueError("y_train contains NaN or inf")
    if x_train is not None and (not isinstance(x_train, torch.Tensor) or x_train.dim() != 2
                                or x_train.shape[0] != y_train.shape[0]):
        raise ValueError(f"x_train must have shape (n, d) with n = {y_train.shape[0]} rows like y_train, got "
                         f"{tuple(x_train.shape) if isinstance(x_train, torch.Tensor) else type(x_train).__name__}")
    if not isinstance(learning_rate, (int, float)) or isinstance(learning_rate, bool) or not \
            0 < learning_rate < math.inf:
        raise ValueError(f"learning_rate must be a finite number > 0, got {learning_rate!r}")
    if not isinstance(diag_reg, (int, float)) or isinstance(diag_reg, bool) or not 0 <= diag_reg < math.inf:
        raise ValueError(f"diag_reg must be a finite number >= 0, got {diag_reg!r}")
