"""Finite-width networks trained by gradient descent, against the NNGP, as the width grows (the paper's Figure 1).

    python -m gpytorch_nngp.experiments finite-width [--widths 64 256 1024 --epochs 60] --out finite_width.png

Fully connected ReLU networks with `depth` hidden layers are initialized as the NNGP assumes: weights
N(0, weight_var / fan_in) and biases N(0, bias_var). They are trained with SGD and momentum (step proportional to 1 / (d + depth x width)) on the mean squared
error to the shifted one-hot targets, the paper's regression view. For each width the command reports test
accuracy, the agreement of the network's argmax with the NNGP's, and the RMS difference between the network's
outputs and the NNGP posterior mean. The figure plots accuracy and agreement against width, with the NNGP as a
line. It is sized to run on a CPU in minutes (mnist5k:1000 by default).
"""
from __future__ import annotations

import argparse
import math

import torch
from tqdm.auto import tqdm

from .. import NNGPKernel
from ..models import DATASETS, ExactNNGPClassifier, load_dataset, shifted_one_hot


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", choices=DATASETS, default="mnist5k")
    parser.add_argument("--n-train", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--weight-var", type=float, default=2.0)
    parser.add_argument("--bias-var", type=float, default=0.2)
    parser.add_argument("--widths", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--lr", type=float, default=0.012,
                        help="SGD step, scaled by 1000 / (d + depth x width) for each width")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--out", required=True, help="PNG path")


def make_network(d_in, width, depth, num_classes, weight_var, bias_var, generator):
    """An MLP initialized from the NNGP prior (standard parametrization, weights N(0, weight_var / fan_in))."""
    layers = []
    fan_in = d_in
    for _ in range(depth):
        layers += [torch.nn.Linear(fan_in, width), torch.nn.ReLU()]
        fan_in = width
    layers.append(torch.nn.Linear(fan_in, num_classes))
    net = torch.nn.Sequential(*layers).double()
    with torch.no_grad():
        for layer in net:
            if isinstance(layer, torch.nn.Linear):
                layer.weight.normal_(0.0, math.sqrt(weight_var / layer.in_features), generator=generator)
                layer.bias.normal_(0.0, math.sqrt(bias_var), generator=generator)
    return net


def run(args) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x, y, x_test, y_test = load_dataset(args.dataset, args.n_train, args.seed)
    targets = shifted_one_hot(y, 10, x.dtype)
    nngp = ExactNNGPClassifier(NNGPKernel(args.depth, "relu", weight_var=args.weight_var,
                                          bias_var=args.bias_var).double()).fit(x, y)
    nngp_mean, _ = nngp.predict(x_test)
    nngp_pred = nngp_mean.argmax(-1)
    nngp_accuracy = (nngp_pred == y_test).double().mean().item()
    rows = []
    for width in args.widths:
        generator = torch.Generator().manual_seed(args.seed)
        net = make_network(x.shape[1], width, args.depth, 10, args.weight_var, args.bias_var, generator)
        # Standard parametrization: the tangent kernel is a sum over layers of their fan-ins, so the stable step
        # shrinks like 1 / (d + depth x width). lr is the step when that sum is 1000.
        step = args.lr * 1000 / (x.shape[1] + args.depth * width)
        optimizer = torch.optim.SGD(net.parameters(), lr=step, momentum=0.9)
        for _ in tqdm(range(args.epochs), desc=f"width {width}", leave=False):
            perm = torch.randperm(x.shape[0], generator=generator)
            for start in range(0, x.shape[0], args.batch_size):
                idx = perm[start:start + args.batch_size]
                optimizer.zero_grad()
                loss = ((net(x[idx]) - targets[idx]) ** 2).sum(-1).mean()
                loss.backward()
                optimizer.step()
        with torch.no_grad():
            out = net(x_test)
        pred = out.argmax(-1)
        rows.append({"width": width, "accuracy": (pred == y_test).double().mean().item(),
                     "agreement_with_nngp": (pred == nngp_pred).double().mean().item(),
                     "rms_to_nngp_mean": (out - nngp_mean).pow(2).mean().sqrt().item()})
        print(f"width {width:6d}: test accuracy {rows[-1]['accuracy']:.4f}, argmax agreement with the NNGP "
              f"{rows[-1]['agreement_with_nngp']:.4f}, RMS to the NNGP mean {rows[-1]['rms_to_nngp_mean']:.4f}")
    print(f"NNGP: test accuracy {nngp_accuracy:.4f}")
    fig, ax = plt.subplots(figsize=(5.2, 4))
    widths = [r["width"] for r in rows]
    ax.semilogx(widths, [r["accuracy"] for r in rows], "o-", label="trained network: test accuracy")
    ax.semilogx(widths, [r["agreement_with_nngp"] for r in rows], "s--", label="argmax agreement with NNGP")
    ax.axhline(nngp_accuracy, color="k", lw=1, label=f"NNGP test accuracy {nngp_accuracy:.3f}")
    ax.set_xlabel("hidden width")
    ax.set_title(f"{args.dataset}:{args.n_train}, depth {args.depth}, SGD {args.epochs} epochs")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    plt.close(fig)
    return {"nngp_accuracy": nngp_accuracy, "networks": rows}
