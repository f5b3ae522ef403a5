"""The GPyTorch and linear_operator this run imports meet the bounds pyproject.toml declares. .ci/run runs this
file again with exactly the lowest declared versions swapped in (on PYTHONPATH, with a fast subset of the suite), so
a bound that stops holding fails there rather than on a user's machine."""
import os

import gpytorch
import linear_operator
from packaging.version import Version

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _declared(name):
    import tomllib

    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        deps = tomllib.load(f)["project"]["dependencies"]
    spec = next(d for d in deps if d.split(">=")[0].strip() == name)
    return Version(spec.split(">=")[1])


def test_installed_versions_meet_the_declared_bounds():
    assert Version(gpytorch.__version__) >= _declared("gpytorch")
    assert Version(linear_operator.__version__) >= _declared("linear-operator")
    if "gpytorch_nngp_lowest" in os.environ.get("PYTHONPATH", ""):  # .ci/run's second step: exactly the bounds
        assert Version(gpytorch.__version__) == _declared("gpytorch")
        assert Version(linear_operator.__version__) == _declared("linear-operator")
