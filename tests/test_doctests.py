"""The examples in the docstrings run and print what they say (every public kernel, torch module and predict
function has one)."""
import doctest
import importlib

import pytest

MODULES = ["gpytorch_nngp.kernels.fully_connected", "gpytorch_nngp.kernels.architecture",
           "gpytorch_nngp.kernels.graph_nodes", "gpytorch_nngp.kernels.base", "gpytorch_nngp.frontend.combinators",
           "gpytorch_nngp.frontend.attention", "gpytorch_nngp.frontend.graph_modules",
           "gpytorch_nngp.predict.ensemble", "gpytorch_nngp.predict.inference", "gpytorch_nngp.predict.linearized",
           "gpytorch_nngp.predict.ode"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    import gpytorch_nngp

    globs = {"NTKKernel": gpytorch_nngp.NTKKernel, "NNGPKernel": gpytorch_nngp.NNGPKernel}
    result = doctest.testmod(module, extraglobs=globs, optionflags=doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"
    assert result.attempted > 0, f"{name} has no example"


def test_every_public_kernel_module_and_predict_function_has_an_example():
    import gpytorch_nngp
    from gpytorch_nngp import predict

    names = [getattr(gpytorch_nngp, n) for n in ("NNGPKernel", "NTKKernel", "ArchitectureKernel", "GraphNodeKernel",
                                               "Residual", "Parallel", "SelfAttention", "Elementwise", "Aggregate",
                                               "GraphNetwork")]
    names += [getattr(predict, n) for n in predict.__all__ if n != "Gaussian"]
    missing = [obj.__name__ for obj in names if ">>>" not in (obj.__doc__ or "")]
    assert not missing, f"no Example in the docstring of {missing}"
