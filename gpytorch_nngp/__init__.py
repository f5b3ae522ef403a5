"""gpytorch_nngp: infinitely wide deep networks (NNGP, NTK) as GPyTorch kernels."""
import os as _os
import sys as _sys

import torch as _torch


def _import_keops_quietly() -> None:
    """Import pykeops (gpytorch imports it too) without its "CUDA libraries not found" line on CPU-only machines.

    pykeops probes for CUDA when it is first imported and prints that line every time on a machine without a GPU,
    where the KeOps backend is not used unless asked for. Its verbosity is off for that import only and restored
    afterwards, so KeOps' own messages (compilation, errors) still show; KEOPS_VERBOSE set by the user wins.
    """
    if "keopscore" in _sys.modules or "KEOPS_VERBOSE" in _os.environ or _torch.cuda.is_available():
        return
    _os.environ["KEOPS_VERBOSE"] = "0"
    try:
        import keopscore
        import pykeops

        keopscore.verbose = pykeops.verbose = True
    except Exception:  # pragma: no cover - a broken pykeops only disables the KeOps backend
        pass
    finally:
        del _os.environ["KEOPS_VERBOSE"]


_import_keops_quietly()

from . import activations, graphs, warnings  # noqa: E402
from ._version import __version__  # noqa: E402
from .frontend import Aggregate, Elementwise, GraphNetwork, Parallel, Residual, SelfAttention  # noqa: E402
from .graphs import GraphInputs  # noqa: E402
from .kernels import ArchitectureKernel, GraphNodeKernel, NNGPKernel, NTKKernel  # noqa: E402

__all__ = ["Aggregate", "ArchitectureKernel", "Elementwise", "GraphInputs", "GraphNetwork", "GraphNodeKernel",
           "NNGPKernel", "NTKKernel", "Parallel", "Residual", "SelfAttention", "activations", "graphs", "warnings",
           "__version__"]
