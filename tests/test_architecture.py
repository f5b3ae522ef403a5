"""Architecture kernels (from_module): backends agree, diag is exact, gradients are finite where the closed forms are
singular, the fully connected case equals NNGPKernel, and every bad input gets a clear error."""
import gpytorch
import pytest
import torch
from torch import nn

from gpytorch_nngp import ArchitectureKernel, Elementwise, NNGPKernel, NTKKernel, Parallel, Residual, SelfAttention
from gpytorch_nngp.backends import NetworkKernelOperator
from gpytorch_nngp.backends.tiling import NetworkEvaluator, architecture_matrix
from gpytorch_nngp.frontend.translate import network_from_module


def pooled():
    branch = nn.Sequential(nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1))
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), Residual(branch),
                         nn.ReLU(), nn.AvgPool2d(2), nn.Conv2d(4, 4, 3, padding="same"), Elementwise("erf"),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 1))


def flattened():
    return nn.Sequential(nn.Conv2d(1, 4, 3, stride=2), nn.ReLU(),
                         nn.Conv2d(4, 4, 3, padding=1, padding_mode="circular"),
                         nn.ReLU(), nn.Flatten(), nn.Linear(16, 1))


SHAPE = (1, 6, 6)
SHARED_CONV = nn.Conv2d(4, 4, 1)
SHARED_ATTENTION = SelfAttention(4, 4)


def points(n=7, seed=0):
    x = torch.randn(n, 36, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x[1] = x[0]  # duplicate
    x[2] = 0.0  # zero input
    x[3] = -x[4]  # antiparallel
    return x


@pytest.mark.parametrize("make", [pooled, flattened])
@pytest.mark.parametrize("cls", [NNGPKernel, NTKKernel])
def test_lazy_and_tiled_equal_dense(make, cls):
    dense = cls.from_module(make(), SHAPE, backend="dense").double()
    lazy = cls.from_module(make(), SHAPE, backend="lazy").double()
    x, y = points(), points(5, seed=1)
    with torch.no_grad():
        k = dense(x).to_dense()
        op = lazy(x).evaluate_kernel()
        assert isinstance(op, NetworkKernelOperator) and isinstance(op.evaluator, NetworkEvaluator)
        torch.testing.assert_close(op.to_dense(), k, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(lazy(x, y).to_dense(), dense(x, y).to_dense(), rtol=1e-12, atol=1e-12)
        rhs = torch.randn(7, 2, dtype=torch.float64)
        torch.testing.assert_close(op @ rhs, k @ rhs, rtol=1e-10, atol=1e-10)
        assert torch.equal(dense(x, diag=True), k.diagonal())
        # Tiles of 3 pairs (one row, three columns at a time) give the same matrix.
        net, wv, bv = dense.network, dense.weight_var, dense.bias_var
        tiled = architecture_matrix(net, x, x, wv, bv, dense.ntk, x1_eq_x2=True,
                                    budget=3 * net.entries_per_pair * 8 * 8)
        torch.testing.assert_close(tiled, k, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", ["dense", "lazy"])
def test_gradients_finite_at_duplicate_zero_and_antiparallel_inputs(backend):
    kernel = NTKKernel.from_module(pooled(), SHAPE, backend=backend).double()
    x = points().requires_grad_(True)
    rhs = torch.randn(7, 1, dtype=torch.float64)
    loss = (kernel(x) @ rhs).sum() + kernel(x, diag=True).sum()
    loss.backward()
    for g in (x.grad, kernel.raw_weight_var.grad, kernel.raw_bias_var.grad):
        assert g is not None and torch.isfinite(g).all()


def test_lazy_gradients_equal_dense_gradients():
    grads = []
    for backend in ("dense", "lazy"):
        kernel = NTKKernel.from_module(flattened(), SHAPE, backend=backend).double()
        x = points(6, seed=3).requires_grad_(True)
        rhs = torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        (kernel(x) @ rhs).pow(2).sum().backward()
        grads.append((x.grad, kernel.raw_weight_var.grad, kernel.raw_bias_var.grad))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


def test_gradcheck_variances_and_inputs():
    network = network_from_module(flattened(), SHAPE, per_layer=True)
    x = torch.randn(3, 36, dtype=torch.float64, requires_grad=True)
    wv = torch.tensor([1.3, 2.0, 0.7], dtype=torch.float64, requires_grad=True)
    bv = torch.tensor([0.1, 0.3, 0.2], dtype=torch.float64, requires_grad=True)

    def f(x, wv, bv):
        return architecture_matrix(network, x, x.flip(0), wv, bv, ntk=True)

    assert torch.autograd.gradcheck(f, (x, wv, bv))


def test_per_layer_variances():
    shared = NNGPKernel.from_module(flattened(), SHAPE, weight_var=1.5, bias_var=0.2).double()
    per = NNGPKernel.from_module(flattened(), SHAPE, weight_var=1.5, bias_var=0.2, per_layer=True).double()
    assert per.weight_var.shape == (3,) and shared.weight_var.shape == (1,)
    x = points()
    with torch.no_grad():
        torch.testing.assert_close(per(x).to_dense(), shared(x).to_dense(), rtol=1e-13, atol=1e-13)
        per.weight_var = torch.tensor([1.5, 1.5, 3.0])
        assert not torch.allclose(per(x).to_dense(), shared(x).to_dense())
    with pytest.raises(ValueError, match="weight_var must be one value or 3 values"):
        per.weight_var = torch.ones(2)


@pytest.mark.parametrize("cls", [NNGPKernel, NTKKernel])
def test_mlp_is_the_fully_connected_kernel(cls):
    mlp = nn.Sequential(nn.Linear(5, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))
    kernel = cls.from_module(mlp, (5,), weight_var=1.7, bias_var=0.3).double()
    assert type(kernel) is cls and kernel.depth == 2
    general = ArchitectureKernel(network_from_module(mlp, (5,)), ntk=cls is NTKKernel, weight_var=1.7,
                                 bias_var=0.3).double()
    x = torch.randn(6, 5, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(general(x).to_dense(), kernel(x).to_dense(), rtol=1e-12, atol=1e-12)
    # Without a bias somewhere it is no longer NNGPKernel's network, and stays an ArchitectureKernel.
    mlp[2].bias = None
    assert isinstance(cls.from_module(mlp, (5,)), ArchitectureKernel)


def test_exact_gp_training_step_and_batch_shape():
    x, y = points(12, seed=4), torch.randn(12, dtype=torch.float64)

    class GP(gpytorch.models.ExactGP):
        def __init__(self):
            likelihood = gpytorch.likelihoods.GaussianLikelihood()
            super().__init__(x, y, likelihood)
            self.mean_module = gpytorch.means.ZeroMean()
            self.covar_module = gpytorch.kernels.ScaleKernel(NNGPKernel.from_module(pooled(), SHAPE))

        def forward(self, z):
            return gpytorch.distributions.MultivariateNormal(self.mean_module(z), self.covar_module(z))

    model = GP().double()
    mll = gpytorch.mlls.ExactMarginalLogLikelihood(model.likelihood, model)
    model.train()
    loss = -mll(model(x), y)
    loss.backward()
    assert torch.isfinite(model.covar_module.base_kernel.raw_weight_var.grad).all()
    model.eval()
    with torch.no_grad():
        pred = model.likelihood(model(points(5, seed=5)))
    assert torch.isfinite(pred.mean).all() and (pred.variance > 0).all()

    batched = NNGPKernel.from_module(flattened(), SHAPE, batch_shape=torch.Size([2])).double()
    batched.weight_var = torch.tensor([[1.0], [2.0]])
    with torch.no_grad():
        k = batched(x).to_dense()
        single = NNGPKernel.from_module(flattened(), SHAPE, weight_var=2.0).double()(x).to_dense()
    assert k.shape == (2, 12, 12)
    torch.testing.assert_close(k[1], single)


# -- errors --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("module, shape, match", [
    (nn.Sequential(nn.Conv2d(1, 4, 3), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4, 1)), SHAPE,
     r"1 \(MaxPool2d\) has no infinite-width Gaussian limit.*nn.AvgPool"),
    (nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 1)), SHAPE,
     "BatchNorm2d.*LayerNorm"),
    (nn.Sequential(nn.Conv1d(1, 4, 3), SelfAttention(4, 4, scaling="standard"), nn.Flatten(), nn.Linear(4, 1)),
     (1, 6), "scaling='standard'.*no closed form.*use scaling='linear'"),
    (nn.Sequential(nn.Conv1d(1, 4, 3), SHARED_ATTENTION, SHARED_ATTENTION, nn.Flatten(), nn.Linear(4, 1)), (1, 6),
     "is used more than once: give each attention layer its own module"),
    (nn.Sequential(nn.Linear(6, 4), SelfAttention(4, 4), nn.Linear(4, 1)), (6,), "self-attention needs inputs with "
     "positions"),
    (nn.Sequential(nn.Conv1d(1, 4, 3), SelfAttention(5, 4), nn.Flatten(), nn.Linear(4, 1)), (1, 6),
     "SelfAttention with in_channels=5 gets an input of shape"),
    (nn.Sequential(nn.Conv1d(1, 4, 3), nn.MultiheadAttention(4, 1)), (1, 6),
     "MultiheadAttention.*1 / sqrt\\(d\\).*gpytorch_nngp.SelfAttention"),
    (nn.Sequential(nn.Conv2d(1, 4, 3), Parallel(nn.Identity(), nn.ReLU()), nn.Flatten(), nn.Linear(4, 1)), SHAPE,
     r"branches \[0, 1\] of a sum do not end in a Linear/Conv layer"),
    (nn.Sequential(nn.Conv2d(1, 4, 3), Parallel(SHARED_CONV, nn.Sequential(nn.ReLU(), SHARED_CONV)), nn.Flatten(),
                   nn.Linear(4, 1)), SHAPE, "branches 0 and 1 use the same Conv2d module"),
    (nn.Sequential(nn.Conv2d(1, 4, 3), Parallel(nn.Conv2d(4, 4, 3), nn.Conv2d(4, 4, 1)), nn.Flatten(),
                   nn.Linear(4, 1)), SHAPE, "branches of a sum end in different shapes"),
    (nn.Sequential(nn.Conv2d(1, 4, 3), Parallel(nn.Sequential(nn.ReLU(inplace=True), nn.Conv2d(4, 4, 1)),
                                                nn.Conv2d(4, 4, 1)), nn.Flatten(), nn.Linear(4, 1)), SHAPE,
     r"ReLU\(inplace=True\) in branch 0 overwrites the input"),
    (nn.Sequential(nn.Conv2d(1, 4, 3), Parallel(nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1), merge="concat"),
                   nn.LayerNorm([8, 4, 4], elementwise_affine=False), nn.Flatten(), nn.Linear(128, 1)), SHAPE,
     "LayerNorm has an infinite-width limit only on Gaussian inputs"),
    (nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4, 1), nn.Softmax(-1)), SHAPE, "Softmax.*not supported"),
    (nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, padding_mode="reflect"), nn.Flatten(), nn.Linear(4, 1)), SHAPE,
     "padding_mode='reflect'.*'zeros' or 'circular'"),
    (nn.Sequential(nn.Conv2d(1, 4, 3, dilation=2), nn.Flatten(), nn.Linear(4, 1)), SHAPE, "dilation"),
    (nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU()), SHAPE, "output still has spatial shape 4x4.*readout"),
    (nn.Sequential(nn.Conv2d(1, 4, 3), nn.Linear(4, 1)), SHAPE, r"1 \(Linear\): a dense layer needs a flat input"),
    (nn.Sequential(nn.Conv1d(1, 4, 3), nn.Flatten(), nn.Linear(4, 1)), SHAPE,
     r"1-d convolution got an input of shape \(1, 6, 6\)"),
    (nn.Sequential(nn.Conv2d(1, 4, 7), nn.Flatten(), nn.Linear(4, 1)), SHAPE, "kernel size 7 .* does not fit"),
    (nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.LayerNorm([4, 4, 4], elementwise_affine=False), nn.Flatten(),
                   nn.Linear(4, 1)), SHAPE, "LayerNorm has an infinite-width limit only on Gaussian inputs"),
    (nn.Sequential(nn.Conv2d(1, 4, 3), nn.LayerNorm([4, 4, 4]), nn.Flatten(), nn.Linear(4, 1)), SHAPE,
     "elementwise_affine=True"),
    (nn.Sequential(nn.Conv2d(1, 4, 3), nn.LayerNorm([4], elementwise_affine=False), nn.Flatten(), nn.Linear(4, 1)),
     SHAPE, "must normalize over all features"),
    (nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), Residual(nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())),
                   nn.Flatten(), nn.Linear(4, 1)), SHAPE, "residual branch must end in a Linear or Conv"),
    (nn.Sequential(nn.Conv2d(1, 4, 3), Residual(nn.Conv2d(4, 4, 3)), nn.Flatten(), nn.Linear(4, 1)), SHAPE,
     "residual branch must keep the shape of its input"),
    (nn.Sequential(nn.ReLU(), nn.Flatten()), SHAPE, "no Linear or Conv layer"),
    (flattened(), (1, 0, 6), "input_shape must be"),
    (nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(4, 1)), SHAPE, "only output_size=1"),
])
def test_unsupported_modules_and_shapes_are_named(module, shape, match):
    with pytest.raises(ValueError, match=match):
        NNGPKernel.from_module(module, shape)


def test_bad_inputs_are_named():
    kernel = NNGPKernel.from_module(flattened(), SHAPE)
    with pytest.raises(ValueError, match=r"x1 must have shape \(\.\.\., n, 36\) for input_shape \(1, 6, 6\)"):
        kernel(torch.randn(4, 35))
    with pytest.raises(ValueError, match="x2 must have shape"):
        kernel(torch.randn(4, 36), torch.randn(3, 49))
    x = torch.randn(4, 36)
    x[1, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        kernel(x).to_dense()
    with pytest.raises(ValueError, match="weight_var"):
        NNGPKernel.from_module(flattened(), SHAPE, weight_var=-1.0)
    with pytest.raises(ValueError, match="backend='keops' is not available for architecture kernels"):
        NNGPKernel.from_module(flattened(), SHAPE, backend="keops")
    with pytest.raises(TypeError, match="input_shape must be a tuple of ints"):
        NNGPKernel.from_module(flattened(), 36)
    with pytest.raises(TypeError, match="must be a torch.nn.Module"):
        NNGPKernel.from_module(lambda x: x, SHAPE)
    with pytest.raises(TypeError, match="Residual needs a torch.nn.Module as its branch"):
        Residual(lambda x: x)
    with pytest.raises(ValueError, match="merge must be one of 'sum', 'concat', 'prod', got 'max'"):
        Parallel(nn.Identity(), merge="max")
    for bad, match in ((dict(mechanism="sigmoid"), "mechanism must be one of 'softmax'"),
                       (dict(positional="sum"), "positional embeddings need spatial_shape"),
                       (dict(key_var=-1.0), "key_var must be a finite variance"),
                       (dict(heads=0), "heads must be a positive int"),
                       (dict(scaling="sqrt"), "scaling must be 'linear' or 'standard'")):
        with pytest.raises(ValueError, match=match):
            SelfAttention(4, 4, **bad)
    with pytest.raises(TypeError, match="Parallel needs torch.nn.Modules as branches"):
        Parallel(nn.Identity(), lambda x: x)
    with pytest.raises(ValueError, match="unknown activation 'erff'"):
        Elementwise("erff")
    with pytest.raises(TypeError, match="network must be a gpytorch_nngp.algebra.Network.*from_module"):
        ArchitectureKernel(flattened())


@pytest.mark.parametrize("make", [pooled, flattened])
def test_inplace_inference_equals_autograd_path(make):
    """Without autograd the tiles recycle buffers and update in place; with it they do not: same values."""
    kernel = NTKKernel.from_module(make(), SHAPE, backend="dense").double()
    x = points()
    with torch.no_grad():
        fast = kernel(x).to_dense()
    graph = kernel(x).to_dense()
    assert graph.requires_grad
    torch.testing.assert_close(fast, graph.detach(), rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("backend", ["dense", "lazy"])
def test_expanded_batch_is_evaluated_once(backend, monkeypatch):
    """Inputs repeated along a batch dimension (stride 0, as GPyTorch's variational strategies pass them) give the
    repeated matrix, computed once rather than once per batch member."""
    kernel = NNGPKernel.from_module(flattened(), SHAPE, backend=backend).double()
    x = points()
    calls = []
    network = kernel.network
    original = network.matrix
    monkeypatch.setattr(network, "matrix", lambda x1, *a, **k: calls.append(x1.shape) or original(x1, *a, **k))
    with torch.no_grad():
        single = kernel(x).to_dense()
        calls.clear()
        repeated = kernel(x.expand(10, *x.shape)).to_dense()
        diag = kernel(x.expand(10, *x.shape), diag=True)
    assert repeated.shape == (10, 7, 7) and diag.shape == (10, 7)
    torch.testing.assert_close(repeated, single.expand(10, 7, 7))
    torch.testing.assert_close(diag, single.diagonal().expand(10, 7))
    assert calls and all(len(shape) == 2 or shape[0] == 1 for shape in calls)  # never 10 evaluations
    # Real copies that need no gradient are recognized by value (GPyTorch's variational strategies make them).
    calls.clear()
    with torch.no_grad():
        copies = kernel.forward(x.repeat(10, 1, 1), x.repeat(10, 1, 1))
    torch.testing.assert_close(copies.to_dense(), single.expand(10, 7, 7))
    assert calls and all(len(shape) == 2 or shape[0] == 1 for shape in calls)


def test_active_dims_copy_and_pickle():
    """active_dims selects the image's columns from wider inputs; deep copies and pickles give the same kernel."""
    import copy
    import pickle

    kernel = NNGPKernel.from_module(pooled(), SHAPE, active_dims=torch.arange(2, 38)).double()
    wide = torch.cat([torch.randn(7, 2, dtype=torch.float64), points()], dim=-1)
    plain = NNGPKernel.from_module(pooled(), SHAPE).double()
    with torch.no_grad():
        torch.testing.assert_close(kernel(wide).to_dense(), plain(points()).to_dense())
        for other in (copy.deepcopy(plain), pickle.loads(pickle.dumps(plain))):
            torch.testing.assert_close(other(points()).to_dense(), plain(points()).to_dense())
    with pytest.raises(ValueError, match="after active_dims selects 30 columns"):
        NNGPKernel.from_module(pooled(), SHAPE, active_dims=torch.arange(30))(torch.randn(3, 40))


def test_dropout_is_the_identity_of_evaluation_mode():
    """nn.Dropout (any variant) is the identity in evaluation mode, which is the network the kernel describes."""
    plain = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(64, 1))
    dropped = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Dropout2d(0.2), nn.ReLU(), nn.Dropout(0.5), nn.Flatten(),
                            nn.Linear(64, 1))
    x = points()
    with torch.no_grad():
        torch.testing.assert_close(NTKKernel.from_module(dropped, SHAPE).double()(x).to_dense(),
                                   NTKKernel.from_module(plain, SHAPE).double()(x).to_dense(), rtol=0, atol=0)
