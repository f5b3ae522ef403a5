"""The models, the DNN2GP kernels and the command line reject bad input with a message that names the argument and
the fix, instead of a raw torch error, a hang or a silently different experiment."""
import pytest
import torch
from torch import nn

from gpytorch_nngp import NNGPKernel, NTKKernel
from gpytorch_nngp.dnn2gp import FiniteNTKKernel
from gpytorch_nngp.experiments.__main__ import main as experiments_main
from gpytorch_nngp.models import ExactNNGPClassifier, SVGPClassifier, SVGPRegressor, train_svgp


def data(n=12, d=3, classes=3):
    gen = torch.Generator().manual_seed(0)
    return torch.randn(n, d, generator=gen, dtype=torch.float64), torch.arange(n) % classes


# -- ExactNNGPClassifier ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, match", [
    ({"relative_jitter": -1e-3}, "relative_jitter"), ({"relative_jitter": 0.0}, "relative_jitter"),
    ({"relative_jitter": float("nan")}, "relative_jitter"), ({"noise": float("inf")}, "noise"),
    ({"noise": -1.0}, "noise"), ({"num_classes": 1}, "num_classes"),
])
def test_exact_classifier_rejects_bad_noise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ExactNNGPClassifier(NNGPKernel(1).double(), **kwargs)


def test_exact_classifier_rejects_bad_labels_and_order():
    x, y = data()
    clf = ExactNNGPClassifier(NNGPKernel(1).double(), num_classes=3)
    with pytest.raises(RuntimeError, match=r"call fit\(x, y\) first"):
        clf.predict(x)
    with pytest.raises(TypeError, match="integer class labels.*y.long"):
        clf.fit(x, y.double())
    with pytest.raises(ValueError, match=r"labels must lie in 0 .. 2.*from 0 to 3"):
        clf.fit(x, torch.where(y == 2, 3, y))
    with pytest.raises(ValueError, match=r"labels must lie in 0 .. 2"):
        clf.fit(x, y - 1)
    with pytest.raises(ValueError, match="same number of points, got 12 and 11"):
        clf.fit(x, y[:-1])
    with pytest.raises(ValueError, match="same number of points"):
        clf.learn_hyperparameters(x, y[:-1], iters=1, progress=False)
    with pytest.raises(ValueError, match="iters must be >= 1"):
        clf.learn_hyperparameters(x, y, iters=0, progress=False)
    clf.fit(x, y)
    with pytest.raises(ValueError, match=r"x must have shape \(m, 3\)"):
        clf.predict(torch.randn(4, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        clf.predict(x, batch_size=0)


# -- SVGP ---------------------------------------------------------------------------------------------------------
def test_svgp_models_reject_bad_targets_and_counts():
    x, y = data()
    clf = SVGPClassifier(NNGPKernel(1), x[:4].clone(), num_classes=3).double()
    with pytest.raises(ValueError, match=r"y must have shape \(n,\).*y.squeeze\(-1\)"):
        train_svgp(clf, x, y.unsqueeze(-1), epochs=1, progress=False)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        train_svgp(clf, x, y, epochs=1, batch_size=0, progress=False)
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        train_svgp(clf, x, y, epochs=0, progress=False)
    with pytest.raises(ValueError, match="lr must be finite and > 0"):
        train_svgp(clf, x, y, epochs=1, lr=0.0, progress=False)
    with pytest.raises(ValueError, match=r"labels must lie in 0 .. 2"):
        train_svgp(clf, x, y + 1, epochs=1, progress=False)
    with pytest.raises(ValueError, match="inducing_points"):
        SVGPClassifier(NNGPKernel(1), x[0], num_classes=3)
    reg = SVGPRegressor(NNGPKernel(1), x[:4].clone()).double()
    with pytest.raises(ValueError, match=r"y must have shape \(n,\)"):
        train_svgp(reg, x, x[:, :1], epochs=1, progress=False)
    assert len(train_svgp(reg, x, x[:, 0], epochs=1, progress=False)) == 1


# -- kernels: active_dims, batch shapes, NTK of a function without a gradient ------------------------------------
@pytest.mark.parametrize("make", [
    lambda **kw: NNGPKernel(1, **kw),
    lambda **kw: NTKKernel.from_module(nn.Sequential(nn.Conv1d(1, 2, 2), nn.ReLU(), nn.Flatten(), nn.Linear(4, 1)),
                                       (1, 3), **kw),
    lambda **kw: FiniteNTKKernel(nn.Linear(3, 1), **kw),
])
def test_kernels_reject_bad_active_dims_and_batch_shapes(make):
    x = torch.randn(5, 3)
    with pytest.raises(ValueError, match=r"active_dims \[0, 5\] select columns \[5\]"):
        make(active_dims=torch.tensor([0, 5]))(x).to_dense()
    with pytest.raises(ValueError, match=r"batch shapes \(2,\) and \(3,\), which do not broadcast"):
        make()(torch.randn(2, 5, 3), torch.randn(3, 4, 3)).to_dense()
    with pytest.raises(ValueError, match=r"batch_shape \(2,\) but the inputs have batch shape \(3,\)"):
        make(batch_shape=torch.Size([2]))(torch.randn(3, 5, 3)).to_dense()


def test_the_ntk_of_an_activation_without_a_gradient_says_so():
    with pytest.raises(ValueError, match="has no gradient.*use 'sign'"):
        NTKKernel(1, lambda x: (x > 0).to(x.dtype))(torch.randn(4, 3)).to_dense()
    NNGPKernel(1, lambda x: (x > 0).to(x.dtype))(torch.randn(4, 3)).to_dense()  # the NNGP needs no gradient


@pytest.mark.parametrize("layer", [nn.Dropout(0.1), nn.BatchNorm1d(8)])
def test_dnn2gp_asks_for_eval_mode(layer):
    from gpytorch_nngp.dnn2gp import DNN2GP

    model = nn.Sequential(nn.Linear(3, 8), layer, nn.ReLU(), nn.Linear(8, 1)).double()
    model.train()
    with pytest.raises(ValueError, match=r"training mode, where 1 \(.*\).*call model.eval\(\)"):
        FiniteNTKKernel(model)
    with pytest.raises(ValueError, match=r"call model.eval\(\)"):
        DNN2GP(model).fit(*data(d=3))
    model.eval()
    kernel = FiniteNTKKernel(model)
    model.train()  # switched back after the kernel was built: caught when the kernel is evaluated
    with pytest.raises(ValueError, match=r"call model.eval\(\)"):
        kernel(torch.randn(4, 3, dtype=torch.float64)).to_dense()


# -- the command line -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv", [
    ["classify", "--iters", "0"], ["classify", "--epochs", "0"], ["classify", "--batch-size", "0"],
    ["classify", "--inducing", "-3"], ["classify", "--n-train", "0"], ["classify", "--depth", "-1"],
    ["classify", "--weight-var", "-2"], ["classify", "--lr", "0"], ["calibration", "--out", "x.png", "--bins", "0"],
    ["grid", "--out", "x.png", "--grid-size", "0"], ["finite-width", "--widths", "64", "0"],
    ["finite-width", "--epochs", "0"],
])
def test_command_line_rejects_non_positive_counts(argv, capsys):
    with pytest.raises(SystemExit) as stop:
        experiments_main(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "must be >= 1" in err or "must be >= 0" in err or "must be finite and > 0" in err, err


def test_classify_keeps_every_class_of_the_data_set(tmp_path, capsys, monkeypatch):
    """Five training points cannot hold all ten classes; the SVGP still has ten outputs (it once shrank to the
    training split's largest label, and test labels past it were then out of range). A small stand-in split keeps
    the test fast; the command is the real one."""
    from gpytorch_nngp.experiments import classify

    gen = torch.Generator().manual_seed(0)
    split = (torch.rand(5, 64, generator=gen, dtype=torch.float64), torch.arange(5),
             torch.rand(20, 64, generator=gen, dtype=torch.float64), torch.arange(20) % 10)
    monkeypatch.setattr(classify, "load_dataset", lambda name, n_train, seed: split)
    result = experiments_main(["classify", "--dataset", "digits", "--n-train", "5", "--model", "svgp", "--epochs",
                               "1", "--inducing", "5", "--no-progress", "--out", str(tmp_path / "r.json")])
    assert "classes [5, 6, 7, 8, 9] have no training point" in capsys.readouterr().err
    assert 0.0 <= result["accuracy"] <= 1.0

