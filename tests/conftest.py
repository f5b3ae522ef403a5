import os
import sys
import tempfile

# OpenMP threads that wait at a barrier spin by default. When another job shares the cores, the spinning threads
# take the time slices of the threads they wait for: two concurrent runs of one lazy-backend test took 103 s each
# instead of 12-14 s on 2 cores. Passive waiting costs nothing measurable on a quiet machine. It must be set
# before torch (and its OpenMP runtime) is loaded.
if "torch" not in sys.modules:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# KeOps builds its formulas once and caches them here (must be set before pykeops is imported).
os.environ.setdefault("KEOPS_CACHE_FOLDER", os.path.join(tempfile.gettempdir(), "gpytorch_nngp_keops_cache"))

import gpytorch  # noqa: E402
import linear_operator  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

os.environ.setdefault("MPLBACKEND", "Agg")

# `import botorch` rewrites global GPyTorch / linear_operator settings (fast computations off, Cholesky up to 4096
# points), and pytest imports test_botorch.py while collecting, before any test runs. Every other test gets the
# defaults back, so that what it checks (CG, Lanczos, SLQ paths) does not depend on which files were collected;
# the BoTorch tests get BoTorch's settings, as its users do.
_SETTINGS = [(linear_operator.settings._fast_covar_root_decomposition, "_default"),
             (linear_operator.settings._fast_log_prob, "_default"),
             (linear_operator.settings._fast_solves, "_default"),
             (linear_operator.settings.cholesky_max_tries, "_global_value"),
             (linear_operator.settings.max_cholesky_size, "_global_value"),
             (gpytorch.settings.max_eager_kernel_size, "_global_value")]
_DEFAULTS = [getattr(setting, attr) for setting, attr in _SETTINGS]
_botorch_values = None


@pytest.fixture(autouse=True)
def _library_settings(request):
    global _botorch_values
    if _botorch_values is None and "botorch" in sys.modules:
        _botorch_values = [getattr(setting, attr) for setting, attr in _SETTINGS]
    uses_botorch = "botorch" in request.node.nodeid or "bayesian_optimization" in request.node.nodeid
    values = _botorch_values if uses_botorch and _botorch_values is not None else _DEFAULTS
    for (setting, attr), value in zip(_SETTINGS, values):
        setattr(setting, attr, value)
    yield


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
