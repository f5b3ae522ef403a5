"""Command-line arguments shared by the experiment subcommands, so that each means the same everywhere."""
from __future__ import annotations

import argparse

import torch

from ..frontend import Elementwise
from ..kernels import NNGPKernel, NTKKernel
from ..models import DATASETS


def _int_at_least(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


# argparse types: counts (iterations, epochs, batch sizes, bins, widths, inducing points) are >= 1; --depth (hidden
# layers) is >= 0, 0 being a linear model.
positive_int = _int_at_least(1)
non_negative_int = _int_at_least(0)


def positive_float(text: str) -> float:
    """argparse type: a finite float > 0 (variances, learning rates)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be finite and > 0, got {value}")
    return value


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """--help keeps the module docstring's layout and shows every default."""


def add_data_arguments(parser: argparse.ArgumentParser, n_train: int = 1000) -> None:
    """--dataset, --n-train (train on that many, test on the rest), --seed (split and initialization)."""
    parser.add_argument("--dataset", choices=DATASETS, default="mnist5k", help="data set (ships with a package)")
    parser.add_argument("--n-train", type=positive_int, default=n_train, help="training points; the rest are held out")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split and of random initializations")


def add_network_arguments(parser: argparse.ArgumentParser, variances: bool = True, kernel: bool = True) -> None:
    """--depth (hidden layers), and --weight-var / --bias-var (variances, not standard deviations), --kernel."""
    parser.add_argument("--depth", type=non_negative_int, default=3, help="hidden layers")
    if variances:
        parser.add_argument("--weight-var", type=positive_float, default=2.0, help="weight variance sigma_w^2")
        parser.add_argument("--bias-var", type=positive_float, default=0.2, help="bias variance sigma_b^2")
    if kernel:
        parser.add_argument("--kernel", choices=("nngp", "ntk"), default="nngp", help="network kernel")


def add_architecture_arguments(parser: argparse.ArgumentParser) -> None:
    """--architecture (mlp, or cnn: --depth 3x3 "same" conv layers) and --readout (flatten or global average pool)."""
    parser.add_argument("--architecture", choices=("mlp", "cnn"), default="mlp",
                        help="fully connected network, or --depth 3x3 'same' convolutions on the images")
    parser.add_argument("--readout", choices=("flatten", "gap"), default="flatten",
                        help="cnn readout: flatten + dense (O(P) per pair), or global average pooling + dense "
                             "(O(P^2) per pair: fine on 8x8 digits, hours on 28x28 MNIST on a CPU)")


IMAGE_SHAPES = {"digits": (1, 8, 8), "mnist5k": (1, 28, 28), "fashion-mnist": (1, 28, 28)}


def cnn_module(depth: int, readout: str, side: int, activation="relu", channels: int = 32) -> torch.nn.Module:
    """The torch CNN of --architecture cnn, for 1-channel side x side images: `depth` 3x3 'same' conv layers, each
    followed by its own `activation` module (a name or callable for gpytorch_nngp.Elementwise; "relu" gives
    nn.ReLU), a readout (flatten, or global average pooling) and a 10-way dense output. The kernels ignore
    `channels` (infinite width); a finite network trained from this module uses it."""
    layers = []
    for i in range(depth):
        # A fresh activation module per layer: a network is also what its users write, and from_module follows
        # every call of a reused instance, but one instance per layer keeps the printed module honest too.
        act = torch.nn.ReLU() if isinstance(activation, str) and activation == "relu" else Elementwise(activation)
        layers += [torch.nn.Conv2d(1 if i == 0 else channels, channels, 3, padding=1), act]
    if readout == "flatten":
        layers += [torch.nn.Flatten(), torch.nn.Linear(channels * side * side, 10)]
    else:
        layers += [torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(channels, 10)]
    return torch.nn.Sequential(*layers)


def network_kernel(args, weight_var: float, bias_var: float, activation="relu"):
    """The float64 NNGP or NTK kernel (--kernel) that add_network_arguments (and add_architecture_arguments, when
    the parser has them) describe: --depth hidden layers of an MLP, or --depth conv layers of a CNN."""
    cls = NTKKernel if args.kernel == "ntk" else NNGPKernel
    if getattr(args, "architecture", "mlp") == "cnn":
        shape = IMAGE_SHAPES[args.dataset]
        module = cnn_module(args.depth, args.readout, shape[-1], activation)
        return cls.from_module(module, shape, weight_var=weight_var, bias_var=bias_var).double()
    return cls(args.depth, activation, weight_var=weight_var, bias_var=bias_var).double()


def add_progress_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
