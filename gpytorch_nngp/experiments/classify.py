"""Classification experiments: exact NNGP regression-on-labels (the paper) or an SVGP with a softmax likelihood.

    python -m gpytorch_nngp.experiments classify --dataset {mnist5k,digits,fashion-mnist} --model {exact,svgp}
        --n-train N
        --seed S [--kernel nngp|ntk] [--architecture mlp|cnn --readout flatten|gap]
        [--depth L --weight-var V --bias-var B] [--learn-hyperparameters]
        [--inducing M --epochs E --lr A --ngd-lr G] --out results.json

--architecture cnn is the CNN-GP of --depth 3x3 "same" conv layers on the images (Novak et al. 2019), with a flatten
or a global-average-pooling readout (--readout).

It prints a table and writes JSON with accuracy, nll, seconds and the hyperparameters used (after learning, when
learned). nll is per test point: for "exact" the Gaussian NLL of the shifted one-hot targets (the paper's
regression view, summed over classes); for "svgp" the categorical NLL -log p(y | x) of the softmax likelihood.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from ..models import ExactNNGPClassifier, SVGPClassifier, load_dataset, train_svgp
from ..models.svgp import SCHEDULES
from .arguments import (
    add_architecture_arguments,
    add_data_arguments,
    add_network_arguments,
    add_progress_argument,
    network_kernel,
    positive_float,
    positive_int,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_data_arguments(parser)
    parser.add_argument("--model", choices=("exact", "svgp"), default="exact", help="exact GP (the paper) or SVGP")
    add_network_arguments(parser)
    add_architecture_arguments(parser)
    parser.add_argument("--activation", default="relu", help="activation name")
    parser.add_argument("--learn-hyperparameters", action="store_true",
                        help="exact: maximize the marginal likelihood over weight_var, bias_var and the noise "
                             "(the SVGP always learns them with its ELBO)")
    parser.add_argument("--iters", type=positive_int, default=60, help="marginal-likelihood steps (exact)")
    parser.add_argument("--inducing", type=positive_int, default=500, help="inducing points (svgp)")
    parser.add_argument("--epochs", type=positive_int, default=30, help="ELBO epochs (svgp)")
    parser.add_argument("--batch-size", type=positive_int, default=256, help="minibatch size (svgp)")
    parser.add_argument("--lr", type=positive_float, default=0.02, help="Adam learning rate (svgp)")
    parser.add_argument("--schedule", choices=SCHEDULES, default="constant",
                        help="Adam learning-rate schedule (svgp): constant, or cosine annealing to 0")
    parser.add_argument("--ngd-lr", type=positive_float, default=0.1,
                        help="natural-gradient step for the variational distributions (svgp)")
    parser.add_argument("--natural-gradients", action="store_true",
                        help="svgp: natural-gradient steps (--ngd-lr) for the variational distributions, Adam for "
                             "the rest (default: Adam for everything)")
    add_progress_argument(parser)
    parser.add_argument("--out", default=None, help="write the results as JSON here")


GRAPH_BYTES_LIMIT = 8 * 2 ** 30


def check_graph_memory(kernel, n: int) -> None:
    """Stop before learning the variances of an architecture kernel through an autograd graph that cannot fit: the
    exact classifier differentiates through the whole n x n matrix, and a CNN-GP's graph holds about a dozen copies
    of its n x n x P state per layer. Raises SystemExit with the numbers and what to do instead."""
    network = getattr(kernel, "network", None)
    if network is None:
        return
    estimate = n * n * network.entries_per_pair * 8 * 12 * len(network.layers)
    if estimate > GRAPH_BYTES_LIMIT:
        raise SystemExit(f"--learn-hyperparameters with this CNN-GP on {n} training points needs about "
                         f"{estimate / 2 ** 30:.0f} GB of autograd graph (n^2 x {network.entries_per_pair} state "
                         f"entries per pair x {len(network.layers)} layers); use a smaller --n-train, the flatten "
                         "readout, or --model svgp (minibatches)")


def run_classification(args) -> dict:
    """One run of the paper's classification experiment, as `python -m gpytorch_nngp.experiments` runs it.

    Args:
        args: the parsed command line of `gpytorch_nngp.experiments` (experiments/arguments.py: the dataset, the
            training size, the kernel and its depth and variances, the model, the seed, ...).

    Returns:
        A dict of the run's settings and results (accuracies, timings), as the command writes to its JSON file.
    """
    torch.manual_seed(args.seed)
    x, y, x_test, y_test = load_dataset(args.dataset, args.n_train, args.seed)
    # The data set's classes, not the training split's: a small split can miss some, and the models must still
    # have an output for every class the test set holds.
    num_classes = int(torch.cat((y, y_test)).max()) + 1
    missing = sorted(set(range(num_classes)) - set(y.tolist()))
    if missing:
        print(f"note: classes {missing} have no training point among the {len(y)}; their outputs are the prior's",
              file=sys.stderr)
    kernel = network_kernel(args, args.weight_var, args.bias_var, args.activation)
    start = time.perf_counter()
    extra = {}
    if args.model == "exact":
        model = ExactNNGPClassifier(kernel, num_classes=num_classes)
        if args.learn_hyperparameters:
            check_graph_memory(kernel, x.shape[0])
            losses = model.learn_hyperparameters(x, y, iters=args.iters, progress=not args.no_progress)
            extra["neg_log_marginal_likelihood"] = [losses[0], losses[-1]]
        model.fit(x, y)
        mean, variance = model.predict(x_test)
        predictions = mean.argmax(-1)
        nll = model.gaussian_nll(mean, variance, y_test)
        nll_kind = "gaussian (shifted one-hot targets)"
        extra["noise"] = float(model.noise_used)
    else:
        count = min(args.inducing, x.shape[0])
        inducing = x[torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(args.seed))[:count]].clone()
        model = SVGPClassifier(kernel, inducing, num_classes=num_classes,
                               natural_gradients=args.natural_gradients).double()
        history = train_svgp(model, x, y, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                             seed=args.seed, progress=not args.no_progress,
                             schedule=args.schedule, ngd_lr=args.ngd_lr)
        extra["neg_elbo"] = [history[0], history[-1]]
        probs = model.predict_proba(x_test)
        predictions = probs.argmax(-1)
        nll = -probs.gather(-1, y_test.unsqueeze(-1)).clamp_min(1e-12).log().mean().item()
        nll_kind = "categorical"
        extra["outputscale"] = model.covar_module.outputscale.item()
    seconds = time.perf_counter() - start
    results = {
        "dataset": args.dataset, "model": args.model, "kernel": args.kernel, "architecture": args.architecture,
        "readout": args.readout if args.architecture == "cnn" else None, "n_train": int(x.shape[0]),
        "n_test": int(x_test.shape[0]), "seed": args.seed,
        "accuracy": (predictions == y_test).double().mean().item(), "nll": nll, "nll_kind": nll_kind,
        "seconds": seconds,
        "hyperparameters": {"depth": args.depth, "activation": args.activation,
                            "weight_var": kernel.weight_var.item(), "bias_var": kernel.bias_var.item(),
                            "learned": bool(args.learn_hyperparameters or args.model == "svgp"), **extra},
    }
    return results


def print_table(results: dict) -> None:
    h = results["hyperparameters"]
    arch = results["architecture"] + (f"-{results['readout']}" if results.get("readout") else "")
    print(f"{'dataset':8s} {'model':6s} {'kernel':6s} {'network':12s} {'n_train':>7s} {'accuracy':>9s} {'nll':>9s} "
          f"{'seconds':>8s} {'depth':>5s} {'weight_var':>10s} {'bias_var':>9s}")
    print(f"{results['dataset']:8s} {results['model']:6s} {results['kernel']:6s} {arch:12s} {results['n_train']:7d} "
          f"{results['accuracy']:9.4f} {results['nll']:9.4f} {results['seconds']:8.1f} {h['depth']:5d} "
          f"{h['weight_var']:10.4f} {h['bias_var']:9.4f}")


def main(args) -> dict:
    results = run_classification(args)
    print_table(results)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)
    return results
