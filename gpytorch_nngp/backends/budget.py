"""How much memory the evaluation may use: one sizing rule, from the device the tensors live on.

Every size the backends choose comes from here: the rows of a block (with and without autograd), the pairs of an
architecture tile, and whether a kernel matrix is kept between products (the cache CG and Lanczos reuse). The budget
is a share of what the device has: free memory on a CUDA device (torch.cuda.mem_get_info), available RAM on a CPU
(MemAvailable in /proc/meminfo, else the physical memory). Blocks get a small fixed part of it (their
intermediates must stay near the cache on a CPU; on a GPU larger blocks keep the kernels busy); the matrix cache gets
the rest of the share.

    from gpytorch_nngp.backends import memory_budget
    with memory_budget(share=0.3):          # this block of code: at most 30% of the device's memory
        loss = -mll(model(x), y)
    memory_budget.set(cache_bytes=4 * 2**30)  # from now on: keep matrices up to 4 GiB

Overrides: `share` (of the device's free memory), `cache_bytes`, `block_bytes` (the autograd block), `tile_bytes`
(the no-grad architecture tile).
"""
from __future__ import annotations

import os
from typing import Optional

import torch

_MIB = 2 ** 20
# Defaults measured on a 2-core CPU (benchmarks/exact_gp_scaling.py, cnn_kernel_vs_neural_tangents.py): blocks of
# 256 MiB of autograd intermediates; no-grad tiles of 16 MiB of layer state (about 25% faster than 256 MiB, in
# cache). On a GPU the no-grad tile is as large as an autograd block.
_DEFAULTS = {"share": 0.5, "cache_bytes": None, "block_bytes": 256 * _MIB, "tile_bytes": None}
_settings = dict(_DEFAULTS)


class memory_budget:
    """Sets the memory budget, for a `with` block or (`memory_budget.set`) from now on.

    Args:
        share: the share of the device's free memory (CUDA) or available RAM (CPU) the evaluation may use, in (0, 1].
        cache_bytes: keep a kernel matrix between products while it is at most this large (default: the share of
            the device's memory, less a block).
        block_bytes: autograd intermediates per block of rows.
        tile_bytes: layer state per no-grad tile of an architecture kernel (default 16 MiB on a CPU, block_bytes on
            a GPU).
    """

    def __init__(self, share: Optional[float] = None, cache_bytes: Optional[int] = None,
                 block_bytes: Optional[int] = None, tile_bytes: Optional[int] = None):
        self.values = _check(share=share, cache_bytes=cache_bytes, block_bytes=block_bytes, tile_bytes=tile_bytes)
        self.saved = None

    def __enter__(self):
        self.saved = dict(_settings)
        _settings.update(self.values)
        return self

    def __exit__(self, *exc):
        _settings.clear()
        _settings.update(self.saved)
        return False

    @staticmethod
    def set(share: Optional[float] = None, cache_bytes: Optional[int] = None, block_bytes: Optional[int] = None,
            tile_bytes: Optional[int] = None) -> None:
        """Sets the given values from now on."""
        _settings.update(_check(share=share, cache_bytes=cache_bytes, block_bytes=block_bytes, tile_bytes=tile_bytes))

    @staticmethod
    def reset() -> None:
        """Back to the defaults."""
        _settings.clear()
        _settings.update(_DEFAULTS)


def _check(**values):
    out = {}
    for name, value in values.items():
        if value is None:
            continue
        if name == "share":
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value <= 1:
                raise ValueError(f"memory_budget: share must be in (0, 1], got {value!r}")
            out[name] = float(value)
        else:
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"memory_budget: {name} must be a number of bytes >= 0, got {value!r}")
            out[name] = value
    return out


def device_bytes(device: torch.device) -> int:
    """The memory the device has to give now: free memory on CUDA, available RAM on a CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:  # pragma: no cover - not Linux
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover
        return 16 * 2 ** 30


def block_bytes(device: Optional[torch.device] = None) -> int:
    """Bytes of autograd intermediates per block of rows."""
    return _settings["block_bytes"]


def tile_bytes(device: Optional[torch.device] = None) -> int:
    """Bytes of layer state per no-grad architecture tile: small on a CPU (cache), a block on a GPU."""
    if _settings["tile_bytes"] is not None:
        return _settings["tile_bytes"]
    if device is not None and torch.device(device).type == "cuda":
        return _settings["block_bytes"]
    return 16 * _MIB


def cache_bytes(device: Optional[torch.device] = None) -> int:
    """The largest kernel matrix kept between products: the share of the device's memory, less a block."""
    if _settings["cache_bytes"] is not None:
        return _settings["cache_bytes"]
    available = device_bytes(device if device is not None else "cpu")
    return max(0, int(_settings["share"] * available) - _settings["block_bytes"])
