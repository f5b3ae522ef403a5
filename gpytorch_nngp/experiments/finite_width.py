"""Finite-width networks trained by gradient descent, against the NNGP, as the width grows (the paper's Figure 1).

    python -m gpytorch_nngp.experiments finite-width [--widths 64 256 1024 --epochs 60] --out finite_width.png

Fully connected ReLU networks with `depth` hidden layers are initialized as the NNGP assumes: weights
N(0, weight_var / fan_in) and biases N(0, bias_var). They are trained with SGD and momentum on the mean squared
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

from ..dnn2gp import LinearizedNetwork
from ..kernels import NNGPKernel
from ..models import ExactNNGPClassifier, load_dataset, shifted_one_hot
from .arguments import add_data_arguments, add_network_arguments, add_progress_argument, positive_float, positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_data_arguments(parser)
    add_network_arguments(parser, kernel=False)
    add_progress_argument(parser)
    parser.add_argument("--widths", type=positive_int, nargs="+", default=[64, 256, 1024], help="hidden widths")
    parser.add_argument("--epochs", type=positive_int, default=60, help="SGD epochs per network")
    parser.add_argument("--lr", type=positive_float, default=1.0,
                        help="SGD step in units of the inverse tangent-kernel scale at initialization (the step "
                             "is lr / scale, so one value suits every width and input dimension; momentum 0.9 "
                             "is stable below about 1.9)")
    parser.add_argument("--batch-size", type=positive_int, default=100, help="SGD minibatch size")
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


def tangent_kernel_scale(net: torch.nn.Module, x: torch.Tensor, points: int = 100) -> float:
    """Largest eigenvalue of the empirical tangent kernel of the first output on up to `points` inputs x (n, d),
    divided by their number. On the loss mean_i ||f(x_i) - t_i||^2, gradient descent with momentum beta
    stays stable while step x 2 x this scale < 2 (1 + beta) (the linearized network of Lee et al. 2019 is a
    quadratic whose curvature is the tangent kernel), so a step of lr / scale with lr ~ 1 suits every width and
    input dimension.
    """
    jac = LinearizedNetwork(net, output=0).jacobian(x[:points])[:, 0]  # (points, P)
    gram = jac @ jac.T
    return torch.linalg.eigvalsh(gram)[-1].item() / gram.shape[0]


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
        # In the standard parametrization the tangent kernel grows with the width and the input dimension, so
        # the step is lr over its measured scale.
        step = args.lr / tangent_kernel_scale(net, x)
        optimizer = torch.optim.SGD(net.parameters(), lr=step, momentum=0.9)
        for _ in tqdm(range(args.epochs), desc=f"width {width}", leave=False, disable=args.no_progress):
            perm = torch.randperm(x.shape[0], generator=generator)
            for start in range(0, x.shape[0], args.batch_size):
                idx = perm[start:start + args.batch_size]
                optimizer.zero_grad()
                loss = ((net(x[idx]) - targets[idx]) ** 2).sum(-1).mean()
                loss.backward()
                optimizer.step()
        with torch.no_grad():
            out = net(x_test)
        if not torch.isfinite(out).all():
            print(f"width {width:6d}: training diverged (non-finite outputs); lower --lr (now {args.lr})")
            rows.append({"width": width, "diverged": True, "accuracy": float("nan"),
                         "agreement_with_nngp": float("nan"), "rms_to_nngp_mean": float("nan")})
            continue
        pred = out.argmax(-1)
        rows.append({"width": width, "diverged": False, "accuracy": (pred == y_test).double().mean().item(),
                     "agreement_with_nngp": (pred == nngp_pred).double().mean().item(),
                     "rms_to_nngp_mean": (out - nngp_mean).pow(2).mean().sqrt().item()})
        print(f"width {width:6d}: test accuracy {rows[-1]['accuracy']:.4f}, argmax agreement with the NNGP "
              f"{rows[-1]['agreement_with_nngp']:.4f}, RMS to the NNGP mean {rows[-1]['rms_to_nngp_mean']:.4f}")
    print(f"NNGP: test accuracy {nngp_accuracy:.4f}")
    fig, (ax, ax_rms) = plt.subplots(1, 2, figsize=(10, 4))
    widths = [r["width"] for r in rows]
    ax.plot(widths, [r["accuracy"] for r in rows], "o-", label="trained network: test accuracy")
    ax.plot(widths, [r["agreement_with_nngp"] for r in rows], "s--", label="argmax agreement with the NNGP")
    ax.axhline(nngp_accuracy, color="k", lw=1, label=f"NNGP test accuracy {nngp_accuracy:.3f}")
    ax.set_ylabel("fraction of test points")
    ax_rms.plot(widths, [r["rms_to_nngp_mean"] for r in rows], "o-", color="C2")
    ax_rms.set_ylabel("RMS of network outputs - NNGP posterior mean")
    for axis in (ax, ax_rms):
        axis.set_xscale("log", base=2)
        axis.set_xticks(widths, [str(w) for w in widths])
        axis.minorticks_off()
        axis.set_xlabel("hidden width")
    ax.legend(fontsize=8)
    fig.suptitle(f"{args.dataset}:{args.n_train}, depth {args.depth}, SGD {args.epochs} epochs: wider networks "
                 "approach the NNGP")
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    plt.close(fig)
    return {"nngp_accuracy": nngp_accuracy, "networks": rows}
