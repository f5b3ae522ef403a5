"""The NNGP paper's figures as commands (exact NNGP classifier on mnist5k or digits), written as PNGs.

    python -m gpytorch_nngp.experiments calibration [--dataset mnist5k --n-train 1000] --out calibration.png
    python -m gpytorch_nngp.experiments grid [--depth 3 --grid-size 8] --out grid.png [--json grid.json]

calibration: predicted variance against realized squared error, in bins of equal count (the paper's uncertainty
figure). Under a calibrated Gaussian posterior the points lie on the diagonal.

grid: validation accuracy over a (weight_var, bias_var) grid at a fixed depth (the paper's phase-diagram style
figure), next to the log marginal likelihood on the same grid. The point picked by each criterion is marked, and
its test accuracy is reported (the paper's grid search against marginal-likelihood selection). The validation set
is the first 1,000 points of the held-out pool; the test set is the rest.
"""
from __future__ import annotations

import argparse
import json
import math

import torch

from ..models import ExactNNGPClassifier, load_dataset, shifted_one_hot
from .arguments import (
    add_data_arguments,
    add_network_arguments,
    add_progress_argument,
    network_kernel,
    positive_float,
    positive_int,
)


def add_calibration_arguments(parser: argparse.ArgumentParser) -> None:
    add_data_arguments(parser)
    add_network_arguments(parser)
    parser.add_argument("--bins", type=positive_int, default=20, help="bins of equal count")
    parser.add_argument("--out", required=True, help="PNG path")


def add_grid_arguments(parser: argparse.ArgumentParser) -> None:
    add_data_arguments(parser)
    add_network_arguments(parser, variances=False)
    add_progress_argument(parser)
    parser.add_argument("--out", required=True, help="PNG path")
    parser.add_argument("--grid-size", type=positive_int, default=8, help="points per axis")
    parser.add_argument("--weight-var-range", type=positive_float, nargs=2, default=(0.5, 5.0), help="linear grid")
    parser.add_argument("--bias-var-range", type=positive_float, nargs=2, default=(0.01, 2.0), help="log grid")
    parser.add_argument("--json", default=None, help="also write the grid values as JSON")


def calibration(args) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x, y, x_test, y_test = load_dataset(args.dataset, args.n_train, args.seed)
    clf = ExactNNGPClassifier(network_kernel(args, args.weight_var, args.bias_var)).fit(x, y)
    mean, variance = clf.predict(x_test)
    err = ((mean - shifted_one_hot(y_test, 10, mean.dtype)) ** 2).mean(-1)  # per point, averaged over outputs
    order = torch.argsort(variance)
    bins = torch.tensor_split(order, args.bins)
    pred = torch.stack([variance[b].mean() for b in bins])
    real = torch.stack([err[b].mean() for b in bins])
    correlation = torch.corrcoef(torch.stack((pred, real)))[0, 1].item()
    fig, ax = plt.subplots(figsize=(4.8, 4.2))
    ax.plot(pred, real, "o-", label=f"{args.bins} bins of {len(bins[0])} test points")
    lims = [0, max(pred.max().item(), real.max().item()) * 1.05]
    ax.plot(lims, lims, "k--", lw=1, label="calibrated")
    ax.set_xlabel("predicted variance of f")
    ax.set_ylabel("realized mean squared error")
    ax.set_title(f"{args.dataset}:{args.n_train}, depth {args.depth} {args.kernel.upper()} (r = {correlation:.3f})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    plt.close(fig)
    print(f"calibration: correlation of predicted variance and realized error over bins {correlation:.3f}; "
          f"wrote {args.out}")
    return {"predicted": pred.tolist(), "realized": real.tolist(), "correlation": correlation}


def grid(args) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from tqdm.auto import tqdm

    x, y, x_pool, y_pool = load_dataset(args.dataset, args.n_train, args.seed)
    n_val = min(1000, len(y_pool) // 2)
    x_val, y_val, x_test, y_test = x_pool[:n_val], y_pool[:n_val], x_pool[n_val:], y_pool[n_val:]
    wvs = torch.linspace(*args.weight_var_range, args.grid_size).tolist()
    low, high = (math.log10(b) for b in args.bias_var_range)
    bvs = torch.logspace(low, high, args.grid_size).tolist()
    accuracy = torch.zeros(len(bvs), len(wvs))
    evidence = torch.zeros(len(bvs), len(wvs))
    for i, bv in enumerate(tqdm(bvs, desc="grid rows", disable=args.no_progress)):
        for j, wv in enumerate(wvs):
            clf = ExactNNGPClassifier(network_kernel(args, wv, bv), noise=1e-3).fit(x, y)  # one factor for both
            evidence[i, j] = clf.fitted_log_marginal_likelihood
            mean, _ = clf.predict(x_val, variance=False)
            accuracy[i, j] = (mean.argmax(-1) == y_val).double().mean()

    def test_accuracy(i, j):
        clf = ExactNNGPClassifier(network_kernel(args, wvs[j], bvs[i]), noise=1e-3).fit(x, y)
        return (clf.predict(x_test)[0].argmax(-1) == y_test).double().mean().item()

    best_val = divmod(int(accuracy.argmax()), len(wvs))
    best_ml = divmod(int(evidence.argmax()), len(wvs))
    result = {
        "weight_var": wvs, "bias_var": bvs, "validation_accuracy": accuracy.tolist(),
        "log_marginal_likelihood_per_point": evidence.tolist(),
        "by_validation": {"weight_var": wvs[best_val[1]], "bias_var": bvs[best_val[0]],
                          "test_accuracy": test_accuracy(*best_val)},
        "by_marginal_likelihood": {"weight_var": wvs[best_ml[1]], "bias_var": bvs[best_ml[0]],
                                   "test_accuracy": test_accuracy(*best_ml)},
    }
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.3))
    for ax, values, title, best in ((axes[0], accuracy, "validation accuracy", best_val),
                                    (axes[1], evidence, "log marginal likelihood / n", best_ml)):
        image = ax.imshow(values, origin="lower", aspect="auto", cmap="viridis",
                          extent=(wvs[0], wvs[-1], 0, len(bvs)))
        ax.set_yticks([k + 0.5 for k in range(len(bvs))], [f"{b:.2g}" for b in bvs])
        ax.plot(wvs[best[1]], best[0] + 0.5, "r*", ms=14)
        ax.set_xlabel("weight_var")
        ax.set_ylabel("bias_var")
        ax.set_title(f"{title}, depth {args.depth}")
        fig.colorbar(image, ax=ax)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    plt.close(fig)
    for key in ("by_validation", "by_marginal_likelihood"):
        r = result[key]
        print(f"{key:24s} weight_var {r['weight_var']:.3f} bias_var {r['bias_var']:.3f} test accuracy "
              f"{r['test_accuracy']:.4f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result
