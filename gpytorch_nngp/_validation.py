"""Input checks shared by the kernels: every failure names the argument and the fix."""
from __future__ import annotations

import numbers
import weakref
from typing import Sequence

import torch

# Tensors already found finite: (weak reference, version counter). A kernel call validates its inputs in __call__
# and again in forward (GPyTorch may also re-enter __call__ when a lazy tensor is evaluated); the scan of a large
# input is then paid once. An in-place edit bumps the version counter, so an edited tensor is checked again.
_FINITE_SEEN: list = []


def _known_finite(x: torch.Tensor) -> bool:
    return any(ref() is x and version == x._version for ref, version in _FINITE_SEEN)


def _remember_finite(x: torch.Tensor) -> None:
    try:
        _FINITE_SEEN.insert(0, (weakref.ref(x), x._version))
    except (TypeError, RuntimeError):  # tensors without a version counter (inference mode) are just not remembered
        return
    del _FINITE_SEEN[4:]


def _check_norms(name: str, x: torch.Tensor) -> None:
    """Raises ValueError when the squared norms of the points overflow x's dtype (float32 past about 1e19): every
    kernel starts from <x, x'>, and an infinite Gram gives kernels that are wrong even where they stay finite."""
    with torch.no_grad():
        big = x.abs().amax()
        if bool(big * big * x.shape[-1] < torch.finfo(x.dtype).max):  # no norm can overflow: skip the sum
            return
        if bool(torch.isfinite(x.square().sum(-1)).all()):
            return
    raise ValueError(f"{name} has entries up to {float(big):.3g}: the squared norms of its points overflow {x.dtype}. "
                     "Standardize the inputs (zero mean, unit variance per feature) or compute in float64")


def check_depth(depth) -> int:
    """depth as an int >= 0 (hidden layers). Raises TypeError / ValueError naming `depth`."""
    if isinstance(depth, bool) or not isinstance(depth, numbers.Integral):
        raise TypeError(f"depth must be a non-negative int (number of hidden layers), got {depth!r}")
    if depth < 0:
        raise ValueError(f"depth must be >= 0 (number of hidden layers), got {depth}")
    return int(depth)


def check_choice(name: str, value, choices: Sequence[str]) -> str:
    """value if it is one of `choices` (strings). Raises ValueError naming the argument and listing the choices."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(repr(c) for c in choices)}, got {value!r}")
    return value


# What each positive hyperparameter is, for error messages that are true for it.
VARIANCE = "a variance sigma^2, not a standard deviation"
STANDARD_DEVIATION = "a standard deviation sigma, not a variance"
PRECISION = "a precision (inverse variance) delta, the weight decay of the prior N(0, I / delta)"


def check_positive(name: str, value, meaning: str, hint: str = "") -> torch.Tensor:
    """A float or tensor as a tensor with finite entries > 0.

    Args:
        name: the argument's name, for the message.
        value: a real number or a floating point tensor.
        meaning: what the argument is (VARIANCE, STANDARD_DEVIATION, PRECISION), said in the message.
        hint: an extra sentence for the message.

    Returns:
        A tensor (Python numbers become float64, so that a float64 kernel gets the exact value asked for).

    Raises:
        TypeError: value is not a real number or tensor.
        ValueError: an entry is NaN, infinite or <= 0.
    """
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, torch.Tensor)):
        raise TypeError(f"{name} must be a positive float or tensor ({meaning}), got {type(value).__name__}")
    tensor = value if isinstance(value, torch.Tensor) else torch.tensor(float(value), dtype=torch.float64)
    if not torch.is_floating_point(tensor):
        tensor = tensor.to(torch.get_default_dtype())
    if not torch.isfinite(tensor).all() or (tensor <= 0).any():
        extra = f"; {hint}" if hint else ""
        raise ValueError(f"{name} must be finite and > 0 (it is {meaning}), got {value!r}{extra}")
    return tensor


def check_positive_variance(name: str, value) -> torch.Tensor:
    """check_positive for the network variances weight_var and bias_var."""
    hint = "for a network without biases use a tiny bias_var such as 1e-12" if name == "bias_var" else ""
    return check_positive(name, value, VARIANCE, hint)


def check_inputs(x1: torch.Tensor, x2: torch.Tensor) -> None:
    """Kernel inputs x1 (..., n, d) and x2 (..., m, d): finite floating point tensors of one dtype and device.

    Raises:
        TypeError: not a tensor, not floating point, or mixed dtypes.
        ValueError: fewer than 2 dimensions, empty, NaN/inf entries, mixed devices or feature counts.
    """
    for name, x in (("x1", x1), ("x2", x2)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor of shape (..., n, d), got {type(x).__name__}")
        if x.dim() < 2:
            raise ValueError(f"{name} must have shape (..., n, d) with at least 2 dimensions, got shape "
                             f"{tuple(x.shape)}")
        if not torch.is_floating_point(x):
            raise TypeError(f"{name} must be a floating point tensor, got dtype {x.dtype}; convert with .double() or "
                            ".float()")
        if x.shape[-1] == 0 or x.shape[-2] == 0:
            raise ValueError(f"{name} is empty (shape {tuple(x.shape)}): the kernel needs at least one point and one "
                             "feature")
        if x.requires_grad or torch.is_inference_mode_enabled() or not _known_finite(x):
            if not torch.isfinite(x).all():
                raise ValueError(f"{name} contains NaN or inf; clean or impute the inputs before building the kernel")
            _check_norms(name, x)
            if not x.requires_grad and not torch.is_inference_mode_enabled():
                _remember_finite(x)
    if x1.dtype != x2.dtype:
        raise TypeError(f"x1 and x2 must have the same dtype, got {x1.dtype} and {x2.dtype}; convert one of them, "
                        f"e.g. x2.to({x1.dtype})")
    if x1.device != x2.device:
        raise ValueError(f"x1 and x2 must be on the same device, got {x1.device} and {x2.device}")
    if x1.shape[-1] != x2.shape[-1]:
        raise ValueError(
            f"x1 and x2 must have the same number of features (last dimension), got {x1.shape[-1]} and {x2.shape[-1]}"
        )


def check_finite_kernel(values: torch.Tensor, *inputs: torch.Tensor) -> torch.Tensor:
    """values unchanged if all finite; else a ValueError that names the cause (overflow at the inputs' scale).

    values: kernel entries (a matrix, or the diagonals that bound it: |k(x, x')| <= sqrt(k(x, x) k(x', x'))).
    """
    with torch.no_grad():
        if bool(torch.isfinite(values).all()):
            return values
        scale = max(float(x.detach().abs().max()) for x in inputs)
    raise ValueError(f"the kernel is not finite in {values.dtype} for inputs with entries up to {scale:.3g} (the "
                     "variances overflow): standardize the inputs (zero mean, unit variance per feature), lower "
                     "weight_var, or compute in float64 (kernel.double() and x.double())")


def check_count(name: str, value, minimum: int = 1) -> int:
    """value as an int >= minimum (a count: iterations, epochs, batch size). Raises TypeError / ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_training_data(x, y, num_classes=None, labels: bool = True) -> None:
    """Training inputs x (n, d) and targets y (n,): class labels 0 .. num_classes - 1 (labels=True), or real
    targets. Raises TypeError / ValueError naming the argument and the fix."""
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or not torch.is_floating_point(x):
        raise ValueError(f"x must be a floating point tensor of shape (n, d), got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"y must be a tensor of shape (n,), got {type(y).__name__}")
    if y.dim() != 1:
        raise ValueError(f"y must have shape (n,) (one {'label' if labels else 'target'} per point), got "
                         f"{tuple(y.shape)}" + ("; use y.squeeze(-1)" if y.dim() == 2 and y.shape[-1] == 1 else ""))
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"x and y must have the same number of points, got {x.shape[0]} and {y.shape[0]}")
    if not labels:
        if not torch.is_floating_point(y) or not torch.isfinite(y).all():
            raise ValueError("y must be finite floating point regression targets")
        return
    if torch.is_floating_point(y) or y.dtype == torch.bool or torch.is_complex(y):
        raise TypeError(f"y must hold integer class labels (torch.long), got dtype {y.dtype}; convert with y.long() "
                        "if the values are whole numbers")
    if y.numel() and (int(y.min()) < 0 or (num_classes is not None and int(y.max()) >= num_classes)):
        raise ValueError(f"labels must lie in 0 .. {num_classes - 1 if num_classes is not None else 'C - 1'} "
                         f"(num_classes={num_classes}), got labels from {int(y.min())} to {int(y.max())}")


def check_call(active_dims, batch_shape: torch.Size, x1, x2) -> None:
    """What GPyTorch's Kernel.__call__ would otherwise fail on with a bare RuntimeError: active_dims out of range for
    the inputs' features, batch shapes of x1 and x2 that do not broadcast, or a kernel batch_shape the inputs' batch
    shape does not broadcast with. Non-tensors are left to check_inputs."""
    if not isinstance(x1, torch.Tensor) or not isinstance(x2, torch.Tensor) or x1.dim() < 1 or x2.dim() < 1:
        return
    if active_dims is not None:
        features = x1.shape[-1]
        bad = [int(i) for i in torch.as_tensor(active_dims).reshape(-1) if not -features <= int(i) < features]
        if bad:
            raise ValueError(f"active_dims {torch.as_tensor(active_dims).tolist()} select columns {bad} that inputs "
                             f"with {features} features do not have")
    if x1.dim() < 2 or x2.dim() < 2:
        return
    try:
        batch = torch.broadcast_shapes(x1.shape[:-2], x2.shape[:-2])
    except RuntimeError:
        raise ValueError(f"x1 and x2 have batch shapes {tuple(x1.shape[:-2])} and {tuple(x2.shape[:-2])}, which do "
                         "not broadcast: give them equal (or size-1) batch dimensions") from None
    try:
        torch.broadcast_shapes(batch, batch_shape)
    except RuntimeError:
        raise ValueError(f"the kernel has batch_shape {tuple(batch_shape)} but the inputs have batch shape "
                         f"{tuple(batch)}: inputs (*batch_shape, n, d) are expected (or build the kernel with the "
                         "inputs' batch_shape)") from None


def one_point_set(x1: torch.Tensor, x2: torch.Tensor) -> bool:
    """Whether x1 and x2 may be treated as one set of points: variances read off the Gram's diagonal (|c| = 1
    exactly there), one tensor in the lazy operator, one variance per pair on a diagonal. That is the right
    function only for one tensor, or for equal tensors that need no gradient: for equal but separate tensors that
    do, d<a, b>/da = b / d is half of d|a|^2/da = 2 a / d."""
    return x1 is x2 or (not x1.requires_grad and not x2.requires_grad and x1.shape == x2.shape
                        and torch.equal(x1, x2))
