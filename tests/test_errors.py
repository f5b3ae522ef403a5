"""Bad input raises a clear ValueError/TypeError naming the argument."""
import pytest
import torch

from gpytorch_nngp import NNGPKernel, NTKKernel, activations


@pytest.mark.parametrize("depth, exc", [(-1, ValueError), (1.5, TypeError), ("2", TypeError), (True, TypeError)])
def test_bad_depth(depth, exc):
    with pytest.raises(exc, match="depth"):
        NNGPKernel(depth)


@pytest.mark.parametrize("name", ["weight_var", "bias_var"])
@pytest.mark.parametrize("value", [0.0, -1.0, float("nan"), float("inf"), torch.tensor([1.0, -2.0])])
def test_non_positive_variances(name, value):
    with pytest.raises(ValueError, match=name):
        NTKKernel(1, **{name: value})
    k = NNGPKernel(1)
    with pytest.raises(ValueError, match=name):
        setattr(k, name, value)


def test_variance_wrong_type():
    with pytest.raises(TypeError, match="weight_var"):
        NNGPKernel(1, weight_var="big")


def test_unknown_activation_lists_known_names():
    with pytest.raises(ValueError, match="unknown activation 'relu6'.*known names"):
        NNGPKernel(1, "relu6")
    with pytest.raises(TypeError, match="activation"):
        NNGPKernel(1, activation=3)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_inf_inputs(bad):
    x = torch.randn(5, 3)
    x[2, 1] = bad
    with pytest.raises(ValueError, match="x1 contains NaN or inf"):
        NNGPKernel(1)(x).to_dense()
    with pytest.raises(ValueError, match="x2 contains NaN or inf"):
        NNGPKernel(1)(torch.randn(4, 3), x).to_dense()


def test_mismatched_feature_dimensions():
    with pytest.raises(ValueError, match="same number of features"):
        NNGPKernel(1)(torch.randn(4, 3), torch.randn(5, 4)).to_dense()


def test_empty_and_wrong_rank_inputs():
    k = NNGPKernel(1)
    with pytest.raises(ValueError, match="empty"):
        k.forward(torch.randn(0, 3), torch.randn(0, 3))
    with pytest.raises(ValueError, match=r"\(\.\.\., n, d\)"):
        k.forward(torch.randn(3), torch.randn(3))
    with pytest.raises(TypeError, match="floating point"):
        k.forward(torch.ones(3, 2, dtype=torch.long), torch.ones(3, 2, dtype=torch.long))


def test_numerical_activation_must_be_finite_and_elementwise():
    with pytest.raises(ValueError, match="NaN/inf"):
        NNGPKernel(1, torch.log)(torch.randn(4, 3)).to_dense()
    with pytest.raises(ValueError, match="elementwise"):
        NNGPKernel(1, lambda x: x.sum(-1))(torch.randn(4, 3)).to_dense()


def test_bad_activation_parameters():
    with pytest.raises(TypeError, match="slope"):
        activations.LeakyReLU("x")
    with pytest.raises(ValueError, match="num_nodes"):
        activations.Numerical(torch.tanh, num_nodes=1000)


def test_mixed_dtypes_and_module_classes_are_named():
    with pytest.raises(TypeError, match="x1 and x2 must have the same dtype, got torch.float64 and torch.float32"):
        NNGPKernel(1).double()(torch.randn(4, 3, dtype=torch.float64), torch.randn(5, 3)).to_dense()
    with pytest.raises(TypeError, match=r"module class torch.nn.modules.activation.ReLU.*instantiate it \(ReLU\(\)\)"):
        NNGPKernel(1, torch.nn.ReLU)
    # an instance is an elementwise callable and works (numerically; the kink at 0 is split off exactly)
    x = torch.randn(5, 3, dtype=torch.float64)
    closed = NNGPKernel(2, "relu").double()(x).to_dense()
    from_module = NNGPKernel(2, torch.nn.ReLU()).double()(x).to_dense()
    assert torch.allclose(closed, from_module, rtol=1e-7)


def test_keops_backend_imports_quietly_on_cpu():
    """pykeops' "CUDA libraries not found" line is not printed when the package is imported without a GPU."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", "import gpytorch_nngp"], capture_output=True, text=True,
                         env={k: v for k, v in __import__("os").environ.items() if k != "KEOPS_VERBOSE"})
    assert out.returncode == 0, out.stderr
    if not torch.cuda.is_available():
        assert "CUDA libraries not found" not in out.stdout + out.stderr
