"""Command-line arguments shared by the experiment subcommands, so that each means the same everywhere."""
from __future__ import annotations

import argparse

from .. import NNGPKernel, NTKKernel
from ..models import DATASETS


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """--help keeps the module docstring's layout and shows every default."""


def add_data_arguments(parser: argparse.ArgumentParser, n_train: int = 1000) -> None:
    """--dataset, --n-train (train on that many, test on the rest), --seed (split and initialization)."""
    parser.add_argument("--dataset", choices=DATASETS, default="mnist5k", help="data set (ships with a package)")
    parser.add_argument("--n-train", type=int, default=n_train, help="training points; the rest are held out")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split and of random initializations")


def add_network_arguments(parser: argparse.ArgumentParser, variances: bool = True, kernel: bool = True) -> None:
    """--depth (hidden layers), and --weight-var / --bias-var (variances, not standard deviations), --kernel."""
    parser.add_argument("--depth", type=int, default=3, help="hidden layers")
    if variances:
        parser.add_argument("--weight-var", type=float, default=2.0, help="weight variance sigma_w^2")
        parser.add_argument("--bias-var", type=float, default=0.2, help="bias variance sigma_b^2")
    if kernel:
        parser.add_argument("--kernel", choices=("nngp", "ntk"), default="nngp", help="network kernel")


def network_kernel(args, weight_var: float, bias_var: float, activation="relu"):
    """The float64 NNGPKernel or NTKKernel (--kernel) of --depth hidden layers that add_network_arguments describes."""
    cls = NTKKernel if args.kernel == "ntk" else NNGPKernel
    return cls(args.depth, activation, weight_var=weight_var, bias_var=bias_var).double()


def add_progress_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
